/*
 * bench/onefn: one chunk at a time, as method JITs, regex JITs and baseline tiers use code memory:
 * a chunk is allocated, written, sealed, called once and freed, over and over. Two payloads: a
 * whole 4 KiB chunk of 64 functions of 64 bytes, and a single 64-byte function.
 *
 *   - direct: what a program does without the library, mmap (MAP_POPULATE: the page faults taken
 *     in the same call, the cheapest way there is) + write + mprotect r-x + call + munmap;
 *   - libcodecache, mprotect backend: code_cache_alloc + code_chunk_alloc and write per function +
 *     code_chunk_seal + call + code_chunk_free;
 *   - libcodecache, dual backend (CODE_CACHE_DUAL_MAP), the same calls.
 *
 * On one thread; on two threads sharing one cache; on two threads with a cache each (direct: two
 * threads). Time is per chunk and per thread, on the thread's CPU clock and on the wall clock:
 * with two threads a thread that waits for a lock spends wall time, not CPU time.
 *
 * Two regimes of a cache. While never-used space remains, the library takes it first (freed
 * code stays in quarantine), so a freed chunk's space is not reused: the main table, in 1 GiB
 * caches that the runs never exhaust (after 1,000 chunks of warm-up, which take the commit-ahead
 * step to its largest). Once the bump pointer has reached the end of the cache, every chunk
 * comes from freed space: the "wrapped" table, in 4 MiB caches run past their end first. A
 * long-running program spends most of its life in the second regime.
 *
 * Then, in runs that are not timed, what each chunk costs besides time, for every variant alike:
 * system calls (the library's own count, stats.system_calls; the calls counted by interposing
 * mmap, munmap, mprotect, madvise, fallocate, ftruncate and memfd_create in this program; and the
 * kernel's count of the same calls on perf tracepoints), futex calls and futex waits (kernel
 * tracepoints, per thread), voluntary context switches (getrusage), and mutex acquisitions that
 * found the mutex taken (interposed pthread_mutex_lock). Last, the system calls per chunk of a
 * batch (chunks allocated, written and sealed, none freed).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "code_cache.h"
#include "bench.h"
#include "count.h"

#define PAGE           ((size_t)4096)
#define FSIZE          ((size_t)64)
#define MIB            ((size_t)1 << 20)
#define CHUNKS_TIMED   2000 /* per thread and repetition */
#define CHUNKS_COUNTED 5000 /* per thread, in a counting run */
#define CHUNKS_WARMUP  1000 /* per cache */
#define COUNT_RUNS     3
/* The wrapped regime: small caches, run past their end before anything is measured. */
#define WRAPPED_CACHE (4 * MIB)
#define WRAPPED_TIMED 100

static unsigned char template_code[FSIZE];

enum method { DIRECT, MPROTECT, DUAL, NMETHODS };
static const char *const method_name[NMETHODS] = {"direct mmap+mprotect+munmap",
                                                  "libcodecache mprotect", "libcodecache dual"};

enum mode { ONE, SHARED, OWN, NMODES };
static const char *const mode_name[NMODES] = {"1 thread", "2 threads, one cache",
                                              "2 threads, a cache each"};

/* One thread's loop, and what it measured. */
struct job {
    enum method method;
    unsigned fns; /* functions per chunk: 64 fill a 4 KiB chunk, or 1 */
    struct code_cache *cache;
    size_t chunks;
    bool count; /* a counting run: kernel tracepoints on */
    pthread_barrier_t *start;
    double wall, cpu;
    struct bench_calls calls;
    struct bench_tp_counts tp;
    uint64_t switches;
    int err;
    const char *what;
};

static int job_fail(struct job *j, const char *what)
{
    j->err = errno;
    j->what = what;
    return -1;
}

