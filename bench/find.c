/*
 * bench/find: code_cache_find, the address -> chunk lookup that free-by-pointer allocator
 * interfaces, unwinders, profilers and signal handlers ask, with 100,000 live chunks.
 *
 * Each backend's cache gets 110,000 chunks, then 10,000 of them, chosen at random, are freed:
 * 100,000 stay live, with holes between them (mprotect: one page each; dual: 64 B to 2 KiB,
 * random). The addresses asked, 1,000,000 per repetition, are made in advance:
 *
 *   - hits: a random byte of a random live chunk (where it runs; with the dual backend also where
 *     it is written, which find accepts too);
 *   - misses inside the cache: a random byte of a freed chunk or of never-used space;
 *   - misses outside: addresses of the heap, the stack and the program.
 *
 * Every answer is checked once before timing (the right chunk for a hit, NULL for a miss). The
 * time, on the thread's CPU clock, is per lookup, against two baselines in the same run: the same
 * loop that only reads the addresses (the loop's own cost); a binary search over a sorted array
 * of the live chunks (what a program that does not have code_cache_find keeps, and which, unlike
 * it, cannot be read while another thread changes it); and two floors of the library's kind of
 * index, inlined: the word and the record (two dependent loads, see floor_find: what the library
 * read until 2026-12-01), and the word alone (one load, floor_find_word: what it reads now). Then
 * the same lookups chained, each address depending on the previous answer: the latency of one
 * lookup, which independent lookups in a loop partly overlap.
 *
 * "No lock": pthread_mutex_lock is interposed in this program, and the lookups must take none.
 * They are timed once more while a second thread allocates, seals and frees other chunks of the
 * same cache, and checked again meanwhile.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "code_cache.h"
#include "bench.h"
#include "count.h"

#define PAGE    ((size_t)4096)
#define CHUNKS  110000
#define FREED   10000
#define LIVE    (CHUNKS - FREED)
#define LOOKUPS 1000000

struct live {
    uintptr_t lo, hi; /* [lo, hi) where it runs */
    struct code_chunk *chunk;
};

static int live_cmp(const void *a, const void *b)
{
    const struct live *x = a, *y = b;
    return (x->lo > y->lo) - (x->lo < y->lo);
}

/* The baseline: the live chunk holding addr in a sorted array, or NULL. */
static struct code_chunk *sorted_find(const struct live *v, size_t n, uintptr_t addr)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid].lo <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0 || addr >= v[lo - 1].hi)
        return NULL;
    return v[lo - 1].chunk;
}

enum query { HITS, HITS_RW, MISSES_IN, MISSES_OUT, NQUERIES };
static const char *const query_name[NQUERIES] = {"hit (rx)", "hit (rw view)", "miss in cache",
                                                 "miss outside"};

struct queries {
    uintptr_t *addr[NQUERIES];
    struct code_chunk **want[NQUERIES];
};

static volatile uintptr_t sink;

/* The latency of one lookup: each address depends on the previous answer (through a mask that
 * is zero at run time), so lookups cannot overlap the way independent ones do. */
static volatile uintptr_t zero_mask;

/* The body of a timed loop: the CPU time per lookup of n lookups, the address of each computed
 * by ADDR (from addr[i], and for a chained loop from the previous result acc) into a, looked up by
 * LOOKUP, every result summed so that none is optimised away. A macro rather than a function
 * pointer, so that each lookup stays inlined into its loop. */
#define TIMED_LOOKUPS(ADDR, LOOKUP)                                                                \
    uintptr_t acc = 0, m = zero_mask;                                                              \
    (void)m;                                                                                       \
    double t0 = bench_thread_cpu_ns();                                                             \
    for (size_t i = 0; i < n; i++) {                                                               \
        uintptr_t a = (ADDR);                                                                      \
        acc += (uintptr_t)(LOOKUP);                                                                \
    }                                                                                              \
    double t = bench_thread_cpu_ns() - t0;                                                         \
    sink = acc;                                                                                    \
    return t / (double)n

