/*
 * System call failure injection (see fault.h). The real calls are made with syscall(2), so that
 * nothing here depends on finding libc's own definitions behind ours. (fcntl reads its optional
 * argument as a long whatever the command, as glibc's own fcntl does; the kernel ignores it for
 * commands that take none.)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fault.h"
#include "helpers.h"

static struct {
    enum fault_call call;
    int arg;
    unsigned nth;
    int err;
    bool armed;
} rule;

static unsigned calls[FAULT_KINDS], matching, failures;

void fault_inject(enum fault_call call, int arg, unsigned nth, int err)
{
    fault_clear();
    rule.call = call;
    rule.arg = arg;
    rule.nth = nth;
    rule.err = err;
    rule.armed = true;
}

void fault_clear(void)
{
    __atomic_store_n(&rule.armed, false, __ATOMIC_SEQ_CST);
    memset(calls, 0, sizeof calls);
    matching = 0;
    failures = 0;
}

unsigned fault_calls(enum fault_call call)
{
    return __atomic_load_n(&calls[call], __ATOMIC_SEQ_CST);
}

unsigned fault_failures(void)
{
    return __atomic_load_n(&failures, __ATOMIC_SEQ_CST);
}

const char *fault_name(enum fault_call call)
{
    static const char *const names[FAULT_KINDS] = {
        [FAULT_MMAP] = "mmap",
        [FAULT_MUNMAP] = "munmap",
        [FAULT_MPROTECT] = "mprotect",
        [FAULT_MADVISE] = "madvise",
        [FAULT_MEMFD_CREATE] = "memfd_create",
        [FAULT_OPEN] = "open",
        [FAULT_FTRUNCATE] = "ftruncate",
        [FAULT_FCNTL] = "fcntl",
        [FAULT_FALLOCATE] = "fallocate",
    };
    return call < FAULT_KINDS ? names[call] : "?";
}

/* Flags match when the call asks for every bit of the rule's; other arguments match exactly. */
static bool fault_matches(enum fault_call call, int arg)
{
    if (rule.arg == FAULT_ANY)
        return true;
    if (call == FAULT_MEMFD_CREATE || call == FAULT_OPEN)
        return (arg & rule.arg) == rule.arg;
    return arg == rule.arg;
}

/* Counts a call from the library and decides whether it fails; sets errno when it does. */
static bool fault_hit(enum fault_call call, int arg, const void *ret)
{
    if (!test_called_from_library(ret))
        return false;
    __atomic_fetch_add(&calls[call], 1, __ATOMIC_SEQ_CST);
    if (!__atomic_load_n(&rule.armed, __ATOMIC_SEQ_CST) || rule.call != call ||
        !fault_matches(call, arg))
        return false;
    unsigned n = __atomic_add_fetch(&matching, 1, __ATOMIC_SEQ_CST);
    if (rule.nth != 0 && n != rule.nth)
        return false;
    __atomic_fetch_add(&failures, 1, __ATOMIC_SEQ_CST);
    errno = rule.err;
    return true;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (fault_hit(FAULT_MMAP, prot, __builtin_return_address(0)))
        return MAP_FAILED;
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

int munmap(void *addr, size_t len)
{
    if (fault_hit(FAULT_MUNMAP, 0, __builtin_return_address(0)))
        return -1;
    return (int)syscall(SYS_munmap, addr, len);
}

int mprotect(void *addr, size_t len, int prot)
{
    if (fault_hit(FAULT_MPROTECT, prot, __builtin_return_address(0)))
        return -1;
    return (int)syscall(SYS_mprotect, addr, len, prot);
}

int madvise(void *addr, size_t len, int advice)
{
    if (fault_hit(FAULT_MADVISE, advice, __builtin_return_address(0)))
        return -1;
    return (int)syscall(SYS_madvise, addr, len, advice);
}

int memfd_create(const char *name, unsigned flags)
{
    if (fault_hit(FAULT_MEMFD_CREATE, (int)flags, __builtin_return_address(0)))
        return -1;
    return (int)syscall(SYS_memfd_create, name, flags);
}

static int fault_open(const void *ret, const char *path, int flags, va_list ap)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE))
        mode = va_arg(ap, mode_t);
    if (fault_hit(FAULT_OPEN, flags, ret))
        return -1;
    return (int)syscall(SYS_openat, AT_FDCWD, path, flags, mode);
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    int fd = fault_open(__builtin_return_address(0), path, flags, ap);
    va_end(ap);
    return fd;
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    int fd = fault_open(__builtin_return_address(0), path, flags, ap);
    va_end(ap);
    return fd;
}

int ftruncate(int fd, off_t len)
{
    if (fault_hit(FAULT_FTRUNCATE, 0, __builtin_return_address(0)))
        return -1;
    return (int)syscall(SYS_ftruncate, fd, len);
}

int fcntl(int fd, int cmd, ...)
{
    /* Every command takes one argument at most, an int or a pointer: read it as a long. */
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    if (fault_hit(FAULT_FCNTL, cmd, __builtin_return_address(0)))
        return -1;
    return (int)syscall(SYS_fcntl, fd, cmd, arg);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
    if (fault_hit(FAULT_FALLOCATE, mode, __builtin_return_address(0)))
        return -1;
    return (int)syscall(SYS_fallocate, fd, mode, off, len);
}
