/*
 * System call failure injection (see fault.h). The real calls are made with syscall(2), so that
 * nothing here depends on finding libc's own definitions behind ours.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
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

/* Counts a call from the library and decides whether it fails; sets errno when it does. */
static bool fault_hit(enum fault_call call, int arg, const void *ret)
{
    if (!test_called_from_library(ret))
        return false;
    __atomic_fetch_add(&calls[call], 1, __ATOMIC_SEQ_CST);
    if (!__atomic_load_n(&rule.armed, __ATOMIC_SEQ_CST) || rule.call != call ||
        (rule.arg != FAULT_ANY && rule.arg != arg))
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
