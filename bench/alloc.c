/*
 * bench/alloc: what W^X code memory costs.
 *
 *   1. 1,000,000 functions of 64 bytes (and of 1 KiB) allocated, written and sealed: with
 *      libcodecache batching N functions per chunk (one mprotect to seal each chunk; with the
 *      dual-mapped backend, CODE_CACHE_DUAL_MAP, no system call to seal), against
 *      (a) one region and one mprotect at the end (the floor: nothing can be cheaper and still
 *      end W^X), (a') one memory file mapped twice and written whole (the floor of any
 *      dual-mapped design: shared memory), (b) one page and one mprotect per function, (c) one mmap
 * per function, and (d) asmjit's JitAllocator when it was found by configure
 * (bench/asmjit_baseline.cc).
 *   2. code_chunk_alloc alone (a bump inside a chunk), per call; against an inlined bump.
 *   3. Bookkeeping bytes per chunk (code_cache_get_stats().meta_bytes).
 *
 * `alloc` measures 2, 3 and 1 with 64-byte functions, except (c); `alloc 1024` measures 1 with
 * 1 KiB functions, except (c); `alloc mmap` measures (c) for both sizes. Three runs rather than
 * one because the variants with a page per function cost 3 to 10 s per repetition each on these
 * machines, and each run must finish within two minutes. Every run measures the floor it compares
 * against. Churn (free and reallocate with 100,000 chunks alive) is bench/churn.
 *
 * Every function written is a real one (mov eax, index; ret; padded with int3), and the last one
 * is called after sealing, so a variant that did not actually produce runnable code fails here
 * rather than looking fast.
 *
 * Times are the thread's CPU time (user and system: the page faults and protection changes are
 * in it), so that the time the shared machine gives to other processes is not counted.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "code_cache.h"
#include "bench.h"
#include "asmjit_baseline.h"

#define PAGE      ((size_t)4096)
#define MIB       ((size_t)1 << 20)
#define FUNCTIONS 1000000

/* The code every variant writes (bench_code_template). */
static unsigned char template_code[4096];

static inline void write_function(void *at, size_t size, uint32_t index)
{
    bench_write_function(at, template_code, size, index);
}

static void check_function(const void *rx, uint32_t index, const char *who)
{
    bench_check_function(rx, index, who);
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

/* Writable memory with its page faults taken at once (MAP_POPULATE), the cheapest way there is,
 * just as the library commits a chunk with MADV_POPULATE_WRITE: the baselines get every
 * advantage the library has. */
static void *map_rw(size_t len)
{
    void *p =
        mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED)
        die("alloc: mmap");
    return p;
}

/* ---- 1. A million functions ---- */

/* (a) One region, written whole, one mprotect at the end. */
static double floor_one_region(size_t fsize)
{
    size_t len = (size_t)FUNCTIONS * fsize;
    double t0 = bench_thread_cpu_ns();
    unsigned char *p = map_rw(len);
    for (uint32_t i = 0; i < FUNCTIONS; i++)
        write_function(p + (size_t)i * fsize, fsize, i);
    if (mprotect(p, len, PROT_READ | PROT_EXEC) != 0)
        die("alloc: mprotect");
    double t = bench_thread_cpu_ns() - t0;
    check_function(p + (size_t)(FUNCTIONS - 1) * fsize, FUNCTIONS - 1, "one region");
    munmap(p, len);
    return t;
}

/* (a') The floor of a dual mapping: one memory file mapped twice, written whole through one view,
 * run at the other, no allocator. Its pages are shared memory (tmpfs), which costs more to fault
 * in than anonymous memory: what every dual-mapped design pays, whoever allocates in it. Without
 * MAP_POPULATE, which made it slower here (47 against 43 ns per 64-byte function, 2026-12-03). */