/* One chunk: allocate, write fns functions, seal, call the last, free. */
static int one_chunk(struct job *j, uint32_t serial)
{
    const uint32_t last = serial + j->fns - 1;
    if (j->method == DIRECT) {
        unsigned char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (p == MAP_FAILED)
            return job_fail(j, "mmap");
        for (unsigned k = 0; k < j->fns; k++)
            bench_write_function(p + k * FSIZE, template_code, FSIZE, serial + k);
        if (mprotect(p, PAGE, PROT_READ | PROT_EXEC) != 0) {
            munmap(p, PAGE);
            return job_fail(j, "mprotect");
        }
        bench_check_function(p + (j->fns - 1) * FSIZE, last, "onefn direct");
        munmap(p, PAGE);
        return 0;
    }
    struct code_chunk *chunk = code_cache_alloc(j->cache, j->fns * FSIZE);
    if (chunk == NULL)
        return job_fail(j, "code_cache_alloc");
    const void *rx = NULL;
    for (unsigned k = 0; k < j->fns; k++) {
        struct code_span s = code_chunk_alloc(chunk, FSIZE, 16);
        if (s.rw == NULL) {
            code_chunk_free(chunk);
            return job_fail(j, "code_chunk_alloc");
        }
        bench_write_function(s.rw, template_code, FSIZE, serial + k);
        rx = s.rx;
    }
    if (code_chunk_seal(chunk) != 0) {
        int saved = errno;
        code_chunk_free(chunk);
        errno = saved;
        return job_fail(j, "code_chunk_seal");
    }
    bench_check_function(rx, last, "onefn libcodecache");
    code_chunk_free(chunk);
    return 0;
}

static void *job_run(void *arg)
{
    struct job *j = arg;
    struct bench_tp tp = {.futex = -1};
    struct bench_tp_counts tp0 = {0};
    if (j->count)
        bench_tp_open(&tp);
    pthread_barrier_wait(j->start);
    struct bench_calls c0, c1;
    bench_calls_get(&c0);
    uint64_t s0 = bench_voluntary_switches();
    if (j->count)
        tp0 = bench_tp_read(&tp);
    double w0 = bench_now_ns(), u0 = bench_thread_cpu_ns();
    for (size_t i = 0; i < j->chunks; i++)
        if (one_chunk(j, (uint32_t)(i * j->fns)) != 0)
            break;
    j->cpu = bench_thread_cpu_ns() - u0;
    j->wall = bench_now_ns() - w0;
    if (j->count) {
        struct bench_tp_counts tp1 = bench_tp_read(&tp);
        j->tp = bench_tp_diff(&tp1, &tp0);
        bench_tp_close(&tp);
    }
    j->switches = bench_voluntary_switches() - s0;
    bench_calls_get(&c1);
    j->calls = bench_calls_diff(&c1, &c0);
    return NULL;
}

/* A variant: a method, a way of using threads, a payload, and its caches. */
struct config {
    enum method method;
    enum mode mode;
    unsigned fns;
    bool wrapped;          /* a small cache, run past its end first */
    size_t timed, counted; /* chunks per thread in a timed and in a counting run */
    struct code_cache *cache[2];
    struct bench_samples cpu, wall;
    /* Counting runs, per chunk: */
    struct bench_samples stats_sys, calls_sys, tp_sys, futex, futex_wait, switches, contended;
    bool failed;
};

static int config_threads(const struct config *cf)
{
    return cf->mode == ONE ? 1 : 2;
}

/* Runs the variant's loop on its threads; fills jobs[0..threads). Exits on a failure. */
static void config_run(struct config *cf, size_t chunks, bool count, struct job jobs[2])
{
    int n = config_threads(cf);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)n);
    pthread_t th[2];
    for (int t = 0; t < n; t++) {
        jobs[t] = (struct job){.method = cf->method,
                               .fns = cf->fns,
                               .cache = cf->cache[cf->mode == OWN ? t : 0],
                               .chunks = chunks,
                               .count = count,
                               .start = &start};
        if (pthread_create(&th[t], NULL, job_run, &jobs[t]) != 0) {
            perror("onefn: pthread_create");
            exit(2);
        }
    }
    for (int t = 0; t < n; t++)
        pthread_join(th[t], NULL);
    pthread_barrier_destroy(&start);
    for (int t = 0; t < n; t++)
        if (jobs[t].err != 0) {
            fprintf(stderr, "onefn: %s, %s, %u per chunk: %s failed: %s\n", method_name[cf->method],
                    mode_name[cf->mode], cf->fns, jobs[t].what, strerror(jobs[t].err));
            exit(1);
        }
}

