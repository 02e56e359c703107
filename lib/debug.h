/* debug.c: CODE_CACHE_DEBUG=1 explanations on stderr. */
#ifndef CODE_CACHE_DEBUG_H
#define CODE_CACHE_DEBUG_H

#include <stdbool.h>

bool debug_enabled(void);
/* One line on stderr when CODE_CACHE_DEBUG is set. errno is the same after the call as before:
 * debug lines are written between a failing call and the return that reports it. */
void debug_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
