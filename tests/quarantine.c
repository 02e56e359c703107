/*
 * The quarantine of freed spans and its bound: stats.free_spans counts the maximal runs of freed
 * pages; below 512 of them code_cache_alloc bumps into never-used space first, from 512 on it
 * reuses the lowest freed span that fits first, so that the mappings of the cache (each freed
 * span between sealed chunks is one, and splits its neighbours) stay bounded however long code
 * churns. Run once per backend (helpers.h): the chunks are whole pages in both, so the freed spans
 * are the same; the dual backend's stay r-x and trapped, ready, and are reused as soon as 1 MiB
 * of them waits (1 MiB of one-page spans: 256, the bound for that backend), until more than 4 MiB
 * of them are given back in one batch, down to the last 1 MiB.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "helpers.h"

#define PAGE test_page_size()

/* The bounds documented with code_cache_alloc: freed spans, ready (committed) freed bytes. */
#define QUARANTINE       512
#define READY_QUARANTINE ((size_t)1 << 20)

static struct code_chunk *alloc_page(struct code_cache *cache)
{
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk, "code_cache_alloc: %s", strerror(errno));
    return chunk;
}

static uintptr_t chunk_addr(const struct code_chunk *chunk)
{
    return (uintptr_t)code_chunk_span(chunk).rx;
}

static size_t free_spans(const struct code_cache *cache)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    return st.free_spans;
}

static size_t never_used(const struct code_cache *cache)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    return st.never_used;
}

static void free_checked(struct code_cache *cache, struct code_chunk *chunk, size_t expect_spans)
{
    code_chunk_free(chunk);
    check_maps(cache);
    cr_assert_eq(free_spans(cache), expect_spans, "free_spans after a free");
}

Test(quarantine, free_spans_counts_maximal_runs_of_freed_pages)
{
    struct code_cache *cache = test_cache_near_helper(8 * PAGE);
    struct code_chunk *c[8];
    for (int i = 0; i < 8; i++)
        c[i] = alloc_page(cache);
    uintptr_t base = chunk_addr(c[0]);
    cr_assert_eq(free_spans(cache), 0);

    free_checked(cache, c[1], 1);
    free_checked(cache, c[3], 2);
    free_checked(cache, c[5], 3);
    free_checked(cache, c[2], 2); /* joins 1 and 3 */
    free_checked(cache, c[7], 3); /* the last page of the cache */
    free_checked(cache, c[0], 3); /* the first page, joins 1-3 */
    free_checked(cache, c[4], 2); /* joins 0-3 and 5: 0-5 and 7 are left */
    free_checked(cache, c[6], 1); /* joins both sides: one run, the whole cache */

    /* First fit takes the low end of the run: what remains above is still one span. */
    struct code_chunk *a = alloc_page(cache);
    cr_assert_eq(chunk_addr(a), base);
    cr_assert_eq(free_spans(cache), 1);
    struct code_chunk *b = code_cache_alloc(cache, 2 * PAGE);
    cr_assert_not_null(b);
    cr_assert_eq(chunk_addr(b), base + PAGE);
    cr_assert_eq(free_spans(cache), 1);
    check_maps(cache);
    free_checked(cache, a, 2);
    /* Taking a whole run leaves no span behind. */
    struct code_chunk *rest = code_cache_alloc(cache, 5 * PAGE);
    cr_assert_not_null(rest);
    cr_assert_eq(chunk_addr(rest), base + 3 * PAGE);
    cr_assert_eq(free_spans(cache), 1);
    a = alloc_page(cache);
    cr_assert_eq(free_spans(cache), 0);
    check_maps(cache);

    free_checked(cache, b, 1);
    cr_assert_eq(code_cache_reset(cache), 0);
    cr_assert_eq(free_spans(cache), 0, "reset leaves nothing freed below the bump pointer");
    check_maps(cache);
    code_cache_destroy(cache);
}

