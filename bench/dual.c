/*
 * bench/dual: the dual-mapped backend (CODE_CACHE_DUAL_MAP) for one function at a time, against
 * the mprotect backend and asmjit's JitAllocator in its two modes (rwx, its default, which keeps
 * no W^X at all; and dual-mapped, which does), at 64 B, 256 B, 1 KiB and 4 KiB per function. The
 * dual backend is measured twice: as it is, and with CODE_CACHE_DUAL_HARDEN (pages of the RW view
 * read-only while full of sealed code). Beside them, the floor: no allocator at all, the function
 * written into a slot of an rwx mapping and run there, the slot freed last taken again. Writing
 * code and running it at once costs about 60 ns at 64 B on this VM whoever allocated it (the
 * processor fetches instructions from a line it just wrote), so each allocator's time above the
 * floor, in the same repetition, is printed too: the part an allocator can make faster.
 *
 *   1. 100,000 functions are made live (allocated, written, sealed, called once), and what they
 *      cost in memory is read: Rss and Pss of the process (Pss counts a page mapped in both views
 *      once, Rss twice), the pages of the cache's memory file (fstat of /proc/self/fd), the
 *      library's stats.committed, meta_bytes and meta_resident, asmjit's own statistics. Then
 *      once more after each of them was replaced once (freed, a new one made), oldest first.
 *      Each implementation is measured in a process of its own, a new one for every repetition
 *      (impl_turn): the implementations take turns, none runs amid the others' memory.
 *   2. With those 100,000 alive, one operation frees the oldest function and allocates, writes,
 *      seals and calls a new one (a FIFO); and, on the side, the tight loop with nothing else
 *      alive: allocate, write, seal, call, free. Time on the thread's CPU clock, per function;
 *      system calls per function (the library's stats.system_calls, the calls interposed in this
 *      program, and the kernel's count on perf tracepoints in a separate, untimed run). The
 *      caches are large enough never to be exhausted: bench/onefn shows what happens after.
 *   3. code_chunk_patch: an 8-byte patch (one atomic store) and a 16-byte one, on sealed code of
 *      a dual-mapped cache (and of one with CODE_CACHE_DUAL_HARDEN, its page full of sealed code
 *      and so read-only in the RW view), against a plain store into writable memory (what an rwx
 * JIT does) and against making a page writable and executable again around the store (what a JIT
 * with one view must do: two mprotect calls).
 *
 * The batch of 1,000,000 functions of 64 B, 256 per chunk, on the dual backend is in bench/alloc.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "code_cache.h"
#include "bench.h"
#include "count.h"
#include "asmjit_baseline.h"

#define PAGE      ((size_t)4096)
#define MIB       ((size_t)1 << 20)
#define LIVE      100000
#define OPS_TIMED 10000 /* per repetition */
/* The floor's slots: LIVE, and the tight loop's one. */
#define FLOOR_SLOTS (LIVE + 1)

static unsigned char template_code[4096];

enum impl { DUAL, DUAL_HARDEN, MPROTECT, JIT_RWX, JIT_DUAL, FLOOR, NIMPL };
static const char *const impl_name[NIMPL] = {"libcodecache dual",     "libcodecache dual+HARDEN",
                                             "libcodecache mprotect", "asmjit rwx",
                                             "asmjit dual-mapped",    "floor (no allocator)"};

struct fn {
    void *handle; /* struct code_chunk *, or the rx address for asmjit */
};

struct impl_state {
    enum impl impl;
    bool available;
    size_t size;
    struct code_cache *cache;
    struct bench_jit *jit;
    struct fn *ring; /* LIVE functions, oldest at head */
    /* FLOOR: an rwx mapping of FLOOR_SLOTS slots, the next never used, the freed ones (a stack:
     * the last freed is taken first). */
    unsigned char *slots;
    size_t slots_used, nfreed;
    void **freed;
    size_t head;
    uint32_t serial;
    /* Memory after filling, and after the timed churn: per live function. */
    struct bench_mem mem0;
    uint64_t memfd0, meta_res0;
    double rss[2], pss[2], file[2], committed[2], meta[2], meta_res[2];
    /* Time per function: FIFO with LIVE alive, tight loop alone. */
    struct bench_samples fifo, tight;
    /* System calls per function, [0] FIFO, [1] tight. */
    double stats_sys[2], calls_sys[2], tp_sys[2];
    uint64_t ops[2];
    uint64_t calls_total[2];
    size_t stats_total[2];
    /* The library's statistics at the end of a turn (the parent has no cache: has_cache). */
    bool has_cache;
    struct code_cache_stats end;
};

