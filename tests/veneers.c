/*
 * Veneers and the reach rule at the chunk level: whatever code_chunk_call_target returns is
 * reachable by a direct branch from every byte of the chunk, counted the way the instruction
 * counts (x86-64 rel32 from the end of the instruction), or the call fails with ERANGE. Every
 * expectation is computed independently (place_helpers.c), not with the library's reach_covers.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "place_helpers.h"

#define PAGE test_page_size()

static struct code_cache *cache_near(const void *near, size_t size, size_t reach)
{
    struct code_cache_options opts = {.size = size, .near = near, .reach = reach};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "create with reach %zu: %s", reach, strerror(errno));
    return cache;
}

Test(veneers, call_target_is_exact_at_both_edges_of_the_reach)
{
    /* Before the fix, reach was measured from the bytes [lo, hi) instead of from the branches'
     * origins: a target at hi - 1 - R was reported reachable although a call in the last five
     * bytes of the chunk needs rel32 = -R - 1 to get there. */
    const size_t reach = 4 * MiB;
    struct code_cache *cache = cache_near((const void *)helper_triple, 2 * MiB, reach);
    struct code_chunk *chunk = code_cache_alloc(cache, 4 * PAGE);
    cr_assert_not_null(chunk);
    struct code_span span = code_chunk_span(chunk);
    const uintptr_t lo = (uintptr_t)span.rx, hi = lo + span.size;
    const uintptr_t edges[][2] = {
        {test_unreachable_above(lo, reach) - 1, 1}, /* just in reach of the first call */
        {test_unreachable_above(lo, reach), 0},     /* one byte beyond it */
        {test_unreachable_below(hi, reach) + 1, 1}, /* just in reach of the last call */
        {test_unreachable_below(hi, reach), 0},     /* one byte beyond it */
    };
    /* Under valgrind the program sits near 0x108000: nothing lies a reach below the chunk. */
    const size_t nedges = hi > reach + TEST_BRANCH_SIZE + 1 ? 4 : 2;
    for (size_t i = 0; i < nedges; i++) {
        const void *t = (const void *)edges[i][0];
        bool in_reach = edges[i][1] != 0;
        cr_assert_eq(test_reaches(lo, hi, edges[i][0], reach), in_reach, "edge %zu", i);
        const void *got = code_chunk_call_target(chunk, t);
        cr_assert_not_null(got, "edge %zu: %s", i, strerror(errno));
        if (in_reach) {
            cr_assert_eq(got, t, "edge %zu: %p is in reach, no veneer needed", i, t);
        } else {
            cr_assert_neq(got, t, "edge %zu: %p is out of reach: a veneer is needed", i, t);
            cr_assert(test_reaches(lo, hi, (uintptr_t)got, reach), "the veneer is in reach");
        }
    }
    code_cache_destroy(cache);
}

Test(veneers, a_veneer_is_reachable_from_every_byte_of_its_chunk)
{
    /* Before the fix the veneer went to the chunk's top with no check that the chunk's start
     * could reach it: with a chunk larger than the reach, a call from the start could not be
     * encoded. */
    const size_t reach = 1 * MiB;
    /* Nearly the whole window around a target in empty address space (around the test's own
     * functions the program itself is in the way). The window is 2 R + 5 bytes; page alignment
     * may take a page off each end, and the guard pages take two more. */
    uintptr_t area = test_free_area(4 * reach);
    struct code_cache *cache =
        cache_near((const void *)(area + 2 * reach), 2 * MiB - 4 * PAGE, reach);
    int (*far)(int) = far_function(cache);

    /* A chunk larger than the reach: no place in it is reachable from all of it. */
    struct code_chunk *big = code_cache_alloc(cache, reach + 64 * 1024);
    cr_assert_not_null(big, "%s", strerror(errno));
    errno = 0;
    cr_assert_null(code_chunk_call_target(big, (const void *)far));
    cr_assert_eq(errno, ERANGE, "errno %d", errno);
    code_chunk_free(big);

    /* A chunk of exactly the reach: its top is reachable from everywhere in it, and the veneer
     * works. */
    struct code_chunk *chunk = code_cache_alloc(cache, reach - 16 * PAGE);
    cr_assert_not_null(chunk);
    struct code_span span = code_chunk_span(chunk);
    const void *v = code_chunk_call_target(chunk, (const void *)far);
    cr_assert_not_null(v, "%s", strerror(errno));
    cr_assert(test_reaches((uintptr_t)span.rx, (uintptr_t)span.rx + span.size, (uintptr_t)v, reach),
              "the veneer %p is out of reach of part of its chunk", v);
    jit_fn fn = emit_call(chunk, far, 4);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    cr_assert_eq(fn(), 13);
    code_cache_destroy(cache);
    far_function_release(far);
}
