/*
 * bench/threads: one function at a time (allocated, written, sealed, called, freed) by one and by
 * two threads sharing one dual-mapped cache, with thread caches (the default) and without
 * (CODE_CACHE_NO_THREAD_CACHE: every alloc and free takes the cache's lock), the two taking turns
 * in each repetition. Sizes 64 B, 1 KiB, 1,216 B (a regex JIT's pattern, FACTS.md) and 2 KiB,
 * the largest a thread cache keeps.
 *
 * Wall-clock time, not thread CPU time: a thread waiting for the other's lock sleeps in the
 * kernel, which thread CPU time would not count. Each thread first makes 4,096 functions
 * untimed (its thread cache hands chunks out again only after 1,024 frees), then all start
 * together; the figure is the slowest thread's time over its functions. With two threads on a
 * machine of two vCPUs, another process running meanwhile moves the figures: read them against
 * the line beside them, measured in the same repetition.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "code_cache.h"

#define WARMUP      4096
#define FUNCTIONS   200000 /* timed, per thread: 20-250 ms a turn */
#define MAX_THREADS 2

struct run {
    struct code_cache *cache;
    size_t size;
    pthread_barrier_t *start;
    const unsigned char *tmpl;
    double elapsed; /* ns, this thread's timed loop */
};

static void die(const char *what)
{
    fprintf(stderr, "threads: %s: %s\n", what, strerror(errno));
    exit(2);
}

static inline void one_function(struct code_cache *cache, size_t size, const unsigned char *tmpl,
                                uint32_t index)
{
    struct code_chunk *chunk = code_cache_alloc(cache, size);
    if (chunk == NULL)
        die("code_cache_alloc");
    struct code_span s = code_chunk_alloc(chunk, size, 16);
    if (s.rw == NULL)
        die("code_chunk_alloc");
    bench_write_function(s.rw, tmpl, size, index);
    if (code_chunk_seal(chunk) != 0)
        die("code_chunk_seal");
    int (*fn)(void) = (int (*)(void))s.rx;
    if ((uint32_t)fn() != index) {
        fprintf(stderr, "threads: function %u returned something else\n", index);
        exit(2);
    }
    code_chunk_free(chunk);
}

static void *worker(void *arg)
{
    struct run *r = arg;
    for (uint32_t i = 0; i < WARMUP; i++)
        one_function(r->cache, r->size, r->tmpl, i);
    pthread_barrier_wait(r->start);
    const double t0 = bench_now_ns();
    for (uint32_t i = 0; i < FUNCTIONS; i++)
        one_function(r->cache, r->size, r->tmpl, i);
    r->elapsed = bench_now_ns() - t0;
    return NULL;
}

/* ns per function: the slowest of `threads` threads sharing a new cache. */
static double turn(size_t size, int threads, unsigned flags, const unsigned char *tmpl)
{
    struct code_cache_options o = {.size = (size_t)64 << 20, .flags = CODE_CACHE_DUAL_MAP | flags};
    struct code_cache *cache = code_cache_create(&o);
    if (cache == NULL)
        die("code_cache_create");
    pthread_barrier_t start;
    if (pthread_barrier_init(&start, NULL, (unsigned)threads) != 0)
        die("pthread_barrier_init");
    struct run runs[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        runs[t] = (struct run){.cache = cache, .size = size, .start = &start, .tmpl = tmpl};
        if ((errno = pthread_create(&tid[t], NULL, worker, &runs[t])) != 0)
            die("pthread_create");
    }
    double slowest = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tid[t], NULL);
        if (runs[t].elapsed > slowest)
            slowest = runs[t].elapsed;
    }
    pthread_barrier_destroy(&start);
    code_cache_destroy(cache);
    return slowest / FUNCTIONS;
}

int main(void)
{
    static const size_t sizes[] = {64, 1024, 1216, 2048};
    static unsigned char tmpl[4096];
    bench_header("bench/threads: one function at a time, one or two threads on one dual cache");
    const int reps = bench_reps(9);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        const size_t size = sizes[i];
        bench_code_template(tmpl, size);
        printf("threads: functions of %zu B, %d per thread timed; wall-clock ns per function, "
               "the slowest thread\n",
               size, FUNCTIONS);
        for (int threads = 1; threads <= MAX_THREADS; threads++) {
            struct bench_samples with = {0}, without = {0};
            /* Each goes first in every other repetition: no fixed order to favour one. */
            for (int rep = 0; rep < reps; rep++) {
                if (rep % 2 == 0)
                    bench_add(&with, turn(size, threads, 0, tmpl));
                bench_add(&without, turn(size, threads, CODE_CACHE_NO_THREAD_CACHE, tmpl));
                if (rep % 2 == 1)
                    bench_add(&with, turn(size, threads, 0, tmpl));
            }
            struct bench_summary ws = bench_summarize(&with), wo = bench_summarize(&without);
            char name[2][96];
            snprintf(name[0], sizeof name[0], "threads/%zuB/%d thread%s/locked (no thread cache)",
                     size, threads, threads > 1 ? "s" : "");
            snprintf(name[1], sizeof name[1], "threads/%zuB/%d thread%s/thread caches", size,
                     threads, threads > 1 ? "s" : "");
            bench_line(name[0], "ns", &wo, NULL, NULL);
            bench_line(name[1], "ns", &ws, "locked", &wo);
            bench_free(&with);
            bench_free(&without);
        }
        fflush(stdout);
    }
    return 0;
}
