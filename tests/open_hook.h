/*
 * One interposer of open(2) for the test programs that serve, refuse or fail the files the library
 * opens (tests/fault.c, tests/maps_edges.c, tests/place_no_proc.c). It defines open and open64
 * (test programs are linked with -rdynamic, so the library's calls bind to them), takes the mode
 * out of the variable arguments, and hands every call to the program's open_hook.
 */
#ifndef CODE_CACHE_TEST_OPEN_HOOK_H
#define CODE_CACHE_TEST_OPEN_HOOK_H

#include <sys/types.h>

/* Defined by the program: what open(path, flags, mode) called from caller (a return address)
 * returns. The real call is open_hook_syscall. */
int open_hook(const void *caller, const char *path, int flags, mode_t mode);

/* open(2) itself, past every interposer. */
int open_hook_syscall(const char *path, int flags, mode_t mode);

#endif