static size_t config_stats_syscalls(const struct config *cf)
{
    size_t total = 0;
    for (int t = 0; t < 2; t++) {
        if (cf->cache[t] == NULL)
            continue;
        struct code_cache_stats st;
        code_cache_get_stats(cf->cache[t], &st);
        total += st.system_calls;
    }
    return total;
}

static void config_open(struct config *cf)
{
    if (cf->method == DIRECT)
        return;
    int caches = cf->mode == OWN ? 2 : 1;
    for (int t = 0; t < caches; t++) {
        struct code_cache_options o = {.size = cf->wrapped ? WRAPPED_CACHE : 1024 * MIB,
                                       .flags = cf->method == DUAL ? CODE_CACHE_DUAL_MAP : 0};
        cf->cache[t] = code_cache_create(&o);
        if (cf->cache[t] == NULL) {
            perror("onefn: code_cache_create");
            exit(2);
        }
    }
    struct job jobs[2];
    /* Wrapped: twice the chunks the cache holds, so that the bump pointer is at its end. */
    size_t chunk_bytes = cf->method == DUAL ? cf->fns * FSIZE : PAGE;
    size_t warmup = cf->wrapped ? 2 * WRAPPED_CACHE / chunk_bytes : CHUNKS_WARMUP;
    config_run(cf, warmup / (size_t)config_threads(cf), false, jobs);
    if (cf->wrapped) {
        struct code_cache_stats st;
        code_cache_get_stats(cf->cache[0], &st);
        if (st.never_used != 0) {
            fprintf(stderr, "onefn: the wrapped cache still has never-used space\n");
            exit(2);
        }
    }
}

static void config_close(struct config *cf)
{
    for (int t = 0; t < 2; t++)
        code_cache_destroy(cf->cache[t]);
    struct bench_samples *all[] = {&cf->cpu,        &cf->wall,     &cf->stats_sys,
                                   &cf->calls_sys,  &cf->tp_sys,   &cf->futex,
                                   &cf->futex_wait, &cf->switches, &cf->contended};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        bench_free(all[i]);
}

static void config_time(struct config *cf)
{
    struct job jobs[2];
    int n = config_threads(cf);
    config_run(cf, cf->timed, false, jobs);
    double cpu = 0, wall = 0;
    for (int t = 0; t < n; t++) {
        cpu += jobs[t].cpu / (double)jobs[t].chunks;
        wall += jobs[t].wall / (double)jobs[t].chunks;
    }
    bench_add(&cf->cpu, cpu / n);
    bench_add(&cf->wall, wall / n);
}

static void config_count(struct config *cf, bool *tp_ok, const char **tp_why)
{
    struct job jobs[2];
    int n = config_threads(cf);
    size_t sys0 = config_stats_syscalls(cf);
    config_run(cf, cf->counted, true, jobs);
    double chunks = (double)n * (double)cf->counted;
    uint64_t calls = 0, tp = 0, futex = 0, waits = 0, sw = 0, cont = 0;
    for (int t = 0; t < n; t++) {
        calls += bench_calls_syscalls(&jobs[t].calls);
        cont += jobs[t].calls.contended;
        sw += jobs[t].switches;
        if (!jobs[t].tp.valid)
            *tp_ok = false;
        tp += jobs[t].tp.syscalls;
        futex += jobs[t].tp.futex;
        waits += jobs[t].tp.futex_wait;
    }
    if (!*tp_ok && *tp_why == NULL) {
        struct bench_tp probe;
        bench_tp_open(&probe);
        *tp_why = probe.unavailable;
        bench_tp_close(&probe);
    }
    if (cf->method != DIRECT)
        bench_add(&cf->stats_sys, (double)(config_stats_syscalls(cf) - sys0) / chunks);
    bench_add(&cf->calls_sys, (double)calls / chunks);
    bench_add(&cf->tp_sys, (double)tp / chunks);
    bench_add(&cf->futex, (double)futex / chunks);
    bench_add(&cf->futex_wait, (double)waits / chunks);
    bench_add(&cf->switches, (double)sw / chunks);
    bench_add(&cf->contended, (double)cont / chunks);
}

/* The median of a count per chunk, and its range over the counting runs. */
static void print_count(const char *what, const struct bench_samples *s)
{
    struct bench_summary m = bench_summarize(s);
    if (m.n == 0) {
        printf(" %s -", what);
        return;
    }
    printf(" %s %.3g", what, m.median);
    if (m.max - m.min >= 0.0005)
        printf(" (%.3g-%.3g)", m.min, m.max);
}

