/*
 * One small function at a time, the way method JITs, regex JITs and baseline tiers use a code
 * cache: thousands of functions of mixed sizes allocated, written, sealed, called, freed and
 * reused in random order (fewer under valgrind). Every function must return its own value: no
 * two live chunks overlap, a reused span runs its new code and never the old one (valgrind's
 * translations included), and freed code never runs again: its bytes are traps (dual) or its
 * pages inaccessible (mprotect), and a stale call faults.
 *
 * Run once per backend (helpers.h). The cache is smaller than the dual backend's 1 MiB release
 * batch, so there freed spans stay r-x and trapped until reused: readable, which lets every free
 * be checked byte by byte.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <string.h>

#include "helpers.h"

#define PAGE test_page_size()

enum { MAX_LIVE = 256, MAX_FNS = 4 };

struct live {
    struct code_chunk *chunk;
    struct code_span span;
    int nfns;
    jit_fn fn[MAX_FNS];
    int value[MAX_FNS];
};

struct world {
    struct code_cache *cache;
    bool dual;
    uint64_t rng;
    struct live live[MAX_LIVE];
    size_t nlive;
    int next_value;
    size_t allocated_bytes, frees, calls;
    /* Functions of freed chunks, for stale calls at the end. */
    jit_fn stale[64];
    size_t nstale;
};

static uint64_t next_random(struct world *w)
{
    /* xorshift64: reproducible from the seed the test logs. */
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    return w->rng;
}

static size_t random_below(struct world *w, size_t n)
{
    return (size_t)(next_random(w) % n);
}

/* Mostly small, some medium, a few over a page: what a method JIT emits. */
static size_t random_chunk_size(struct world *w)
{
    size_t kind = random_below(w, 100);
    if (kind < 70)
        return 16 + random_below(w, 240);
    if (kind < 95)
        return 256 + random_below(w, 1792);
    return 2048 + random_below(w, 3 * PAGE - 2048);
}

static void check_no_overlap(const struct world *w, struct code_span span)
{
    uintptr_t lo = (uintptr_t)span.rx, hi = lo + span.size;
    for (size_t i = 0; i < w->nlive; i++) {
        uintptr_t l = (uintptr_t)w->live[i].span.rx, h = l + w->live[i].span.size;
        cr_assert(hi <= l || h <= lo, "[%#lx, %#lx) overlaps live chunk [%#lx, %#lx)",
                  (unsigned long)lo, (unsigned long)hi, (unsigned long)l, (unsigned long)h);
    }
}

static void call_all(const struct live *l)
{
    for (int j = 0; j < l->nfns; j++)
        cr_assert_eq(l->fn[j](), l->value[j], "function %p returned another's value",
                     (void *)l->fn[j]);
}

/* A chunk with one to four functions of random sizes and alignments, sealed and called. False
 * when the cache is full. */
static bool add_chunk(struct world *w)
{
    size_t size = random_chunk_size(w);
    struct code_chunk *chunk = code_cache_alloc(w->cache, size);
    if (chunk == NULL) {
        cr_assert_eq(errno, ENOSPC, "code_cache_alloc(%zu): %s", size, strerror(errno));
        return false;
    }
    struct live *l = &w->live[w->nlive];
    *l = (struct live){.chunk = chunk, .span = code_chunk_span(chunk)};
    cr_assert_geq(l->span.size, size);
    check_no_overlap(w, l->span);
    cr_assert_eq(code_cache_find(w->cache, l->span.rx), chunk);
    expect_fresh_chunk(chunk);
    w->allocated_bytes += l->span.size;

    int want = 1 + (int)random_below(w, MAX_FNS);
    for (int j = 0; j < want; j++) {
        size_t align = (size_t)1 << random_below(w, 7); /* 1 to 64 */
        size_t fsize = 6 + random_below(w, size / (size_t)want > 6 ? size / (size_t)want - 5 : 1);
        struct code_span fspan = code_chunk_alloc(chunk, fsize, align);
        if (fspan.rw == NULL) {
            cr_assert_eq(errno, ENOSPC);
            break;
        }
        l->value[l->nfns] = w->next_value++;
        l->fn[l->nfns] = fill_return(fspan, l->value[l->nfns]);
        l->nfns++;
    }
    cr_assert_gt(l->nfns, 0, "not even one function fitted in %zu bytes", l->span.size);
    cr_assert_eq(code_chunk_seal(chunk), 0, "code_chunk_seal: %s", strerror(errno));
    call_all(l);
    w->nlive++;
    return true;
}

static void free_chunk(struct world *w, size_t i)
{
    struct live l = w->live[i];
    w->live[i] = w->live[--w->nlive];
    code_chunk_free(l.chunk);
    w->frees++;
    cr_assert_null(code_cache_find(w->cache, l.span.rx), "a freed chunk is still found");
    if (w->dual) {
        /* Trapped at once, through both views (the cache is below the release batch). */
        const unsigned char *rx = l.span.rx, *rw = l.span.rw;
        for (size_t k = 0; k < l.span.size; k++)
            cr_assert(rx[k] == TEST_TRAP_BYTE && rw[k] == TEST_TRAP_BYTE,
                      "freed byte %zu at %p is %#x (written %#x), not a trap", k,
                      (const void *)(rx + k), rx[k], rw[k]);
    }
    if (w->nstale < sizeof w->stale / sizeof w->stale[0])
        w->stale[w->nstale++] = l.fn[0];
}