/*
 * Which of the n one-page chunks from base whose freed[] is set the allocator reuses first: the
 * lowest freed span that is still committed (ready: the dual backend's trapped spans, r-x), else
 * the lowest of all (mprotect: every freed span is ---, given back).
 */
static size_t first_reused(uintptr_t base, const bool *freed, size_t n)
{
    static char prot[4096][4];
    cr_assert_leq(n, 4096);
    page_prots((const void *)base, n, prot);
    size_t lowest = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        if (!freed[i])
            continue;
        if (strcmp(prot[i], "---") != 0)
            return i;
        if (lowest == SIZE_MAX)
            lowest = i;
    }
    return lowest;
}

/*
 * 2 * (512 + CHURN) + 3 sealed one-page chunks; odd ones are freed, each a span of its own
 * between two sealed chunks. Below the bound, allocation bumps; at the bound, every allocation
 * takes a freed span (the lowest, a ready one first), and CHURN rounds of free + allocate leave
 * the number of freed spans, and the number of mappings of the cache, where they were. Bumping
 * first would add a span, and two mappings, per round.
 */
Test(quarantine, allocation_reuses_freed_spans_first_at_the_bound)
{
    enum { CHURN = 128, N = 2 * (QUARANTINE + CHURN) + 3 };
    static struct code_chunk *c[N];
    static bool freed[N];
    memset(freed, 0, sizeof freed);
    struct code_cache *cache = test_cache_near_helper(4 * N * PAGE);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    const uintptr_t base = st.base;
    /* The dual backend's freed one-page spans stay ready: 1 MiB of them is the tighter bound. */
    const size_t bound = test_cache_is_dual(cache) ? READY_QUARANTINE / PAGE : QUARANTINE;
    for (size_t i = 0; i < N; i++) {
        c[i] = alloc_page(cache);
        cr_assert_eq(chunk_addr(c[i]), base + i * PAGE, "bumped");
        emit_return(c[i], (int)i);
        cr_assert_eq(code_chunk_seal(c[i]), 0, "code_chunk_seal: %s", strerror(errno));
    }
    check_maps(cache);

    /* One span short of the bound: still bumping. */
    for (size_t i = 1; i < 2 * (bound - 1); i += 2) {
        code_chunk_free(c[i]);
        freed[i] = true;
    }
    check_maps(cache);
    cr_assert_eq(free_spans(cache), bound - 1);
    struct code_chunk *bumped = alloc_page(cache);
    cr_assert_eq(chunk_addr(bumped), base + N * PAGE, "below the bound, never-used space first");
    jit_fn bumped_fn = emit_return(bumped, -1);
    cr_assert_eq(code_chunk_seal(bumped), 0);
    cr_assert_eq(free_spans(cache), bound - 1);

    /* At the bound: the lowest freed span, while never-used space remains. */
    size_t next_odd = 2 * (bound - 1) + 1;
    code_chunk_free(c[next_odd]);
    freed[next_odd] = true;
    next_odd += 2;
    cr_assert_eq(free_spans(cache), bound);
    size_t fresh = never_used(cache);
    cr_assert_gt(fresh, 0);
    size_t expect = first_reused(base, freed, N);
    struct code_chunk *reused = alloc_page(cache);
    cr_assert_eq(chunk_addr(reused), base + expect * PAGE,
                 "at the bound, a freed span first (the lowest, a ready one before)");
    freed[expect] = false;
    expect_fresh_chunk(reused);
    jit_fn reused_fn = emit_return(reused, -2);
    cr_assert_eq(code_chunk_seal(reused), 0);
    cr_assert_eq(free_spans(cache), bound - 1);
    cr_assert_eq(never_used(cache), fresh, "no never-used page taken");
    check_maps(cache);

    for (size_t round = 0; round < CHURN; round++, next_odd += 2) {
        code_chunk_free(c[next_odd]);
        freed[next_odd] = true;
        cr_assert_eq(free_spans(cache), bound, "round %zu", round);
        expect = first_reused(base, freed, N);
        struct code_chunk *chunk = alloc_page(cache);
        cr_assert_eq(chunk_addr(chunk), base + expect * PAGE,
                     "round %zu: a freed span (%zu), not never-used space", round, expect);
        freed[expect] = false;
        cr_assert_eq(free_spans(cache), bound - 1);
        cr_assert_eq(code_chunk_seal(chunk), 0);
    }
    cr_assert_eq(never_used(cache), fresh, "churn took no never-used page");
    check_maps(cache);
    size_t mappings = check_no_wx(cache);
    cr_assert_leq(mappings, 2 * bound + 8, "%zu mappings for %zu freed spans", mappings,
                  free_spans(cache));

    /* At the bound but no freed span large enough: never-used space after all. */
    code_chunk_free(c[next_odd]);
    cr_assert_eq(free_spans(cache), bound);
    struct code_chunk *two = code_cache_alloc(cache, 2 * PAGE);
    cr_assert_not_null(two);
    cr_assert_eq(chunk_addr(two), base + (N + 1) * PAGE, "no freed span of two pages");
    cr_assert_eq(free_spans(cache), bound);
    check_maps(cache);

    /* The code that stayed sealed throughout still runs. */
    cr_assert_eq(((jit_fn)chunk_addr(c[0]))(), 0);
    cr_assert_eq(((jit_fn)chunk_addr(c[N - 1]))(), N - 1);
    cr_assert_eq(bumped_fn(), -1);
    cr_assert_eq(reused_fn(), -2);
    code_cache_destroy(cache);
}

