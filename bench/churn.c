/*
 * bench/churn: code that comes and goes. 100,000 one-page functions are alive; one operation
 * frees a random one and allocates, writes and seals a new one. On one thread, then on two
 * (each with half of the live set), in a 1 GiB cache; against the same with one mmap (and one
 * mprotect) per function.
 *
 * A failed allocation or seal is counted, not hidden: the slot stays empty and the next
 * operation on it just allocates. The timed repetitions each start from a freshly filled set;
 * a longer run on one set (100,000 operations) then shows whether the method holds up, and the
 * number of mappings of the process is recorded at its first failure, since vm.max_map_count is
 * what page-granular churn runs into.
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

#define PAGE          ((size_t)4096)
#define LIVE          100000
#define CHURN_OPS     20000 /* per repetition, over all threads */
#define ENDURANCE_OPS 100000

static char max_map_count[32] = "?";

static unsigned char template_code[64];

struct churn {
    struct code_cache *cache; /* NULL: the mmap-per-function baseline */
    size_t live;
    void **slots; /* a struct code_chunk * or a mapping per live function; NULL when empty */
    uint64_t seed;
    size_t ops;
    size_t failures;
    int first_errno;
    size_t mappings_at_first_failure;
    pthread_barrier_t *start;
};

static void *churn_new(struct churn *c, uint32_t index)
{
    if (c->cache == NULL) {
        void *f = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (f == MAP_FAILED)
            goto fail;
        bench_write_function(f, template_code, sizeof template_code, index);
        if (mprotect(f, PAGE, PROT_READ | PROT_EXEC) != 0) {
            munmap(f, PAGE);
            goto fail;
        }
        return f;
    }
    struct code_chunk *chunk = code_cache_alloc(c->cache, PAGE);
    if (chunk == NULL)
        goto fail;
    struct code_span s = code_chunk_alloc(chunk, sizeof template_code, 16);
    bench_write_function(s.rw, template_code, sizeof template_code, index);
    if (code_chunk_seal(chunk) != 0) {
        int saved = errno;
        code_chunk_free(chunk);
        errno = saved;
        goto fail;
    }
    return chunk;
fail:
    if (c->failures++ == 0) {
        c->first_errno = errno;
        c->mappings_at_first_failure = bench_count_mappings();
    }
    return NULL;
}

static void churn_drop(struct churn *c, void *slot)
{
    if (slot == NULL)
        return;
    if (c->cache == NULL)
        munmap(slot, PAGE);
    else
        code_chunk_free(slot);
}

static void *churn_run(void *arg)
{
    struct churn *c = arg;
    struct bench_rng rng;
    bench_rng_seed(&rng, c->seed);
    pthread_barrier_wait(c->start);
    for (size_t k = 0; k < c->ops; k++) {
        size_t i = (size_t)bench_rng_below(&rng, c->live);
        churn_drop(c, c->slots[i]);
        c->slots[i] = churn_new(c, (uint32_t)k);
    }
    return NULL;
}

/* One set of live functions, split over nthreads, filled; NULL cache: the mmap baseline. */
struct set {
    struct code_cache *cache;
    struct churn c[2];
    int nthreads;
    size_t fill_failures;
};

static void set_open(struct set *set, bool use_cache, int nthreads, uint64_t seed)
{
    *set = (struct set){.nthreads = nthreads};
    if (use_cache) {
        struct code_cache_options o = {.size = (size_t)1 << 30};
        set->cache = code_cache_create(&o);
        if (set->cache == NULL) {
            perror("churn: code_cache_create");
            exit(2);
        }
    }
    for (int t = 0; t < nthreads; t++) {
        struct churn *c = &set->c[t];
        *c = (struct churn){
            .cache = set->cache, .live = LIVE / (size_t)nthreads, .seed = seed + (uint64_t)t};
        c->slots = calloc(c->live, sizeof *c->slots);
        if (c->slots == NULL) {
            perror("churn: calloc");
            exit(2);
        }
        for (size_t i = 0; i < c->live; i++)
            c->slots[i] = churn_new(c, (uint32_t)i);
        set->fill_failures += c->failures;
    }
}

/* Runs ops operations over all threads at once; returns the wall-clock time. */
static double set_churn(struct set *set, size_t ops)
{
    pthread_barrier_t start;
    pthread_t th[2];
    pthread_barrier_init(&start, NULL, (unsigned)set->nthreads + 1);
    for (int t = 0; t < set->nthreads; t++) {
        set->c[t].start = &start;
        set->c[t].ops = ops / (size_t)set->nthreads;
        set->c[t].seed += 17;
        if (pthread_create(&th[t], NULL, churn_run, &set->c[t]) != 0) {
            perror("churn: pthread_create");
            exit(2);
        }
    }
    pthread_barrier_wait(&start);
    double t0 = bench_now_ns();
    for (int t = 0; t < set->nthreads; t++)
        pthread_join(th[t], NULL);
    double t = bench_now_ns() - t0;
    pthread_barrier_destroy(&start);
    return t;
}

