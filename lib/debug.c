/*
 * CODE_CACHE_DEBUG=1: the library explains its decisions (where it looked, what it found, why it
 * gave up) on standard error. Read once; a debug line costs nothing when it is off.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "debug.h"

static bool debug_on;
static pthread_once_t debug_once = PTHREAD_ONCE_INIT;

static void debug_init(void)
{
    const char *v = getenv("CODE_CACHE_DEBUG");
    debug_on = v != NULL && *v != '\0' && strcmp(v, "0") != 0;
}

bool debug_enabled(void)
{
    pthread_once(&debug_once, debug_init);
    return debug_on;
}

void debug_log(const char *fmt, ...)
{
    /* Debug lines sit between a failing call and the return that reports its errno, and
     * fprintf may change errno (EBADF with stderr closed, as in a daemon): keep it. */
    int saved = errno;
    if (!debug_enabled()) {
        errno = saved;
        return;
    }
    /* One fprintf per line so that lines of concurrent threads do not interleave. */
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "codecache: %s\n", line);
    errno = saved;
}