static double time_find(const struct code_cache *cache, const uintptr_t *addr, size_t n)
{
    TIMED_LOOKUPS(addr[i], code_cache_find(cache, (const void *)a));
}

static double time_sorted(const struct live *v, size_t nv, const uintptr_t *addr, size_t n)
{
    TIMED_LOOKUPS(addr[i], sorted_find(v, nv, a));
}

static double time_loop(const uintptr_t *addr, size_t n)
{
    uintptr_t acc = 0;
    double t0 = bench_thread_cpu_ns();
    for (size_t i = 0; i < n; i++) {
        acc += addr[i];
        BENCH_KEEP(acc);
    }
    double t = bench_thread_cpu_ns() - t0;
    sink = acc;
    return t / (double)n;
}

/* Every answer, checked; returns the number of wrong ones. While another thread allocates, a
 * miss inside the cache may rightly become one of its chunks: then only the other kinds are
 * checked (stable_only). */
static size_t check_answers(const struct code_cache *cache, const struct queries *q,
                            bool stable_only, size_t *checked)
{
    size_t wrong = 0;
    *checked = 0;
    for (int k = 0; k < NQUERIES; k++) {
        if (stable_only && k == MISSES_IN)
            continue;
        if (q->addr[k] != NULL)
            *checked += LOOKUPS;
        for (size_t i = 0; q->addr[k] != NULL && i < LOOKUPS; i++)
            wrong += code_cache_find(cache, (const void *)q->addr[k][i]) != q->want[k][i];
    }
    return wrong;
}

/*
 * The floor of this kind of index, inlined: a word per granule holding a record's number, and the
 * record, checked. Two dependent loads at random places of two arrays as large as the library's
 * (records of the same 56 bytes): what any lookup through a per-granule index pays in cache and
 * TLB misses, without a call, a slab table or atomics.
 */
struct floor_record {
    uint64_t extent; /* first granule << 32 | granules */
    uint8_t state;
    unsigned char pad[47];
};

struct floor {
    uintptr_t base;
    unsigned shift;
    size_t ngranules;
    uint32_t *words;
    struct floor_record *records;
};

static void floor_build(struct floor *f, const struct code_cache_stats *st, const struct live *all,
                        size_t n, size_t live)
{
    f->base = st->base;
    f->shift = (unsigned)__builtin_ctzll(st->granule);
    f->ngranules = st->reserved >> f->shift;
    f->words = calloc(f->ngranules, sizeof *f->words);
    f->records = calloc(n, sizeof *f->records);
    if (f->words == NULL || f->records == NULL) {
        perror("find: calloc");
        exit(2);
    }
    for (size_t i = 0; i < live; i++) {
        size_t first = (all[i].lo - f->base) >> f->shift, g = (all[i].hi - all[i].lo) >> f->shift;
        f->records[i].extent = (uint64_t)first << 32 | g;
        f->records[i].state = 3;
        for (size_t k = 0; k < g; k++)
            f->words[first + k] = (uint32_t)i + 1;
    }
}

/* The floor of the index as the library reads it now (lib/find.c since 2026-12-02): the word
 * alone; the record's address is computed from it, the record is not read. One load. */
static inline const void *floor_find_word(const struct floor *f, uintptr_t a)
{
    size_t g = (a - f->base) >> f->shift;
    if (g >= f->ngranules)
        return NULL;
    uint32_t id = f->words[g];
    if (id == 0)
        return NULL;
    return &f->records[id - 1];
}

/* The old floor: the word, then the record read to check that it is live and covers the granule.
 * Two dependent loads. */
static inline const void *floor_find(const struct floor *f, uintptr_t a)
{
    const struct floor_record *r = floor_find_word(f, a);
    size_t g = (a - f->base) >> f->shift;
    if (r == NULL || r->state != 3 || g - (r->extent >> 32) >= (uint32_t)r->extent)
        return NULL;
    return r;
}

static double time_find_chained(const struct code_cache *cache, const uintptr_t *addr, size_t n)
{
    TIMED_LOOKUPS(addr[i] | (acc & m), code_cache_find(cache, (const void *)a));
}