static double floor_two_views(size_t fsize)
{
    size_t len = (size_t)FUNCTIONS * fsize;
    double t0 = bench_thread_cpu_ns();
    int fd = memfd_create("floor", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)len) != 0)
        die("alloc: memfd (two views)");
    unsigned char *rw = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    unsigned char *rx = mmap(NULL, len, PROT_READ | PROT_EXEC, MAP_SHARED, fd, 0);
    if (rw == MAP_FAILED || rx == MAP_FAILED)
        die("alloc: mmap (two views)");
    for (uint32_t i = 0; i < FUNCTIONS; i++)
        write_function(rw + (size_t)i * fsize, fsize, i);
    double t = bench_thread_cpu_ns() - t0;
    check_function(rx + (size_t)(FUNCTIONS - 1) * fsize, FUNCTIONS - 1, "two views");
    munmap(rw, len);
    munmap(rx, len);
    close(fd);
    return t;
}

/* (b) One page per function, made executable as soon as it is written. */
static double page_per_function(size_t fsize)
{
    size_t len = (size_t)FUNCTIONS * PAGE;
    double t0 = bench_thread_cpu_ns();
    unsigned char *p = map_rw(len);
    for (uint32_t i = 0; i < FUNCTIONS; i++) {
        unsigned char *f = p + (size_t)i * PAGE;
        write_function(f, fsize, i);
        if (mprotect(f, PAGE, PROT_READ | PROT_EXEC) != 0)
            die("alloc: mprotect (page per function)");
    }
    double t = bench_thread_cpu_ns() - t0;
    check_function(p + (size_t)(FUNCTIONS - 1) * PAGE, FUNCTIONS - 1, "page per function");
    munmap(p, len);
    return t;
}

static int compare_pointers(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
    return (x > y) - (x < y);
}

/* (c) One mmap per function (and its mprotect). */
static double mmap_per_function(size_t fsize)
{
    void **maps = malloc(FUNCTIONS * sizeof *maps);
    if (maps == NULL)
        die("alloc: malloc");
    size_t len = (fsize + PAGE - 1) / PAGE * PAGE;
    double t0 = bench_thread_cpu_ns();
    for (uint32_t i = 0; i < FUNCTIONS; i++) {
        void *f = map_rw(len);
        write_function(f, fsize, i);
        if (mprotect(f, len, PROT_READ | PROT_EXEC) != 0)
            die("alloc: mprotect (mmap per function)");
        maps[i] = f;
    }
    double t = bench_thread_cpu_ns() - t0;
    check_function(maps[FUNCTIONS - 1], FUNCTIONS - 1, "mmap per function");
    /* Untimed clean-up, sorted so that neighbouring mappings go in one munmap. */
    qsort(maps, FUNCTIONS, sizeof *maps, compare_pointers);
    for (uint32_t i = 0; i < FUNCTIONS;) {
        uint32_t j = i + 1;
        while (j < FUNCTIONS && (char *)maps[j] == (char *)maps[j - 1] + len)
            j++;
        munmap(maps[i], (size_t)(j - i) * len);
        i = j;
    }
    free(maps);
    return t;
}

/* libcodecache, per_chunk functions per chunk, one seal per chunk; flags picks the backend. */
static double cache_batched(size_t fsize, size_t per_chunk, unsigned flags, int *failed)
{
    size_t chunk_bytes = (per_chunk * fsize + PAGE - 1) / PAGE * PAGE;
    size_t chunks = (FUNCTIONS + per_chunk - 1) / per_chunk;
    struct code_cache_options o = {.size = chunks * chunk_bytes, .flags = flags};
    const void *last = NULL;
    double t0 = bench_thread_cpu_ns();
    struct code_cache *cache = code_cache_create(&o);
    if (cache == NULL) {
        *failed = errno;
        return 0;
    }
    uint32_t i = 0;
    while (i < FUNCTIONS) {
        struct code_chunk *chunk = code_cache_alloc(cache, per_chunk * fsize);
        if (chunk == NULL) {
            *failed = errno;
            code_cache_destroy(cache);
            return 0;
        }
        for (size_t k = 0; k < per_chunk && i < FUNCTIONS; k++, i++) {
            struct code_span s = code_chunk_alloc(chunk, fsize, 16);
            if (s.rw == NULL) {
                *failed = errno;
                code_cache_destroy(cache);
                return 0;
            }
            write_function(s.rw, fsize, i);
            last = s.rx;
        }
        if (code_chunk_seal(chunk) != 0) {
            *failed = errno;
            code_cache_destroy(cache);
            return 0;
        }
    }
    double t = bench_thread_cpu_ns() - t0;
    check_function(last, FUNCTIONS - 1, "libcodecache");
    code_cache_destroy(cache);
    return t;
}