static void run_stale(void *fn)
{
    jit_fn volatile f = (jit_fn)fn;
    f();
}

Test(small_functions, thousands_allocated_sealed_called_freed_and_reused_at_random)
{
    static struct world world; /* static: a failed assertion leaks nothing */
    struct world *w = &world;
    memset(w, 0, sizeof *w);
    w->cache = test_cache_near_helper(256 << 10);
    w->dual = test_cache_is_dual(w->cache);
    w->rng = 0x9e3779b97f4a7c15u;
    cr_log_info("seed %#llx", (unsigned long long)w->rng);
    struct code_cache_stats st;
    code_cache_get_stats(w->cache, &st);
    const size_t reserved = st.reserved;
    const int ops = test_under_valgrind() ? 3000 : 30000;

    for (int op = 0; op < ops; op++) {
        size_t dice = random_below(w, 100);
        if (dice < 45 && w->nlive < MAX_LIVE) {
            if (!add_chunk(w) && w->nlive > 0)
                free_chunk(w, random_below(w, w->nlive)); /* full: make room */
        } else if (dice < 80 && w->nlive > 0) {
            free_chunk(w, random_below(w, w->nlive));
        } else if (w->nlive > 0) {
            const struct live *l = &w->live[random_below(w, w->nlive)];
            int j = (int)random_below(w, (size_t)l->nfns);
            cr_assert_eq(l->fn[j](), l->value[j], "op %d: function %p", op, (void *)l->fn[j]);
            w->calls++;
        }
        if (op % 512 == 0) {
            check_maps(w->cache);
            for (size_t i = 0; i < w->nlive; i++)
                call_all(&w->live[i]);
        }
    }
    check_maps(w->cache);
    cr_log_info("%d operations: %d functions, %zu chunks freed, %zu calls, %zu bytes handed out "
                "from a %zu-byte cache",
                ops, w->next_value, w->frees, w->calls, w->allocated_bytes, reserved);
    cr_assert_gt(w->allocated_bytes, 2 * reserved, "the cache was hardly reused");
    cr_assert_gt(w->next_value, ops / 2, "too few functions");

    /* Stale pointers whose span nobody reuses yet: calling one faults. */
    int stale_calls = 0;
    for (size_t i = w->nstale; i-- > 0 && stale_calls < 3;) {
        if (code_cache_find(w->cache, (const void *)w->stale[i]) != NULL)
            continue; /* reused: it is some live function's code now */
        expect_child_fault(w->dual ? SIGTRAP : SIGSEGV, (const void *)w->stale[i],
                           (const char *)w->stale[i] + 1, run_stale, (void *)w->stale[i]);
        stale_calls++;
    }
    cr_assert_gt(stale_calls, 0, "every freed function's span was reused");

    while (w->nlive > 0)
        free_chunk(w, w->nlive - 1);
    check_maps(w->cache);
    code_cache_get_stats(w->cache, &st);
    cr_assert_eq(st.in_use, 0);
    cr_assert_eq(st.open_chunks + st.sealed_chunks, 0);
    cr_assert_eq(st.committed, st.committed_ahead + st.free_ready);
    code_cache_destroy(w->cache);
}

/* Small functions, each in a chunk of its own, half of them freed while the cache keeps bumping:
 * each stale pointer, and a pointer into the middle of freed code, faults. */
Test(small_functions, a_stale_function_pointer_faults)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    const bool dual = test_cache_is_dual(cache);
    enum { N = 40 };
    struct code_chunk *c[N];
    jit_fn fn[N];
    for (int i = 0; i < N; i++) {
        c[i] = code_cache_alloc(cache, 24 + (size_t)i);
        cr_assert_not_null(c[i]);
        fn[i] = emit_return(c[i], i);
        cr_assert_eq(code_chunk_seal(c[i]), 0);
    }
    check_maps(cache);
    struct code_span freed = code_chunk_span(c[7]);
    for (int i = 1; i < N; i += 2)
        code_chunk_free(c[i]);
    check_maps(cache);
    expect_freed_span(freed);
    /* More chunks bump past them; the freed spans stay in quarantine. */
    for (int i = 0; i < N; i++) {
        struct code_chunk *more = code_cache_alloc(cache, 100);
        cr_assert_not_null(more);
        emit_return(more, 1000 + i);
        cr_assert_eq(code_chunk_seal(more), 0);
    }
    for (int i = 0; i < N; i += 2)
        cr_assert_eq(fn[i](), i, "a live neighbour of freed code");
    const int sig = dual ? SIGTRAP : SIGSEGV;
    expect_child_fault(sig, (const void *)fn[7], (const char *)fn[7] + 1, run_stale, (void *)fn[7]);
    const char *middle = (const char *)fn[N - 1] + 3;
    expect_child_fault(sig, middle, middle + 1, run_stale, (void *)middle);
    check_maps(cache);
    code_cache_destroy(cache);
}
