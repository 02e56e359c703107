/*
 * System call failure injection (see fault.h). The real calls are made with syscall(2), so that
 * nothing here depends on finding libc's own definitions behind ours. (fcntl reads its optional
 * argument as a long whatever the command, as glibc's own fcntl does; the kernel ignores it for
 * commands that take none.)
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
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
#include "open_hook.h"
#include "helpers.h"

/* The failures asked for; a call is judged by the first rule of its kind whose argument
 * matches, and counted by that rule alone. */
enum { RULES = 4 };
static struct rule {
    enum fault_call call;
    int arg;
    unsigned nth;
    int err;
    unsigned matching;
} rules[RULES];
static unsigned nrules;

static unsigned calls[FAULT_KINDS], failures, wx_requests;

/* Every call from the library since the last clear, for fault_calls_with. */
enum { LOG = 4096 };
static struct {
    enum fault_call call;
    int arg;
} call_log[LOG];
static unsigned nlog;

/* What the library mapped where it chose (not MAP_FIXED), since the last clear. */
enum { RANGES = 256 };
static struct {
    uintptr_t addr;
    size_t len;
} ranges[RANGES];
static unsigned nranges;

void fault_inject(enum fault_call call, int arg, unsigned nth, int err)
{
    fault_clear();
    fault_also(call, arg, nth, err);
}

void fault_also(enum fault_call call, int arg, unsigned nth, int err)
{
    cr_assert_lt(nrules, RULES, "more than %d fault rules at once", RULES);
    rules[nrules] = (struct rule){.call = call, .arg = arg, .nth = nth, .err = err};
    __atomic_store_n(&nrules, nrules + 1, __ATOMIC_SEQ_CST);
}

void fault_clear(void)
{
    __atomic_store_n(&nrules, 0, __ATOMIC_SEQ_CST);
    memset(calls, 0, sizeof calls);
    failures = 0;
    __atomic_store_n(&nranges, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&nlog, 0, __ATOMIC_SEQ_CST);
}

unsigned fault_wx_requests(void)
{
    return __atomic_load_n(&wx_requests, __ATOMIC_SEQ_CST);
}

void fault_expect_nothing_left_mapped(const char *what)
{
    unsigned n = __atomic_load_n(&nranges, __ATOMIC_SEQ_CST);
    cr_assert_leq(n, RANGES, "%s: more than %d mappings made: raise RANGES", what, RANGES);
    for (unsigned i = 0; i < n; i++)
        cr_assert_eq(mapped_bytes((const void *)ranges[i].addr, ranges[i].len), 0,
                     "%s: the library's mapping [%#lx, %#lx) is still there", what,
                     (unsigned long)ranges[i].addr,
                     (unsigned long)(ranges[i].addr + ranges[i].len));
}

/* MAP_FIXED maps over one of the library's own reservations; anything else (a hint, or
 * MAP_FIXED_NOREPLACE) is a new mapping. */
static void fault_note_mapping(int flags, void *p, size_t len)
{
    if (p == MAP_FAILED || (flags & MAP_FIXED))
        return;
    unsigned i = __atomic_fetch_add(&nranges, 1, __ATOMIC_SEQ_CST);
    if (i < RANGES) {
        ranges[i].addr = (uintptr_t)p;
        ranges[i].len = len;
    }
}

static void fault_note_prot(int prot)
{
    if ((prot & PROT_WRITE) && (prot & PROT_EXEC))
        __atomic_fetch_add(&wx_requests, 1, __ATOMIC_SEQ_CST);
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

/* Flags match when the call asks for every bit of the wanted ones; other arguments match
 * exactly. */
static bool arg_matches(enum fault_call call, int want, int arg)
{
    if (want == FAULT_ANY)
        return true;
    if (call == FAULT_MEMFD_CREATE || call == FAULT_OPEN)
        return (arg & want) == want;
    return arg == want;
}

static bool fault_matches(const struct rule *r, enum fault_call call, int arg)
{
    return r->call == call && arg_matches(call, r->arg, arg);
}

unsigned fault_calls_with(enum fault_call call, int arg)
{
    unsigned n = __atomic_load_n(&nlog, __ATOMIC_SEQ_CST), count = 0;
    cr_assert_leq(n, LOG, "more than %d calls logged: raise LOG", LOG);
    for (unsigned i = 0; i < n; i++)
        count += call_log[i].call == call && arg_matches(call, arg, call_log[i].arg);
    return count;
}

/* Counts a call from the library and decides whether it fails; sets errno when it does. */
static bool fault_hit(enum fault_call call, int arg, const void *ret)
{
    if (!test_called_from_library(ret))
        return false;
    __atomic_fetch_add(&calls[call], 1, __ATOMIC_SEQ_CST);
    unsigned logged = __atomic_fetch_add(&nlog, 1, __ATOMIC_SEQ_CST);
    if (logged < LOG) {
        call_log[logged].call = call;
        call_log[logged].arg = arg;
    }
    unsigned n = __atomic_load_n(&nrules, __ATOMIC_SEQ_CST);
    for (unsigned i = 0; i < n; i++) {
        struct rule *r = &rules[i];
        if (!fault_matches(r, call, arg))
            continue;
        unsigned k = __atomic_add_fetch(&r->matching, 1, __ATOMIC_SEQ_CST);
        if (r->nth != 0 && k != r->nth)
            return false;
        __atomic_fetch_add(&failures, 1, __ATOMIC_SEQ_CST);
        errno = r->err;
        return true;
    }
    return false;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    const void *ret = __builtin_return_address(0);
    if (fault_hit(FAULT_MMAP, prot, ret))
        return MAP_FAILED;
    void *p = (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
    if (test_called_from_library(ret)) {
        fault_note_prot(prot);
        fault_note_mapping(flags, p, len);
    }
    return p;
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
    if (test_called_from_library(__builtin_return_address(0)))
        fault_note_prot(prot);
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

int open_hook(const void *caller, const char *path, int flags, mode_t mode)
{
    if (fault_hit(FAULT_OPEN, flags, caller))
        return -1;
    return open_hook_syscall(path, flags, mode);
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