static void million_functions(size_t fsize, int reps)
{
    static const size_t batches[] = {1, 16, 256, 4096};
    enum { NB = sizeof batches / sizeof batches[0] };
    struct bench_samples floor = {0}, floor2 = {0}, page = {0}, lib[NB] = {{0}}, dual[NB] = {{0}};
    struct bench_samples jit = {0}, jit_dual = {0};
    int failed[NB] = {0}, dual_failed[NB] = {0};
    bench_code_template(template_code, fsize);
    /* Interleaved: each repetition measures every variant once, so slow phases of a noisy
     * machine spread over all of them instead of landing on one. */
    for (int rep = 0; rep < reps; rep++) {
        bench_add(&floor, floor_one_region(fsize));
        bench_add(&floor2, floor_two_views(fsize));
        for (size_t b = 0; b < NB; b++) {
            int err = 0;
            double t = cache_batched(fsize, batches[b], 0, &err);
            if (err != 0)
                failed[b] = err;
            else
                bench_add(&lib[b], t);
            err = 0;
            t = cache_batched(fsize, batches[b], CODE_CACHE_DUAL_MAP, &err);
            if (err != 0)
                dual_failed[b] = err;
            else
                bench_add(&dual[b], t);
        }
        bench_add(&page, page_per_function(fsize));
#ifdef BENCH_HAVE_ASMJIT
        double t;
        if (bench_asmjit_alloc(FUNCTIONS, fsize, template_code, false, &t) == 0)
            bench_add(&jit, t);
        if (bench_asmjit_alloc(FUNCTIONS, fsize, template_code, true, &t) == 0)
            bench_add(&jit_dual, t);
#endif
    }
    struct bench_summary fs = bench_summarize(&floor), f2s = bench_summarize(&floor2),
                         ps = bench_summarize(&page), js = bench_summarize(&jit),
                         jds = bench_summarize(&jit_dual);
    char name[96];
    printf("alloc: %d functions of %zu bytes, allocated, written and sealed\n", FUNCTIONS, fsize);
    snprintf(name, sizeof name, "alloc/%zuB/one-region-one-mprotect", fsize);
    bench_line(name, "ns", &fs, NULL, NULL);
    snprintf(name, sizeof name, "alloc/%zuB/two-views (memfd, no allocator)", fsize);
    bench_line(name, "ns", &f2s, "one-region-one-mprotect", &fs);
    for (size_t b = 0; b < NB; b++) {
        struct bench_summary ls = bench_summarize(&lib[b]);
        snprintf(name, sizeof name, "alloc/%zuB/libcodecache %zu per chunk", fsize, batches[b]);
        bench_line(name, "ns", &ls, "one-region-one-mprotect", &fs);
        bench_line(name, "ns", &ls, "page-per-function", &ps);
        if (js.n > 0)
            bench_line(name, "ns", &ls, "asmjit-JitAllocator", &js);
        if (failed[b] != 0)
            bench_note("libcodecache %zu per chunk failed: %s", batches[b], strerror(failed[b]));
        bench_free(&lib[b]);
    }
    for (size_t b = 0; b < NB; b++) {
        struct bench_summary ds = bench_summarize(&dual[b]);
        snprintf(name, sizeof name, "alloc/%zuB/libcodecache dual %zu per chunk", fsize,
                 batches[b]);
        bench_line(name, "ns", &ds, "one-region-one-mprotect", &fs);
        bench_line(name, "ns", &ds, "two-views", &f2s);
        if (js.n > 0)
            bench_line(name, "ns", &ds, "asmjit-JitAllocator", &js);
        if (jds.n > 0)
            bench_line(name, "ns", &ds, "asmjit-JitAllocator-dual", &jds);
        if (dual_failed[b] != 0)
            bench_note("libcodecache dual %zu per chunk failed: %s", batches[b],
                       strerror(dual_failed[b]));
        bench_free(&dual[b]);
    }
    snprintf(name, sizeof name, "alloc/%zuB/page-per-function (mprotect each)", fsize);
    bench_line(name, "ns", &ps, "one-region-one-mprotect", &fs);
#ifdef BENCH_HAVE_ASMJIT
    snprintf(name, sizeof name, "alloc/%zuB/asmjit-JitAllocator (rwx, no seal)", fsize);
    bench_line(name, "ns", &js, "one-region-one-mprotect", &fs);
    snprintf(name, sizeof name, "alloc/%zuB/asmjit-JitAllocator dual-mapped", fsize);
    bench_line(name, "ns", &jds, "one-region-one-mprotect", &fs);
    bench_note("asmjit %s maps its blocks rwx by default (no W^X at all); its dual-mapped mode "
               "keeps W^X by writing through a second view",
               bench_asmjit_version());
#else
    bench_note("asmjit's JitAllocator not measured: configure did not find libasmjit-dev");
#endif
    bench_free(&floor);
    bench_free(&floor2);
    bench_free(&page);
    bench_free(&jit);
    bench_free(&jit_dual);
}