static double time_floor_chained(const struct floor *f, const uintptr_t *addr, size_t n)
{
    TIMED_LOOKUPS(addr[i] | (acc & m), floor_find(f, a));
}

static double time_floor(const struct floor *f, const uintptr_t *addr, size_t n)
{
    TIMED_LOOKUPS(addr[i], floor_find(f, a));
}

/* Two loops, not one with a flag: "addr | (acc & m)" with m zero in a register still makes each
 * lookup wait for the previous one. */
static double time_floor_word(const struct floor *f, const uintptr_t *addr, size_t n)
{
    TIMED_LOOKUPS(addr[i], floor_find_word(f, a));
}

static double time_floor_word_chained(const struct floor *f, const uintptr_t *addr, size_t n)
{
    TIMED_LOOKUPS(addr[i] | (acc & m), floor_find_word(f, a));
}

/* The second thread: other chunks of the same cache allocated, sealed and freed meanwhile. */
struct churner {
    struct code_cache *cache;
    volatile int stop;
    size_t ops;
    struct bench_calls calls;
};

static void *churn_run(void *arg)
{
    struct churner *c = arg;
    struct bench_calls c0, c1;
    bench_calls_get(&c0);
    while (!c->stop) {
        struct code_chunk *chunk = code_cache_alloc(c->cache, 64);
        if (chunk == NULL)
            break;
        struct code_span s = code_chunk_alloc(chunk, 16, 16);
        if (s.rw != NULL)
            memset(s.rw, 0xc3, 16);
        code_chunk_seal(chunk);
        code_chunk_free(chunk);
        c->ops++;
    }
    bench_calls_get(&c1);
    c->calls = bench_calls_diff(&c1, &c0);
    return NULL;
}

static int outside_global;