static void die(const char *what)
{
    perror(what);
    exit(2);
}

/* Allocations an implementation makes in one_size: the fill, the untimed churn, the timed
 * repetitions (FIFO and tight) and the counting runs. */
static size_t allocations(int reps)
{
    return 2 * (size_t)LIVE + ((size_t)reps + 1) * 2 * OPS_TIMED;
}

/* Large enough that none of them is ever served from freed space (bench/onefn measures that
 * regime): at least 64 MiB, a power of two. */
static size_t cache_size_for(size_t bytes)
{
    size_t size = 64 * MIB;
    while (size < bytes + bytes / 4)
        size *= 2;
    return size;
}

static void impl_open(struct impl_state *s, enum impl impl, size_t size, int reps)
{
    *s = (struct impl_state){.impl = impl, .size = size, .available = true};
    s->ring = calloc(LIVE, sizeof *s->ring);
    if (s->ring == NULL)
        die("dual: calloc");
    if (impl == DUAL || impl == DUAL_HARDEN || impl == MPROTECT) {
        size_t chunk = impl != MPROTECT ? (size + 63) / 64 * 64 : (size + PAGE - 1) / PAGE * PAGE;
        unsigned flags = impl == DUAL          ? CODE_CACHE_DUAL_MAP
                         : impl == DUAL_HARDEN ? CODE_CACHE_DUAL_MAP | CODE_CACHE_DUAL_HARDEN
                                               : 0;
        struct code_cache_options o = {.size = cache_size_for(allocations(reps) * chunk),
                                       .flags = flags};
        s->cache = code_cache_create(&o);
        if (s->cache == NULL)
            die("dual: code_cache_create");
        return;
    }
    if (impl == FLOOR) {
        s->slots = mmap(NULL, FLOOR_SLOTS * size, PROT_READ | PROT_WRITE | PROT_EXEC,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        s->freed = calloc(FLOOR_SLOTS, sizeof *s->freed);
        if (s->slots == MAP_FAILED || s->freed == NULL)
            die("dual: mmap (floor)");
        return;
    }
#ifdef BENCH_HAVE_ASMJIT
    s->jit = bench_jit_new(impl == JIT_DUAL);
    if (s->jit == NULL)
        die("dual: asmjit JitAllocator");
#else
    s->available = false;
#endif
}

/* Allocates, writes, seals and calls one function. */
static struct fn fn_new(struct impl_state *s)
{
    uint32_t index = s->serial++;
    struct fn f = {NULL};
    void *rx = NULL, *rw = NULL;
    if (s->cache != NULL) {
        struct code_chunk *chunk = code_cache_alloc(s->cache, s->size);
        if (chunk == NULL)
            die("dual: code_cache_alloc");
        struct code_span span = code_chunk_alloc(chunk, s->size, 16);
        if (span.rw == NULL)
            die("dual: code_chunk_alloc");
        bench_write_function(span.rw, template_code, s->size, index);
        if (code_chunk_seal(chunk) != 0)
            die("dual: code_chunk_seal");
        f.handle = chunk;
        rx = span.rx;
    } else if (s->impl == FLOOR) {
        /* What any allocator must do at least: write the function and run it. The slot freed
         * last is taken again (the FIFO's oldest, the tight loop's only one), else a new one. */
        if (s->nfreed > 0)
            rx = s->freed[--s->nfreed];
        else if (s->slots_used < FLOOR_SLOTS)
            rx = s->slots + s->slots_used++ * s->size;
        else
            die("dual: the floor's slots ran out");
        bench_write_function(rx, template_code, s->size, index);
        __builtin___clear_cache((char *)rx, (char *)rx + s->size);
        f.handle = rx;
    } else {
#ifdef BENCH_HAVE_ASMJIT
        if (bench_jit_alloc(s->jit, s->size, &rx, &rw) != 0) {
            errno = ENOMEM;
            die("dual: asmjit alloc");
        }
        bench_write_function(rw, template_code, s->size, index);
        f.handle = rx;
#endif
    }
    bench_check_function(rx, index, impl_name[s->impl]);
    return f;
}

static void fn_free(struct impl_state *s, struct fn f)
{
    if (s->cache != NULL)
        code_chunk_free(f.handle);
    else if (s->impl == FLOOR)
        s->freed[s->nfreed++] = f.handle;
#ifdef BENCH_HAVE_ASMJIT
    else if (bench_jit_release(s->jit, f.handle) != 0)
        die("dual: asmjit release");
#endif
}

static void mem_read(struct impl_state *s, int when)
{
    struct bench_mem m = bench_mem_read();
    s->rss[when] = ((double)m.rss - (double)s->mem0.rss) / LIVE;
    s->pss[when] = ((double)m.pss - (double)s->mem0.pss) / LIVE;
    s->file[when] = s->impl == DUAL || s->impl == DUAL_HARDEN
                        ? ((double)bench_memfd_bytes("/memfd:codecache") - (double)s->memfd0) / LIVE
                        : 0;
    if (s->cache != NULL) {
        struct code_cache_stats st;
        code_cache_get_stats(s->cache, &st);
        s->committed[when] = (double)st.committed / LIVE;
        s->meta[when] = (double)st.meta_bytes / LIVE;
        /* The arena's whole resident memory: an arena reused from the library's pool keeps the
         * pages of the cache that had it before, so a difference would hide them. */
        s->meta_res[when] = (double)st.meta_resident / LIVE;
    }
#ifdef BENCH_HAVE_ASMJIT
    else if (s->jit != NULL) {
        size_t used, reserved, overhead;
        bench_jit_statistics(s->jit, &used, &reserved, &overhead);
        s->committed[when] = (double)reserved / LIVE;
        s->meta[when] = (double)overhead / LIVE;
    }
#endif
}

static void impl_fill(struct impl_state *s)
{
    if (!s->available)
        return;
    /* The ring is this program's, not the implementation's: its pages are made resident before
     * the baseline is read (calloc leaves them untouched until the fill wrote 8 bytes per
     * function into them, which used to count as memory per live function, for all five). */
    for (size_t i = 0; i < LIVE; i++)
        ((volatile struct fn *)s->ring)[i].handle = NULL; /* volatile: calloc'd zeros, kept */
    s->mem0 = bench_mem_read();
    s->memfd0 = bench_memfd_bytes("/memfd:codecache");
    if (s->cache != NULL) {
        struct code_cache_stats st;
        code_cache_get_stats(s->cache, &st);
        s->meta_res0 = st.meta_resident;
    }
    for (size_t i = 0; i < LIVE; i++)
        s->ring[i] = fn_new(s);
    mem_read(s, 0);
    /* Every live function replaced once, oldest first; memory read again while the others
     * are idle, so that the difference is this implementation's alone. */
    for (size_t i = 0; i < LIVE; i++) {
        fn_free(s, s->ring[i]);
        s->ring[i] = fn_new(s);
    }
    mem_read(s, 1);
}

static size_t impl_syscalls(const struct impl_state *s)
{
    if (s->cache == NULL)
        return 0;
    struct code_cache_stats st;
    code_cache_get_stats(s->cache, &st);
    return st.system_calls;
}

/* ops operations of one kind: 0 FIFO (free the oldest, make a new one), 1 tight (make one, free
 * it). Returns the CPU time; adds the interposed and the library's counts. */
static double impl_ops(struct impl_state *s, int kind, size_t ops)
{
    struct bench_calls c0, c1;
    size_t sys0 = impl_syscalls(s);
    bench_calls_get(&c0);
    double t0 = bench_thread_cpu_ns();
    if (kind == 0) {
        for (size_t i = 0; i < ops; i++) {
            fn_free(s, s->ring[s->head]);
            s->ring[s->head] = fn_new(s);
            s->head = s->head + 1 == LIVE ? 0 : s->head + 1;
        }
    } else {
        for (size_t i = 0; i < ops; i++)
            fn_free(s, fn_new(s));
    }
    double t = bench_thread_cpu_ns() - t0;
    bench_calls_get(&c1);
    struct bench_calls d = bench_calls_diff(&c1, &c0);
    s->calls_total[kind] += bench_calls_syscalls(&d);
    s->stats_total[kind] += impl_syscalls(s) - sys0;
    s->ops[kind] += ops;
    return t;
}

static void impl_count(struct impl_state *s, int kind)
{
    struct bench_tp tp;
    bench_tp_open(&tp);
    if (tp.futex < 0) {
        s->tp_sys[kind] = -1;
        return;
    }
    struct bench_tp_counts a = bench_tp_read(&tp);
    impl_ops(s, kind, OPS_TIMED);
    struct bench_tp_counts b = bench_tp_read(&tp);
    bench_tp_close(&tp);
    struct bench_tp_counts d = bench_tp_diff(&b, &a);
    s->tp_sys[kind] = (double)d.syscalls / OPS_TIMED;
}

static void impl_close(struct impl_state *s)
{
    if (s->ring != NULL && s->available)
        for (size_t i = 0; i < LIVE; i++)
            if (s->ring[i].handle != NULL)
                fn_free(s, s->ring[i]);
    free(s->ring);
    if (s->slots != NULL) {
        munmap(s->slots, FLOOR_SLOTS * s->size);
        free(s->freed);
    }
    code_cache_destroy(s->cache);
#ifdef BENCH_HAVE_ASMJIT
    if (s->jit != NULL)
        bench_jit_delete(s->jit);
#endif
    bench_free(&s->fifo);
    bench_free(&s->tight);
}

/* What one turn of one implementation measured, in memory shared with the parent. */
struct impl_turn {
    bool available, has_cache;
    double fifo, tight;
    double rss[2], pss[2], file[2], committed[2], meta[2], meta_res[2], tp_sys[2];
    uint64_t ops[2], calls_total[2];
    size_t stats_total[2];
    struct code_cache_stats end;
};

/* One turn of one implementation, in a child process of its own: filled with LIVE functions
 * (memory read), each replaced once, then one timed FIFO repetition and one of the tight loop;
 * the first turn also counts system calls on the kernel's tracepoints. A JIT's process has one
 * code allocator: measured in one process, each implementation ran amid the other four's 400 MB
 * of live functions, and whichever reused memory it had just touched (the thread caches'
 * quarantine) found it evicted by the others' turns. 1 KiB FIFO, dual against asmjit rwx: 1.4x
 * to 1.8x slower that way, level in a process of its own (bench/README.md, seventh session). */
static void impl_turn(enum impl impl, size_t size, int reps, bool first, struct impl_turn *out)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        die("dual: fork");
    if (pid == 0) {
        struct impl_state s;
        impl_open(&s, impl, size, reps);
        *out = (struct impl_turn){.available = s.available, .has_cache = s.cache != NULL};
        if (s.available) {
            impl_fill(&s);
            out->fifo = impl_ops(&s, 0, OPS_TIMED) / OPS_TIMED;
            out->tight = impl_ops(&s, 1, OPS_TIMED) / OPS_TIMED;
            for (int k = 0; k < 2; k++) {
                out->rss[k] = s.rss[k], out->pss[k] = s.pss[k], out->file[k] = s.file[k];
                out->committed[k] = s.committed[k], out->meta[k] = s.meta[k];
                out->meta_res[k] = s.meta_res[k];
                out->ops[k] = s.ops[k], out->calls_total[k] = s.calls_total[k];
                out->stats_total[k] = s.stats_total[k];
            }
            if (first) {
                impl_count(&s, 0);
                impl_count(&s, 1);
                out->tp_sys[0] = s.tp_sys[0], out->tp_sys[1] = s.tp_sys[1];
            }
            if (s.cache != NULL)
                code_cache_get_stats(s.cache, &out->end);
        }
        impl_close(&s);
        fflush(NULL);
        _exit(0);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "dual: the turn of %s failed\n", impl_name[impl]);
        exit(2);
    }
}