/* (c), for both sizes, with the floor of each measured in the same run. */
static void mmap_per_function_series(int reps)
{
    static const size_t sizes[] = {64, 1024};
    for (size_t k = 0; k < 2; k++) {
        size_t fsize = sizes[k];
        struct bench_samples floor = {0}, map = {0};
        bench_code_template(template_code, fsize);
        for (int rep = 0; rep < reps; rep++) {
            bench_add(&floor, floor_one_region(fsize));
            bench_add(&map, mmap_per_function(fsize));
        }
        struct bench_summary fs = bench_summarize(&floor), ms = bench_summarize(&map);
        char name[96];
        printf("alloc: %d functions of %zu bytes, one mmap (and one mprotect) each\n", FUNCTIONS,
               fsize);
        snprintf(name, sizeof name, "alloc/%zuB/one-region-one-mprotect", fsize);
        bench_line(name, "ns", &fs, NULL, NULL);
        snprintf(name, sizeof name, "alloc/%zuB/mmap-per-function", fsize);
        bench_line(name, "ns", &ms, "one-region-one-mprotect", &fs);
        bench_free(&floor);
        bench_free(&map);
    }
}

/* ---- 2. code_chunk_alloc alone ---- */

#define BUMPS 1000000

struct bump {
    unsigned char *base;
    size_t used, size;
};

static inline void *bump_inline(struct bump *b, size_t size, size_t align)
{
    size_t off = (b->used + align - 1) & ~(align - 1);
    if (off > b->size || size > b->size - off)
        return NULL;
    b->used = off + size;
    return b->base + off;
}

