/*
 * Counting what a benchmark loop costs besides time, the same way for the library and for the
 * baselines it is compared with:
 *
 *   - calls that change the address space or a memory file (mmap, munmap, mprotect, madvise,
 *     fallocate, ftruncate, memfd_create), counted per thread by interposing them in the program
 *     (it is linked with -rdynamic, so the library's and asmjit's calls come here too); each
 *     interposer makes the system call itself with syscall(2);
 *   - pthread mutex acquisitions, and those that found the mutex taken, and condition waits,
 *     counted per thread by interposing pthread_mutex_lock and pthread_cond_wait;
 *   - system calls as the kernel counts them: perf counters on the syscalls:sys_enter_*
 *     tracepoints of one thread (perf_event_open; no LD_PRELOAD and no ptrace, so threads are
 *     not slowed the way strace slows them, which would change how often they meet at a lock).
 *     futex calls are counted twice: all of them, and the waits alone (FUTEX_WAIT and
 *     FUTEX_WAIT_BITSET, private or not), with a tracepoint filter. A tracepoint makes every
 *     system call of the thread take the kernel's slow path: counting runs are not timed;
 *   - voluntary context switches of a thread (getrusage RUSAGE_THREAD): how often it blocked;
 *   - memory: Rss and Pss of the process (/proc/self/smaps_rollup), and the blocks of the
 *     process's memory files (/proc/self/fd + fstat).
 */
#ifndef BENCH_COUNT_H
#define BENCH_COUNT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Per-thread counts of the interposed calls, since the thread started. */
struct bench_calls {
    uint64_t mmap, munmap, mprotect, madvise, fallocate, ftruncate, memfd;
    uint64_t locks, contended, cond_waits;
};

/* The calling thread's counts. */
void bench_calls_get(struct bench_calls *out);
/* after - before, field by field. */
struct bench_calls bench_calls_diff(const struct bench_calls *after,
                                    const struct bench_calls *before);
/* The address-space calls of c, added up (locks not included). */
uint64_t bench_calls_syscalls(const struct bench_calls *c);

/* While on (for the calling thread), the interposed mprotect returns 0 without a system call;
 * skipped calls are counted in bench_calls.mprotect all the same. Returns how many it skipped
 * since the thread started. */
void bench_skip_mprotect(bool on);
uint64_t bench_skipped_mprotect(void);

/* Kernel-side counts of the calling thread alone, from the moment of bench_tp_open: open, read
 * and close them in the thread whose loop they count (the barrier a benchmark thread waits at,
 * and the join that waits for it, are then not counted). */
struct bench_tp {
    int futex, futex_wait;   /* -1 when perf_event_open failed */
    int as[7];               /* mmap, munmap, mprotect, madvise, fallocate, ftruncate, memfd */
    const char *unavailable; /* why, when futex is -1 */
};

struct bench_tp_counts {
    uint64_t futex, futex_wait, syscalls; /* syscalls: the seven of bench_tp.as, added up */
    bool valid;
};

void bench_tp_open(struct bench_tp *tp);
struct bench_tp_counts bench_tp_read(const struct bench_tp *tp);
/* after - before; valid only when both are. */
struct bench_tp_counts bench_tp_diff(const struct bench_tp_counts *after,
                                     const struct bench_tp_counts *before);
void bench_tp_close(struct bench_tp *tp);

/* Voluntary context switches of the calling thread since it started. */
uint64_t bench_voluntary_switches(void);

/* The process's Rss and Pss in bytes (smaps_rollup). Pss counts a page mapped twice (the two
 * views of a memory file) once; Rss counts it twice. */
struct bench_mem {
    uint64_t rss, pss;
};

struct bench_mem bench_mem_read(void);

/* Bytes allocated to the process's open memory files whose name starts with prefix (the
 * "/memfd:codecache" of the dual backend), from fstat st_blocks. */
uint64_t bench_memfd_bytes(const char *prefix);

#ifdef __cplusplus
}
#endif

#endif /* BENCH_COUNT_H */