static void one_size(size_t size, int reps)
{
    struct impl_state st[NIMPL];
    bench_code_template(template_code, size);
    struct impl_turn *turn =
        mmap(NULL, sizeof *turn, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (turn == MAP_FAILED)
        die("dual: mmap (turns)");
    for (int i = 0; i < NIMPL; i++)
        st[i] = (struct impl_state){.impl = (enum impl)i, .size = size, .available = true};
    /* The implementations take turns, so that a noisy phase of this VM falls on all alike. */
    for (int rep = 0; rep < reps; rep++)
        for (int i = 0; i < NIMPL; i++) {
            struct impl_state *s = &st[i];
            if (!s->available)
                continue;
            impl_turn((enum impl)i, size, reps, rep == 0, turn);
            s->available = turn->available;
            if (!s->available)
                continue;
            s->has_cache = turn->has_cache;
            s->end = turn->end;
            bench_add(&s->fifo, turn->fifo);
            bench_add(&s->tight, turn->tight);
            for (int k = 0; k < 2; k++) {
                s->ops[k] += turn->ops[k];
                s->calls_total[k] += turn->calls_total[k];
                s->stats_total[k] += turn->stats_total[k];
                if (rep > 0)
                    continue;
                s->rss[k] = turn->rss[k], s->pss[k] = turn->pss[k], s->file[k] = turn->file[k];
                s->committed[k] = turn->committed[k], s->meta[k] = turn->meta[k];
                s->meta_res[k] = turn->meta_res[k], s->tp_sys[k] = turn->tp_sys[k];
            }
        }
    munmap(turn, sizeof *turn);
    for (int i = 0; i < NIMPL; i++) {
        if (!st[i].available)
            continue;
        for (int kind = 0; kind < 2; kind++) {
            st[i].calls_sys[kind] = (double)st[i].calls_total[kind] / (double)st[i].ops[kind];
            st[i].stats_sys[kind] = (double)st[i].stats_total[kind] / (double)st[i].ops[kind];
        }
    }

    printf("dual: functions of %zu B, one per chunk (allocated, written, sealed, called, freed); "
           "CPU time per function, %d per repetition\n",
           size, OPS_TIMED);
    static const char *const kind_name[2] = {"100k live, FIFO", "tight loop"};
    for (int kind = 0; kind < 2; kind++)
        for (int i = 0; i < NIMPL; i++) {
            char name[128];
            snprintf(name, sizeof name, "dual/%zuB/%s/%s", size, kind_name[kind], impl_name[i]);
            struct bench_summary s = bench_summarize(kind == 0 ? &st[i].fifo : &st[i].tight);
            if (i == DUAL) {
                bench_line(name, "ns", &s, NULL, NULL);
                continue;
            }
            struct bench_summary d = bench_summarize(kind == 0 ? &st[DUAL].fifo : &st[DUAL].tight);
            /* The ratio printed is the baseline over dual: how many times faster dual is. */
            bench_line(name, "ns", &s, "dual", &d);
        }
    /* What each allocator adds to writing and running the function, the floor's turn subtracted
     * from the same repetition's: the part an allocator can make faster. */
    if (st[FLOOR].available) {
        printf("dual: time per function above the floor (the allocator's own share: its turn "
               "minus the floor's in the same repetition)\n");
        for (int kind = 0; kind < 2; kind++) {
            const struct bench_samples *f = kind == 0 ? &st[FLOOR].fifo : &st[FLOOR].tight;
            struct bench_samples above[NIMPL] = {{0}};
            for (int i = 0; i < FLOOR; i++) {
                const struct bench_samples *t = kind == 0 ? &st[i].fifo : &st[i].tight;
                for (size_t r = 0; st[i].available && r < t->n && r < f->n; r++)
                    bench_add(&above[i], t->v[r] - f->v[r]);
            }
            struct bench_summary d = bench_summarize(&above[DUAL]);
            for (int i = 0; i < FLOOR; i++) {
                if (!st[i].available)
                    continue;
                char name[128];
                snprintf(name, sizeof name, "above floor/%zuB/%s/%s", size, kind_name[kind],
                         impl_name[i]);
                struct bench_summary a = bench_summarize(&above[i]);
                bench_line(name, "ns", &a, i == DUAL ? NULL : "dual", i == DUAL ? NULL : &d);
                bench_free(&above[i]);
            }
        }
    }
    printf("dual: system calls per function (stats / interposed / kernel tracepoints)\n");
    for (int i = 0; i < NIMPL; i++) {
        if (!st[i].available)
            continue;
        printf("  syscalls/%zuB/%-22s FIFO: %s%.4f / %.4f / ", size, impl_name[i],
               st[i].has_cache ? "" : "(n/a) ", st[i].stats_sys[0], st[i].calls_sys[0]);
        if (st[i].tp_sys[0] >= 0)
            printf("%.4f", st[i].tp_sys[0]);
        else
            printf("-");
        printf("   tight: %.4f / %.4f / ", st[i].stats_sys[1], st[i].calls_sys[1]);
        if (st[i].tp_sys[1] >= 0)
            printf("%.4f\n", st[i].tp_sys[1]);
        else
            printf("-\n");
    }
    printf("dual: memory per live function of %zu B with %d alive, in bytes: after filling | "
           "after replacing each once\n",
           size, LIVE);
    for (int i = 0; i < NIMPL; i++) {
        const struct impl_state *s = &st[i];
        if (!s->available)
            continue;
        printf("  memory/%zuB/%-22s", size, impl_name[i]);
        for (int w = 0; w < 2; w++) {
            printf(" %s Pss %.0f (%.3gx code), Rss %.0f", w ? "|" : "", s->pss[w],
                   s->pss[w] / (double)size, s->rss[w]);
            if (s->impl == DUAL || s->impl == DUAL_HARDEN)
                printf(", file %.0f", s->file[w]);
            if (s->has_cache)
                printf(", committed %.0f (%.3gx), meta_bytes %.1f, meta_resident %.1f",
                       s->committed[w], s->committed[w] / (double)size, s->meta[w], s->meta_res[w]);
            else if (s->impl != FLOOR)
                printf(", asmjit blocks %.0f, overhead %.1f", s->committed[w], s->meta[w]);
        }
        printf("\n");
    }
    for (int i = 0; i < NIMPL; i++) {
        if (!st[i].available || !st[i].has_cache)
            continue;
        const struct code_cache_stats cs = st[i].end;
        /* Since 2026-12-02 freed space is reused before the end (ready spans once 1 MiB of
         * them waits): compare the address space used with what was handed out. */
        size_t used = cs.reserved - cs.never_used;
        size_t handed = cs.chunks_allocated * ((size + cs.granule - 1) / cs.granule * cs.granule);
        bench_note("%s: a %zu MiB cache, %s; %zu MiB of it used for %zu MiB of chunks handed out "
                   "(%s)",
                   impl_name[i], cs.reserved / MIB,
                   cs.never_used > 0 ? "never exhausted" : "EXHAUSTED", used / MIB, handed / MIB,
                   used < handed ? "freed space reused" : "no freed space reused");
    }
    for (int i = 0; i < NIMPL; i++) {
        bench_free(&st[i].fifo);
        bench_free(&st[i].tight);
    }
    fflush(stdout);
}

/* ---- 3. Patching ---- */

#define PATCHES       1000000
#define PATCHES_FLIPS 20000

/* movabs rax, imm64; ret -- the immediate at an 8-byte aligned offset, so that an 8-byte patch of
 * it is one aligned word. The function starts at offset 6; bytes 0..5 are traps. */
static void write_patchable(unsigned char *rw, uint64_t value)
{
    memset(rw, 0xcc, 32);
    rw[6] = 0x48;
    rw[7] = 0xb8;
    memcpy(rw + 8, &value, 8);
    rw[16] = 0xc3;
}

static uint64_t call_patchable(const unsigned char *rx)
{
    uint64_t (*fn)(void);
    const void *entry = rx + 6;
    memcpy(&fn, &entry, sizeof fn);
    return fn();
}

/* A sealed chunk of a whole page holding the patchable function at its start (so that, with
 * CODE_CACHE_DUAL_HARDEN, the page is full of sealed code and read-only in the RW view). */
static struct code_chunk *patchable_chunk(struct code_cache *cache, unsigned char **rx)
{
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    struct code_span s = chunk != NULL ? code_chunk_alloc(chunk, 32, 8) : (struct code_span){0};
    if (s.rw == NULL)
        die("dual: code_cache_alloc (patch)");
    write_patchable(s.rw, 1);
    if (code_chunk_seal(chunk) != 0)
        die("dual: code_chunk_seal (patch)");
    *rx = s.rx;
    return chunk;
}

static void patch_bench(int reps)
{
    struct code_cache_options o = {.flags = CODE_CACHE_DUAL_MAP};
    struct code_cache_options oh = {.flags = CODE_CACHE_DUAL_MAP | CODE_CACHE_DUAL_HARDEN};
    struct code_cache *cache = code_cache_create(&o), *hcache = code_cache_create(&oh);
    if (cache == NULL || hcache == NULL)
        die("dual: code_cache_create (patch)");
    unsigned char *rx, *hrx;
    struct code_chunk *chunk = patchable_chunk(cache, &rx);
    struct code_chunk *hchunk = patchable_chunk(hcache, &hrx);

    /* The floor: a plain aligned store into writable memory, as a JIT with rwx code does. */
    unsigned char *plain = mmap(NULL, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    /* One view with W^X: the page made writable around the store, then executable again. */
    unsigned char *flip =
        mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (plain == MAP_FAILED || flip == MAP_FAILED)
        die("dual: mmap (patch)");
    write_patchable(plain, 1);
    write_patchable(flip, 1);
    if (mprotect(flip, PAGE, PROT_READ | PROT_EXEC) != 0)
        die("dual: mprotect (patch)");

    struct bench_samples lib8 = {0}, lib16 = {0}, store = {0}, flips = {0}, hard8 = {0};
    unsigned char bytes16[16];
    memcpy(bytes16, rx, 16);
    for (int rep = 0; rep < reps; rep++) {
        double t0 = bench_thread_cpu_ns();
        for (uint64_t v = 0; v < PATCHES; v++)
            if (code_chunk_patch(chunk, rx + 8, &v, 8) != 0)
                die("dual: code_chunk_patch");
        bench_add(&lib8, (bench_thread_cpu_ns() - t0) / PATCHES);
        if (call_patchable(rx) != PATCHES - 1) {
            fprintf(stderr, "dual: the patched function returned the wrong value\n");
            exit(1);
        }

        t0 = bench_thread_cpu_ns();
        for (uint64_t v = 0; v < PATCHES_FLIPS; v++)
            if (code_chunk_patch(hchunk, hrx + 8, &v, 8) != 0)
                die("dual: code_chunk_patch (hardened)");
        bench_add(&hard8, (bench_thread_cpu_ns() - t0) / PATCHES_FLIPS);
        if (call_patchable(hrx) != PATCHES_FLIPS - 1) {
            fprintf(stderr, "dual: the hardened patched function returned the wrong value\n");
            exit(1);
        }

        t0 = bench_thread_cpu_ns();
        for (uint64_t v = 0; v < PATCHES; v++) {
            memcpy(bytes16 + 8, &v, 8);
            if (code_chunk_patch(chunk, rx, bytes16, 16) != 0)
                die("dual: code_chunk_patch (16 bytes)");
        }
        bench_add(&lib16, (bench_thread_cpu_ns() - t0) / PATCHES);

        t0 = bench_thread_cpu_ns();
        for (uint64_t v = 0; v < PATCHES; v++)
            __atomic_store_n((uint64_t *)(void *)(plain + 8), v, __ATOMIC_RELEASE);
        bench_add(&store, (bench_thread_cpu_ns() - t0) / PATCHES);
        if (call_patchable(plain) != PATCHES - 1) {
            fprintf(stderr, "dual: the plain store's function returned the wrong value\n");
            exit(1);
        }

        t0 = bench_thread_cpu_ns();
        for (uint64_t v = 0; v < PATCHES_FLIPS; v++) {
            if (mprotect(flip, PAGE, PROT_READ | PROT_WRITE) != 0)
                die("dual: mprotect rw (patch)");
            __atomic_store_n((uint64_t *)(void *)(flip + 8), v, __ATOMIC_RELEASE);
            if (mprotect(flip, PAGE, PROT_READ | PROT_EXEC) != 0)
                die("dual: mprotect rx (patch)");
        }
        bench_add(&flips, (bench_thread_cpu_ns() - t0) / PATCHES_FLIPS);
        if (call_patchable(flip) != PATCHES_FLIPS - 1) {
            fprintf(stderr, "dual: the flipped page's function returned the wrong value\n");
            exit(1);
        }
    }
    struct code_cache_options om = {0};
    struct code_cache *mcache = code_cache_create(&om);
    struct code_chunk *mchunk = mcache != NULL ? code_cache_alloc(mcache, 64) : NULL;
    struct code_span ms = mchunk != NULL ? code_chunk_alloc(mchunk, 32, 8) : (struct code_span){0};
    int mrc = -1, merr = 0;
    if (ms.rw != NULL && code_chunk_seal(mchunk) == 0) {
        uint64_t v = 7;
        mrc = code_chunk_patch(mchunk, (char *)ms.rx + 8, &v, 8);
        merr = errno;
    }
    code_cache_destroy(mcache);

    struct bench_summary l8 = bench_summarize(&lib8), l16 = bench_summarize(&lib16),
                         st = bench_summarize(&store), fl = bench_summarize(&flips),
                         h8 = bench_summarize(&hard8);
    printf("dual: patching sealed code, CPU time per patch (%d patches per repetition; %d for "
           "mprotect and HARDEN)\n",
           PATCHES, PATCHES_FLIPS);
    bench_line("patch/plain 8-byte store into rwx memory", "ns", &st, NULL, NULL);
    bench_line("patch/code_chunk_patch 8 B (atomic), dual", "ns", &l8, "plain store", &st);
    bench_line("patch/code_chunk_patch 16 B, dual", "ns", &l16, "plain store", &st);
    bench_line("patch/code_chunk_patch 8 B, dual+HARDEN, full page", "ns", &h8, "patch 8 B dual",
               &l8);
    bench_line("patch/mprotect rw, store, mprotect rx (one view)", "ns", &fl, "plain store", &st);
    bench_line("patch/mprotect rw, store, mprotect rx (one view)", "ns", &fl, "patch 8 B dual",
               &l8);
    bench_note("code_chunk_patch on the mprotect backend: %s",
               mrc == 0 ? "succeeded (unexpected)" : strerror(merr));
    bench_free(&lib8);
    bench_free(&lib16);
    bench_free(&store);
    bench_free(&flips);
    bench_free(&hard8);
    code_cache_destroy(hcache);
    munmap(plain, PAGE);
    munmap(flip, PAGE);
    code_cache_destroy(cache);
    fflush(stdout);
}

/* dual SIZE (64, 256, 1024, 1216 or 4096; 1,216 bytes is a regex JIT's pattern, FACTS.md)
 * measures one size; dual patch the patches; no argument, all of
 * it. make bench-run runs each part in a process of its own, so that every cache gets a new
 * jemalloc arena rather than one reused from the pool (whose pages stay resident, which would
 * hide bookkeeping from the Pss difference). */
int main(int argc, char **argv)
{
    static const size_t sizes[] = {64, 256, 1024, 1216, 4096};
    bench_header("bench/dual: one function at a time, dual-mapped vs mprotect vs asmjit");
    int reps = bench_reps(7);
#ifdef BENCH_HAVE_ASMJIT
    bench_note("asmjit %s: its rwx default keeps no W^X; its dual-mapped mode does",
               bench_asmjit_version());
#else
    bench_note("asmjit's JitAllocator not measured: configure did not find libasmjit-dev");
#endif
    bool patch = argc < 2 || strcmp(argv[1], "patch") == 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        if (argc > 1 && strtoul(argv[1], NULL, 10) != sizes[i])
            continue;
        one_size(sizes[i], reps);
    }
    if (patch)
        patch_bench(reps);
    return 0;
}