static void one_backend(bool dual, int reps)
{
    struct bench_rng rng;
    bench_rng_seed(&rng, dual ? 2 : 1);
    /* Big enough for every chunk and the second thread's churn, never exhausted. */
    struct code_cache_options o = {.size = dual ? (size_t)256 << 20 : (size_t)1 << 30,
                                   .flags = dual ? CODE_CACHE_DUAL_MAP : 0};
    struct code_cache *cache = code_cache_create(&o);
    struct live *all = malloc(CHUNKS * sizeof *all);
    struct queries q;
    memset(&q, 0, sizeof q);
    if (cache == NULL || all == NULL) {
        perror("find: setup");
        exit(2);
    }
    for (size_t i = 0; i < CHUNKS; i++) {
        size_t size = dual ? 64 + bench_rng_below(&rng, 2048 - 64 + 1) : PAGE;
        struct code_chunk *chunk = code_cache_alloc(cache, size);
        if (chunk == NULL) {
            perror("find: code_cache_alloc");
            exit(2);
        }
        struct code_span s = code_chunk_span(chunk);
        code_chunk_alloc(chunk, 16, 16);
        if (code_chunk_seal(chunk) != 0) {
            perror("find: code_chunk_seal");
            exit(2);
        }
        all[i] = (struct live){(uintptr_t)s.rx, (uintptr_t)s.rx + s.size, chunk};
    }
    /* Free FREED chunks at random: they become misses. Partial shuffle: the freed ones last. */
    for (size_t i = CHUNKS - 1; i >= LIVE; i--) {
        size_t j = (size_t)bench_rng_below(&rng, i + 1);
        struct live t = all[i];
        all[i] = all[j];
        all[j] = t;
        code_chunk_free(all[i].chunk);
    }
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    uintptr_t rw_delta = 0;
    if (dual) {
        struct code_span s = code_chunk_span(all[0].chunk);
        rw_delta = (uintptr_t)s.rw - (uintptr_t)s.rx;
    }
    /* Never-used space: above the highest chunk ever handed out, below the cache's end. */
    uintptr_t used = 0, top = st.base + st.reserved;
    for (size_t j = 0; j < CHUNKS; j++)
        used = all[j].hi > used ? all[j].hi : used;
    uintptr_t outside[] = {(uintptr_t)all, (uintptr_t)&rng, (uintptr_t)&outside_global,
                           (uintptr_t)one_backend};
    for (int k = 0; k < NQUERIES; k++) {
        if (k == HITS_RW && !dual)
            continue;
        q.addr[k] = malloc(LOOKUPS * sizeof *q.addr[k]);
        q.want[k] = malloc(LOOKUPS * sizeof *q.want[k]);
        if (q.addr[k] == NULL || q.want[k] == NULL) {
            perror("find: malloc");
            exit(2);
        }
        for (size_t i = 0; i < LOOKUPS; i++) {
            uintptr_t a;
            struct code_chunk *want = NULL;
            if (k == HITS || k == HITS_RW) {
                const struct live *l = &all[bench_rng_below(&rng, LIVE)];
                a = l->lo + bench_rng_below(&rng, l->hi - l->lo) + (k == HITS_RW ? rw_delta : 0);
                want = l->chunk;
            } else if (k == MISSES_IN && i % 2 == 0) {
                const struct live *l = &all[LIVE + bench_rng_below(&rng, FREED)];
                a = l->lo + bench_rng_below(&rng, l->hi - l->lo);
            } else if (k == MISSES_IN) {
                a = used + bench_rng_below(&rng, top - used);
            } else {
                a = outside[i % 4] + bench_rng_below(&rng, 64);
            }
            q.addr[k][i] = a;
            q.want[k][i] = want;
        }
    }
    qsort(all, LIVE, sizeof *all, live_cmp);

    size_t checked, checked_churned;
    size_t wrong = check_answers(cache, &q, false, &checked);
    struct floor fl;
    floor_build(&fl, &st, all, CHUNKS, LIVE);
    struct bench_samples loop = {0}, sorted = {0}, floor_s = {0}, found[NQUERIES] = {{0}},
                         churned = {0}, floor_chained = {0}, find_chained = {0}, word_s = {0},
                         word_chained = {0};
    struct bench_calls c0, c1;
    bench_calls_get(&c0);
    for (int rep = 0; rep < reps; rep++) {
        bench_add(&loop, time_loop(q.addr[HITS], LOOKUPS));
        bench_add(&sorted, time_sorted(all, LIVE, q.addr[HITS], LOOKUPS));
        bench_add(&floor_s, time_floor(&fl, q.addr[HITS], LOOKUPS));
        bench_add(&floor_chained, time_floor_chained(&fl, q.addr[HITS], LOOKUPS));
        bench_add(&word_s, time_floor_word(&fl, q.addr[HITS], LOOKUPS));
        bench_add(&word_chained, time_floor_word_chained(&fl, q.addr[HITS], LOOKUPS));
        bench_add(&find_chained, time_find_chained(cache, q.addr[HITS], LOOKUPS));
        for (int k = 0; k < NQUERIES; k++)
            if (q.addr[k] != NULL)
                bench_add(&found[k], time_find(cache, q.addr[k], LOOKUPS));
    }
    bench_calls_get(&c1);
    struct bench_calls d = bench_calls_diff(&c1, &c0);

    /* With a second thread changing the cache. */
    struct churner ch = {.cache = cache};
    pthread_t th;
    if (pthread_create(&th, NULL, churn_run, &ch) != 0) {
        perror("find: pthread_create");
        exit(2);
    }
    struct bench_calls e0, e1;
    bench_calls_get(&e0);
    for (int rep = 0; rep < reps; rep++)
        bench_add(&churned, time_find(cache, q.addr[HITS], LOOKUPS));
    size_t wrong_churned = check_answers(cache, &q, true, &checked_churned);
    bench_calls_get(&e1);
    ch.stop = 1;
    pthread_join(th, NULL);
    struct bench_calls e = bench_calls_diff(&e1, &e0);

    const char *b = dual ? "dual" : "mprotect";
    printf("find: %s backend, %d live chunks of %s among %d freed, %d lookups per repetition, "
           "CPU time per lookup\n",
           b, LIVE, dual ? "64 B-2 KiB" : "a page", FREED, LOOKUPS);
    char name[128];
    struct bench_summary ls = bench_summarize(&loop), ss = bench_summarize(&sorted);
    snprintf(name, sizeof name, "find/%s/loop reading the addresses", b);
    bench_line(name, "ns", &ls, NULL, NULL);
    snprintf(name, sizeof name, "find/%s/binary search of a sorted array", b);
    bench_line(name, "ns", &ss, NULL, NULL);
    struct bench_summary fls = bench_summarize(&floor_s);
    snprintf(name, sizeof name, "find/%s/two dependent loads, inlined (floor)", b);
    bench_line(name, "ns", &fls, NULL, NULL);
    struct bench_summary ws = bench_summarize(&word_s), wcs = bench_summarize(&word_chained);
    snprintf(name, sizeof name, "find/%s/the word alone, inlined (floor, one load)", b);
    bench_line(name, "ns", &ws, NULL, NULL);
    for (int k = 0; k < NQUERIES; k++) {
        if (q.addr[k] == NULL)
            continue;
        struct bench_summary fs = bench_summarize(&found[k]);
        if (k == HITS) {
            snprintf(name, sizeof name, "find/%s/code_cache_find %s", b, query_name[k]);
            bench_line(name, "ns", &fs, "floor", &fls);
            bench_line(name, "ns", &fs, "floor one load", &ws);
        }
        snprintf(name, sizeof name, "find/%s/code_cache_find %s", b, query_name[k]);
        bench_line(name, "ns", &fs, "binary search", &ss);
    }
    struct bench_summary fcs = bench_summarize(&floor_chained),
                         ccs = bench_summarize(&find_chained);
    snprintf(name, sizeof name, "find/%s/floor, chained (latency)", b);
    bench_line(name, "ns", &fcs, NULL, NULL);
    snprintf(name, sizeof name, "find/%s/code_cache_find hit, chained (latency)", b);
    bench_line(name, "ns", &ccs, "floor chained", &fcs);
    snprintf(name, sizeof name, "find/%s/the word alone, chained (latency)", b);
    bench_line(name, "ns", &wcs, NULL, NULL);
    snprintf(name, sizeof name, "find/%s/code_cache_find hit, chained (latency)", b);
    bench_line(name, "ns", &ccs, "word alone chained", &wcs);
    struct bench_summary cs = bench_summarize(&churned);
    struct bench_summary hs = bench_summarize(&found[HITS]);
    snprintf(name, sizeof name, "find/%s/code_cache_find hit, 2nd thread churning", b);
    bench_line(name, "ns", &cs, "hit alone", &hs);
    bench_note("wrong answers: %zu of %zu before timing; %zu of %zu during the churn (hits and "
               "misses outside; a miss inside may rightly become the other thread's chunk)",
               wrong, checked, wrong_churned, checked_churned);
    bench_note("mutex locks taken by the lookups: %llu in %d lookups alone, %llu in %zu during "
               "the churn; the churning thread took %llu in %zu operations",
               (unsigned long long)d.locks, reps * (int)checked, (unsigned long long)e.locks,
               reps * LOOKUPS + checked_churned, (unsigned long long)ch.calls.locks, ch.ops);
    for (int k = 0; k < NQUERIES; k++) {
        free(q.addr[k]);
        free(q.want[k]);
        bench_free(&found[k]);
    }
    bench_free(&loop);
    bench_free(&sorted);
    bench_free(&floor_s);
    bench_free(&floor_chained);
    bench_free(&find_chained);
    bench_free(&word_s);
    bench_free(&word_chained);
    bench_free(&churned);
    free(fl.words);
    free(fl.records);
    free(all);
    code_cache_destroy(cache);
    fflush(stdout);
}

int main(void)
{
    bench_header("bench/find: code_cache_find with 100,000 live chunks");
    int reps = bench_reps(7);
    one_backend(false, reps);
    one_backend(true, reps);
    return 0;
}