/* Times every variant of a table (interleaved), counts, prints. */
static void run_table(struct config *cfs, size_t ncf, int reps, const char *tag)
{
    for (size_t i = 0; i < ncf; i++)
        config_open(&cfs[i]);
    /* Interleaved: every repetition runs every variant once, so a noisy moment of the machine
     * is spread over all of them. */
    for (int rep = 0; rep < reps; rep++)
        for (size_t i = 0; i < ncf; i++)
            config_time(&cfs[i]);
    bool tp_ok = true;
    const char *tp_why = NULL;
    for (int run = 0; run < COUNT_RUNS; run++)
        for (size_t i = 0; i < ncf; i++)
            config_count(&cfs[i], &tp_ok, &tp_why);

    for (int clock = 0; clock < 2; clock++) {
        const struct config *base = NULL;
        for (size_t i = 0; i < ncf; i++) {
            const struct config *cf = &cfs[i];
            if (cf->method == DIRECT)
                base = cf;
            char name[128];
            snprintf(name, sizeof name, "onefn/%s/%s/%s %s", tag,
                     cf->mode == ONE      ? "1 thread"
                     : cf->mode == SHARED ? "2 thr shared"
                                          : "2 thr own",
                     cf->method == DIRECT     ? "direct"
                     : cf->method == MPROTECT ? "mprotect"
                                              : "dual",
                     clock == 0 ? "cpu" : "wall");
            struct bench_summary s = bench_summarize(clock == 0 ? &cf->cpu : &cf->wall),
                                 b = bench_summarize(clock == 0 ? &base->cpu : &base->wall);
            bench_line(name, "ns", &s, cf == base ? NULL : "direct", &b);
        }
    }
    printf("onefn: %s: per chunk, %d counting runs of %zu chunks per thread (not timed): median "
           "(min-max)\n",
           tag, COUNT_RUNS, cfs[0].counted);
    for (size_t i = 0; i < ncf; i++) {
        const struct config *cf = &cfs[i];
        printf("  counts/%s/%s/%s:", tag, mode_name[cf->mode], method_name[cf->method]);
        print_count("syscalls: stats", &cf->stats_sys);
        print_count(", interposed", &cf->calls_sys);
        print_count(", kernel", &cf->tp_sys);
        print_count("; futex calls", &cf->futex);
        print_count(", futex waits", &cf->futex_wait);
        print_count("; blocked (voluntary switches)", &cf->switches);
        print_count("; contended mutex locks", &cf->contended);
        printf("\n");
    }
    if (!tp_ok)
        bench_note("kernel counts (futex, kernel syscalls) not measured: %s",
                   tp_why != NULL ? tp_why : "?");
    for (size_t i = 0; i < ncf; i++)
        config_close(&cfs[i]);
    fflush(stdout);
}

static void one_payload(unsigned fns, int reps)
{
    struct config cfs[] = {
        {.method = DIRECT, .mode = ONE},      {.method = MPROTECT, .mode = ONE},
        {.method = DUAL, .mode = ONE},        {.method = DIRECT, .mode = OWN},
        {.method = MPROTECT, .mode = SHARED}, {.method = DUAL, .mode = SHARED},
        {.method = MPROTECT, .mode = OWN},    {.method = DUAL, .mode = OWN},
    };
    enum { NCF = sizeof cfs / sizeof cfs[0] };
    for (size_t i = 0; i < NCF; i++) {
        cfs[i].fns = fns;
        cfs[i].timed = CHUNKS_TIMED;
        cfs[i].counted = CHUNKS_COUNTED;
    }
    if (fns > 1)
        printf("onefn: a 4 KiB chunk of %u functions of %zu B, allocated, written, sealed, one "
               "called, freed; per chunk and thread, %d chunks per thread and repetition; 1 GiB "
               "caches, never exhausted\n",
               fns, FSIZE, CHUNKS_TIMED);
    else
        printf("onefn: one function of %zu B per chunk, allocated, written, sealed, called, "
               "freed (direct and mprotect: a page each; dual: 64 B); per chunk and thread, %d "
               "chunks per thread and repetition; 1 GiB caches, never exhausted\n",
               FSIZE, CHUNKS_TIMED);
    char tag[32];
    snprintf(tag, sizeof tag, "%u fn", fns);
    run_table(cfs, NCF, reps, tag);
}