static void chunk_alloc_alone(int reps)
{
    struct code_cache_options o = {.size = 128 * MIB};
    struct code_cache *cache = code_cache_create(&o);
    if (cache == NULL)
        die("alloc: code_cache_create (bump)");
    struct bench_samples lib = {0}, inl = {0};
    for (int rep = 0; rep < reps; rep++) {
        struct code_chunk *chunk = code_cache_alloc(cache, (size_t)BUMPS * 64);
        if (chunk == NULL)
            die("alloc: code_cache_alloc (bump)");
        double t0 = bench_thread_cpu_ns();
        for (int i = 0; i < BUMPS; i++) {
            struct code_span s = code_chunk_alloc(chunk, 64, 16);
            BENCH_KEEP(s.rw);
        }
        bench_add(&lib, (bench_thread_cpu_ns() - t0) / BUMPS);
        code_chunk_free(chunk);

        struct bump b = {.base = (unsigned char *)&b, .size = (size_t)BUMPS * 64};
        t0 = bench_thread_cpu_ns();
        for (int i = 0; i < BUMPS; i++) {
            void *p = bump_inline(&b, 64, 16);
            BENCH_KEEP(p);
        }
        bench_add(&inl, (bench_thread_cpu_ns() - t0) / BUMPS);
    }
    struct bench_summary ls = bench_summarize(&lib), is = bench_summarize(&inl);
    printf("alloc: code_chunk_alloc(chunk, 64, 16) alone, %d calls per repetition\n", BUMPS);
    bench_line("alloc/bump/inlined bump pointer", "ns", &is, NULL, NULL);
    bench_line("alloc/bump/code_chunk_alloc", "ns", &ls, "inlined-bump", &is);
    bench_free(&lib);
    bench_free(&inl);
    code_cache_destroy(cache);
}

/* ---- 3. Bookkeeping per chunk ---- */

#define META_CHUNKS 100000

static void meta_per_chunk(int reps)
{
    struct bench_samples per = {0};
    for (int rep = 0; rep < reps; rep++) {
        struct code_cache_options o = {.size = (size_t)META_CHUNKS * PAGE};
        struct code_cache *cache = code_cache_create(&o);
        if (cache == NULL)
            die("alloc: code_cache_create (meta)");
        struct code_cache_stats before, after;
        code_cache_get_stats(cache, &before);
        for (int i = 0; i < META_CHUNKS; i++) {
            struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
            if (chunk == NULL)
                die("alloc: code_cache_alloc (meta)");
            code_chunk_alloc(chunk, 64, 16);
            if (code_chunk_seal(chunk) != 0)
                die("alloc: code_chunk_seal (meta)");
        }
        code_cache_get_stats(cache, &after);
        bench_add(&per, (double)(after.meta_bytes - before.meta_bytes) / META_CHUNKS);
        code_cache_destroy(cache);
    }
    struct bench_summary s = bench_summarize(&per);
    struct bench_summary target = {.median = 64, .min = 64, .max = 64, .n = 1};
    printf("alloc: bookkeeping per sealed one-page chunk, %d chunks, from meta_bytes\n",
           META_CHUNKS);
    bench_line("alloc/meta/bytes per chunk", "B", &s, "target-64B", &target);
    bench_free(&per);
}

int main(int argc, char **argv)
{
    bool mmap_series = argc > 1 && strcmp(argv[1], "mmap") == 0;
    size_t fsize = argc > 1 && !mmap_series ? (size_t)strtoul(argv[1], NULL, 10) : 64;
    if (argc > 2 || fsize < 6 || fsize > PAGE) {
        fprintf(stderr, "usage: alloc [SIZE | mmap]\n"
                        "  alloc        code_chunk_alloc alone, bookkeeping, 64-byte functions\n"
                        "  alloc SIZE   functions of SIZE bytes (6..4096)\n"
                        "  alloc mmap   one mmap per function, 64 and 1024 bytes\n");
        return 2;
    }
    bench_header("bench/alloc: allocate, write and seal code");
    int reps = bench_reps(5);
    if (mmap_series) {
        mmap_per_function_series(reps);
        return 0;
    }
    if (argc == 1) {
        chunk_alloc_alone(reps);
        meta_per_chunk(reps);
    }
    million_functions(fsize, reps);
    return 0;
}
