/*
 * The counters of count.h: interposed calls, perf tracepoint counters, context switches, memory.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "count.h"

static __thread struct bench_calls calls;
static __thread bool skip_mprotect;
static __thread uint64_t skipped_mprotect;

/* ---- The interposed calls: count, then make the system call directly ---- */

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int munmap(void *addr, size_t len);
int mprotect(void *addr, size_t len, int prot);
int madvise(void *addr, size_t len, int advice);
int fallocate(int fd, int mode, off_t off, off_t len);
int fallocate64(int fd, int mode, off_t off, off_t len);
int ftruncate(int fd, off_t len);
int ftruncate64(int fd, off_t len);
int memfd_create(const char *name, unsigned flags);

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    calls.mmap++;
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
    __attribute__((alias("mmap")));

int munmap(void *addr, size_t len)
{
    calls.munmap++;
    return (int)syscall(SYS_munmap, addr, len);
}

int mprotect(void *addr, size_t len, int prot)
{
    calls.mprotect++;
    if (skip_mprotect) {
        skipped_mprotect++;
        return 0;
    }
    return (int)syscall(SYS_mprotect, addr, len, prot);
}

int madvise(void *addr, size_t len, int advice)
{
    calls.madvise++;
    return (int)syscall(SYS_madvise, addr, len, advice);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
    calls.fallocate++;
    return (int)syscall(SYS_fallocate, fd, mode, off, len);
}
int fallocate64(int fd, int mode, off_t off, off_t len) __attribute__((alias("fallocate")));

int ftruncate(int fd, off_t len)
{
    calls.ftruncate++;
    return (int)syscall(SYS_ftruncate, fd, len);
}
int ftruncate64(int fd, off_t len) __attribute__((alias("ftruncate")));

int memfd_create(const char *name, unsigned flags)
{
    calls.memfd++;
    return (int)syscall(SYS_memfd_create, name, flags);
}

/* ---- Locks: the real functions, found once ---- */

typedef int (*mutex_lock_fn)(pthread_mutex_t *);
typedef int (*cond_wait_fn)(pthread_cond_t *, pthread_mutex_t *);
static mutex_lock_fn real_mutex_lock;
static cond_wait_fn real_cond_wait;

static void resolve_locks(void)
{
    void *lock = dlsym(RTLD_NEXT, "pthread_mutex_lock");
    /* pthread_cond_wait has two versions in glibc; plain dlsym may return the old one. */
    void *wait = dlvsym(RTLD_NEXT, "pthread_cond_wait", "GLIBC_2.3.2");
    if (wait == NULL)
        wait = dlsym(RTLD_NEXT, "pthread_cond_wait");
    if (lock == NULL || wait == NULL) {
        fprintf(stderr, "bench: cannot find the real pthread_mutex_lock/pthread_cond_wait\n");
        abort();
    }
    __atomic_store_n(&real_mutex_lock, (mutex_lock_fn)lock, __ATOMIC_RELEASE);
    __atomic_store_n(&real_cond_wait, (cond_wait_fn)wait, __ATOMIC_RELEASE);
}

__attribute__((constructor)) static void count_init(void)
{
    resolve_locks();
}

int pthread_mutex_lock(pthread_mutex_t *m);
int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m);

/* A trylock first: it costs what the uncontended lock costs (one compare-and-swap), and tells
 * whether this acquisition found the mutex taken, i.e. may have waited. */
int pthread_mutex_lock(pthread_mutex_t *m)
{
    mutex_lock_fn real = __atomic_load_n(&real_mutex_lock, __ATOMIC_ACQUIRE);
    if (real == NULL) {
        resolve_locks();
        real = real_mutex_lock;
    }
    calls.locks++;
    int rc = pthread_mutex_trylock(m);
    if (rc != EBUSY)
        return rc;
    calls.contended++;
    return real(m);
}

int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
{
    cond_wait_fn real = __atomic_load_n(&real_cond_wait, __ATOMIC_ACQUIRE);
    if (real == NULL) {
        resolve_locks();
        real = real_cond_wait;
    }
    calls.cond_waits++;
    return real(c, m);
}

/* ---- Reading the per-thread counts ---- */

void bench_calls_get(struct bench_calls *out)
{
    *out = calls;
}

struct bench_calls bench_calls_diff(const struct bench_calls *a, const struct bench_calls *b)
{
    return (struct bench_calls){
        .mmap = a->mmap - b->mmap,
        .munmap = a->munmap - b->munmap,
        .mprotect = a->mprotect - b->mprotect,
        .madvise = a->madvise - b->madvise,
        .fallocate = a->fallocate - b->fallocate,
        .ftruncate = a->ftruncate - b->ftruncate,
        .memfd = a->memfd - b->memfd,
        .locks = a->locks - b->locks,
        .contended = a->contended - b->contended,
        .cond_waits = a->cond_waits - b->cond_waits,
    };
}

uint64_t bench_calls_syscalls(const struct bench_calls *c)
{
    return c->mmap + c->munmap + c->mprotect + c->madvise + c->fallocate + c->ftruncate + c->memfd;
}

void bench_skip_mprotect(bool on)
{
    skip_mprotect = on;
}