/* The same loop (64 functions per 4 KiB chunk, one thread) once the bump pointer has reached the
 * end of the cache: every chunk comes from freed space. */
static void wrapped(int reps)
{
    struct config cfs[] = {
        {.method = DIRECT, .mode = ONE},
        {.method = MPROTECT, .mode = ONE, .wrapped = true},
        {.method = DUAL, .mode = ONE, .wrapped = true},
    };
    enum { NCF = sizeof cfs / sizeof cfs[0] };
    for (size_t i = 0; i < NCF; i++) {
        cfs[i].fns = 64;
        cfs[i].timed = WRAPPED_TIMED;
        cfs[i].counted = WRAPPED_TIMED;
    }
    printf("onefn: wrapped: the same 4 KiB chunks of 64 functions, 1 thread, in %zu MiB caches "
           "whose bump pointer has reached the end (every chunk reuses freed space); %d chunks "
           "per repetition\n",
           WRAPPED_CACHE / MIB, WRAPPED_TIMED);
    run_table(cfs, NCF, reps, "wrapped");
}

/* System calls per chunk of a batch: chunks allocated, written and sealed, none freed. */
static void batch_counts(void)
{
    static const unsigned layouts[] = {64, 256}; /* functions of 64 B: 4 KiB and 16 KiB chunks */
    enum { CHUNKS = 10000, WARM = 1000 };
    printf("onefn: system calls per chunk in a batch: %d chunks allocated, written and sealed, "
           "none freed, after %d\n",
           CHUNKS, WARM);
    for (int dual = 0; dual < 2; dual++)
        for (size_t l = 0; l < 2; l++) {
            unsigned fns = layouts[l];
            struct code_cache_options o = {.size = (size_t)(CHUNKS + WARM + 64) * fns * FSIZE,
                                           .flags = dual ? CODE_CACHE_DUAL_MAP : 0};
            struct code_cache *cache = code_cache_create(&o);
            if (cache == NULL) {
                perror("onefn: code_cache_create (batch)");
                exit(2);
            }
            struct code_cache_stats s0, s1;
            struct bench_calls c0, c1;
            for (int i = 0; i < CHUNKS + WARM; i++) {
                if (i == WARM) {
                    code_cache_get_stats(cache, &s0);
                    bench_calls_get(&c0);
                }
                struct code_chunk *chunk = code_cache_alloc(cache, fns * FSIZE);
                if (chunk == NULL) {
                    perror("onefn: code_cache_alloc (batch)");
                    exit(2);
                }
                for (unsigned k = 0; k < fns; k++) {
                    struct code_span s = code_chunk_alloc(chunk, FSIZE, 16);
                    bench_write_function(s.rw, template_code, FSIZE, k);
                }
                if (code_chunk_seal(chunk) != 0) {
                    perror("onefn: code_chunk_seal (batch)");
                    exit(2);
                }
            }
            code_cache_get_stats(cache, &s1);
            bench_calls_get(&c1);
            struct bench_calls d = bench_calls_diff(&c1, &c0);
            printf("  batch/%s/%u fn of %zu B per chunk: %.4f system calls per chunk (stats), "
                   "%.4f (interposed: %.4f mprotect, %.4f madvise, %.4f mmap)\n",
                   dual ? "dual" : "mprotect", fns, FSIZE,
                   (double)(s1.system_calls - s0.system_calls) / CHUNKS,
                   (double)bench_calls_syscalls(&d) / CHUNKS, (double)d.mprotect / CHUNKS,
                   (double)d.madvise / CHUNKS, (double)d.mmap / CHUNKS);
            code_cache_destroy(cache);
        }
    fflush(stdout);
}

int main(void)
{
    bench_header("bench/onefn: one chunk at a time, against mmap/mprotect/munmap");
    int reps = bench_reps(15);
    bench_code_template(template_code, FSIZE);
    one_payload(64, reps);
    one_payload(1, reps);
    wrapped(bench_reps(5));
    batch_counts();
    return 0;
}