static size_t set_failures(const struct set *set)
{
    size_t n = 0;
    for (int t = 0; t < set->nthreads; t++)
        n += set->c[t].failures;
    return n;
}

static void set_close(struct set *set)
{
    for (int t = 0; t < set->nthreads; t++) {
        for (size_t i = 0; i < set->c[t].live; i++)
            churn_drop(&set->c[t], set->c[t].slots[i]);
        free(set->c[t].slots);
    }
    code_cache_destroy(set->cache);
}

/* ns per operation: each repetition fills a fresh set and times CHURN_OPS operations on it, so
 * that every repetition sees the same phase of the cache's life. */
static size_t churn_series(bool use_cache, int nthreads, int reps, struct bench_samples *ns)
{
    size_t failures = 0;
    for (int rep = 0; rep < reps; rep++) {
        struct set set;
        set_open(&set, use_cache, nthreads, 1000 + 10 * (uint64_t)rep);
        bench_add(ns, set_churn(&set, CHURN_OPS) / CHURN_OPS);
        failures += set_failures(&set);
        set_close(&set);
    }
    return failures;
}

/* The long run: one set churned ENDURANCE_OPS times, in blocks; reports the failures. */
static void endurance(bool use_cache, const char *who)
{
    struct set set;
    set_open(&set, use_cache, 1, 77);
    size_t first_failing_block = 0, before = set.fill_failures;
    double t = 0;
    for (size_t block = 1; block <= ENDURANCE_OPS / CHURN_OPS; block++) {
        t += set_churn(&set, CHURN_OPS);
        if (first_failing_block == 0 && set_failures(&set) > before)
            first_failing_block = block;
    }
    size_t failed = set_failures(&set) - set.fill_failures;
    struct code_cache_stats st = {0};
    if (set.cache != NULL)
        code_cache_get_stats(set.cache, &st);
    /* What the churn leaves behind: the mappings it costs the process, and for the cache the
     * freed spans waiting (each a mapping of its own; the quarantine bound keeps them near 512). */
    size_t mappings = bench_count_mappings();
    if (failed == 0 && set.cache != NULL)
        bench_note("%s, %d operations on one set: none failed (%.1f us per operation); at the "
                   "end %zu freed spans waiting, %zu mappings in the process",
                   who, ENDURANCE_OPS, t / ENDURANCE_OPS / 1e3, st.free_spans, mappings);
    else if (failed == 0)
        bench_note("%s, %d operations on one set: none failed (%.1f us per operation); at the "
                   "end %zu mappings in the process",
                   who, ENDURANCE_OPS, t / ENDURANCE_OPS / 1e3, mappings);
    else
        bench_note("%s, %d operations on one set: %zu failed, the first within operations "
                   "%zu-%zu: %s with %zu mappings in the process (vm.max_map_count %s); %zu KiB "
                   "of freed chunks retired",
                   who, ENDURANCE_OPS, failed, (first_failing_block - 1) * CHURN_OPS,
                   first_failing_block * CHURN_OPS, strerror(set.c[0].first_errno),
                   set.c[0].mappings_at_first_failure, max_map_count, st.retired >> 10);
    set_close(&set);
}

int main(void)
{
    bench_header("bench/churn: free and reallocate code with 100,000 functions alive");
    int reps = bench_reps(5);
    FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
    if (f != NULL) {
        if (fscanf(f, "%31s", max_map_count) != 1)
            snprintf(max_map_count, sizeof max_map_count, "?");
        fclose(f);
    }
    bench_code_template(template_code, sizeof template_code);
    printf("churn: %d live one-page functions of %zu bytes; one op = free a random one, allocate, "
           "write and seal a new one; %d ops timed per repetition, each on a freshly filled set\n",
           LIVE, sizeof template_code, CHURN_OPS);
    for (int nthreads = 1; nthreads <= 2; nthreads++) {
        struct bench_samples lib = {0}, base = {0};
        size_t base_fail = churn_series(false, nthreads, reps, &base);
        size_t lib_fail = churn_series(true, nthreads, reps, &lib);
        struct bench_summary bs = bench_summarize(&base), ls = bench_summarize(&lib);
        char name[96];
        const char *plural = nthreads > 1 ? "s" : "";
        snprintf(name, sizeof name, "churn/%d thread%s/mmap-per-function", nthreads, plural);
        bench_line(name, "ns", &bs, NULL, NULL);
        snprintf(name, sizeof name, "churn/%d thread%s/libcodecache (1 GiB cache)", nthreads,
                 plural);
        bench_line(name, "ns", &ls, "mmap-per-function", &bs);
        bench_note("failed allocations or seals in these repetitions: mmap per function %zu, "
                   "libcodecache %zu",
                   base_fail, lib_fail);
        bench_free(&lib);
        bench_free(&base);
    }
    endurance(false, "mmap per function");
    endurance(true, "libcodecache");
    return 0;
}