uint64_t bench_skipped_mprotect(void)
{
    return skipped_mprotect;
}

/* ---- perf tracepoint counters ---- */

static long tp_id(const char *event)
{
    static const char *const roots[] = {"/sys/kernel/tracing", "/sys/kernel/debug/tracing"};
    for (size_t i = 0; i < 2; i++) {
        char path[256];
        snprintf(path, sizeof path, "%s/events/syscalls/%s/id", roots[i], event);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        long id = -1;
        if (fscanf(f, "%ld", &id) != 1)
            id = -1;
        fclose(f);
        if (id >= 0)
            return id;
    }
    return -1;
}

static int tp_counter(const char *event, const char *filter, const char **why)
{
    long id = tp_id(event);
    if (id < 0) {
        *why = "no syscalls tracepoints (tracefs not mounted?)";
        return -1;
    }
    struct perf_event_attr a;
    memset(&a, 0, sizeof a);
    a.type = PERF_TYPE_TRACEPOINT;
    a.size = sizeof a;
    a.config = (uint64_t)id;
    int fd = (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, PERF_FLAG_FD_CLOEXEC);
    if (fd < 0) {
        *why = "perf_event_open refused (kernel.perf_event_paranoid, or not root)";
        return -1;
    }
    if (filter != NULL && ioctl(fd, PERF_EVENT_IOC_SET_FILTER, filter) != 0) {
        *why = "the tracepoint filter was refused";
        close(fd);
        return -1;
    }
    return fd;
}

void bench_tp_open(struct bench_tp *tp)
{
    static const char *const as[7] = {
        "sys_enter_mmap",      "sys_enter_munmap",    "sys_enter_mprotect",     "sys_enter_madvise",
        "sys_enter_fallocate", "sys_enter_ftruncate", "sys_enter_memfd_create",
    };
    memset(tp, -1, sizeof *tp);
    tp->unavailable = NULL;
    const char *why = NULL;
    tp->futex = tp_counter("sys_enter_futex", NULL, &why);
    /* FUTEX_WAIT (0) and FUTEX_WAIT_BITSET (9), with or without FUTEX_PRIVATE_FLAG (128). */
    if (tp->futex >= 0)
        tp->futex_wait =
            tp_counter("sys_enter_futex", "op == 0 || op == 128 || op == 9 || op == 137", &why);
    for (size_t i = 0; tp->futex_wait >= 0 && i < 7; i++)
        tp->as[i] = tp_counter(as[i], NULL, &why);
    if (tp->futex < 0 || tp->futex_wait < 0 || tp->as[6] < 0) {
        bench_tp_close(tp);
        tp->unavailable = why;
    }
}

static uint64_t tp_value(int fd)
{
    uint64_t v = 0;
    if (fd < 0 || read(fd, &v, sizeof v) != (ssize_t)sizeof v)
        return 0;
    return v;
}

struct bench_tp_counts bench_tp_read(const struct bench_tp *tp)
{
    struct bench_tp_counts c = {0};
    if (tp->futex < 0)
        return c;
    c.valid = true;
    c.futex = tp_value(tp->futex);
    c.futex_wait = tp_value(tp->futex_wait);
    for (size_t i = 0; i < 7; i++)
        c.syscalls += tp_value(tp->as[i]);
    return c;
}

struct bench_tp_counts bench_tp_diff(const struct bench_tp_counts *a,
                                     const struct bench_tp_counts *b)
{
    return (struct bench_tp_counts){
        .futex = a->futex - b->futex,
        .futex_wait = a->futex_wait - b->futex_wait,
        .syscalls = a->syscalls - b->syscalls,
        .valid = a->valid && b->valid,
    };
}

void bench_tp_close(struct bench_tp *tp)
{
    if (tp->futex >= 0)
        close(tp->futex);
    if (tp->futex_wait >= 0)
        close(tp->futex_wait);
    for (size_t i = 0; i < 7; i++)
        if (tp->as[i] >= 0)
            close(tp->as[i]);
    tp->futex = tp->futex_wait = -1;
    for (size_t i = 0; i < 7; i++)
        tp->as[i] = -1;
}

/* ---- Threads and memory ---- */

uint64_t bench_voluntary_switches(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) != 0)
        return 0;
    return (uint64_t)ru.ru_nvcsw;
}

struct bench_mem bench_mem_read(void)
{
    struct bench_mem m = {0};
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (f == NULL)
        return m;
    char line[256];
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned long long kb;
        if (sscanf(line, "Rss: %llu kB", &kb) == 1)
            m.rss = kb << 10;
        else if (sscanf(line, "Pss: %llu kB", &kb) == 1)
            m.pss = kb << 10;
    }
    fclose(f);
    return m;
}

uint64_t bench_memfd_bytes(const char *prefix)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return 0;
    uint64_t bytes = 0;
    size_t plen = strlen(prefix);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char path[300], target[256];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n < 0)
            continue;
        target[n] = '\0';
        struct stat st;
        if (strncmp(target, prefix, plen) == 0 && stat(path, &st) == 0)
            bytes += (uint64_t)st.st_blocks * 512;
    }
    closedir(d);
    return bytes;
}
