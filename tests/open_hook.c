/* The open(2) interposer shared by the test programs (open_hook.h). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "open_hook.h"

int open_hook_syscall(const char *path, int flags, mode_t mode)
{
    return (int)syscall(SYS_openat, AT_FDCWD, path, flags, mode);
}

/* The mode is there only when the flags ask to create a file. O_TMPFILE holds O_DIRECTORY's bit:
 * all of its bits must be set. */
static mode_t open_hook_mode(int flags, va_list ap)
{
    bool creates = (flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE;
    return creates ? va_arg(ap, mode_t) : 0;
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_hook_mode(flags, ap);
    va_end(ap);
    return open_hook(__builtin_return_address(0), path, flags, mode);
}

/* The same function under the name of the large-file interface. */
int open64(const char *path, int flags, ...) __attribute__((alias("open")));