/*
 * The dual backend keeps freed spans committed and trapped (free_ready), and gives their whole
 * pages back once more than 4 MiB of them wait, all but the last 1 MiB, however scattered: here
 * every other page-sized chunk is freed, so each freed page is a run of its own between two
 * sealed chunks. (The first version gave back 64 runs per batch and then waited again: free_ready
 * grew with every free.) With mprotect a freed span is given back at once: free_ready stays 0.
 */
Test(quarantine, scattered_freed_pages_are_given_back_once_4_MiB_wait)
{
    enum { N = 4096 };
    static struct code_chunk *c[N];
    struct code_cache *cache = test_cache_near_helper(32 << 20);
    for (size_t i = 0; i < N; i++) {
        c[i] = alloc_page(cache);
        emit_return(c[i], (int)i);
        cr_assert_eq(code_chunk_seal(c[i]), 0);
    }
    check_maps(cache);
    size_t most = 0, released = 0;
    for (size_t i = 0; i < N; i += 2) {
        struct code_cache_stats before, after;
        code_cache_get_stats(cache, &before);
        code_chunk_free(c[i]);
        code_cache_get_stats(cache, &after);
        if (after.free_ready > most)
            most = after.free_ready;
        released += after.free_ready < before.free_ready;
    }
    check_maps(cache);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    if (test_cache_is_dual(cache)) {
        cr_assert_leq(most, ((size_t)4 << 20) + PAGE,
                      "%zu KiB of whole free pages were kept ready after %zu KiB were freed",
                      most >> 10, (size_t)N / 2 * PAGE >> 10);
        cr_assert_geq(released, 2, "%zu batches for %zu KiB freed", released,
                      (size_t)N / 2 * PAGE >> 10);
        cr_assert_geq(st.free_ready, READY_QUARANTINE - PAGE,
                      "the last MiB freed stays trapped, %zu KiB did", st.free_ready >> 10);
        /* What was given back is --- again: the first freed page, long released. */
        expect_prot((const void *)(chunk_addr(c[1]) - PAGE), PAGE, "---");
    } else {
        cr_assert_eq(most, 0, "the mprotect backend keeps nothing ready");
    }
    cr_assert_eq(((jit_fn)chunk_addr(c[1]))(), 1, "the sealed neighbours still run");
    cr_assert_eq(((jit_fn)chunk_addr(c[N - 1]))(), N - 1);
    code_cache_destroy(cache);
}
