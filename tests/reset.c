/*
 * code_cache_reset, the "flush the whole code cache" of LuaJIT and QEMU: every chunk freed with
 * one release (mprotect: one protection change and one discard; dual: one mapping over the region
 * and one hole punched in the file), the region reused from its start, old handles refused; and
 * code_cache_destroy releasing chunks that were never freed. Run once per backend (helpers.h).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "helpers.h"

#define PAGE test_page_size()

struct live {
    struct code_chunk *chunk;
    jit_fn fn;
    int expect;
};

/* Fills the cache with chunks in every state (OPEN, SEALED, some calling through veneers, some
 * freed); returns how many are live. */
static size_t fill(struct code_cache *cache, int (*far)(int), struct live *live, size_t max)
{
    size_t n = 0;
    for (int i = 0; n < max; i++) {
        struct code_chunk *chunk = code_cache_alloc(cache, (1 + (size_t)i % 3) * PAGE);
        if (chunk == NULL) {
            cr_assert_eq(errno, ENOSPC);
            break;
        }
        int (*helper)(int) = i % 2 ? far : helper_triple;
        jit_fn fn = emit_call(chunk, helper, i);
        if (i % 3 != 0)
            cr_assert_eq(code_chunk_seal(chunk), 0);
        check_maps(cache);
        if (i % 4 == 3) {
            code_chunk_free(chunk);
            check_maps(cache);
        } else {
            live[n++] = (struct live){chunk, fn, helper(i)};
        }
    }
    return n;
}

Test(reset, frees_every_chunk_with_one_release)
{
    struct code_cache *cache = test_cache_near_helper(64 * PAGE);
    int (*far)(int) = far_function(cache);
    struct live live[64];
    size_t n = fill(cache, far, live, 64);
    cr_assert_gt(n, 10);
    struct code_cache_stats before, after;
    code_cache_get_stats(cache, &before);
    cr_assert_gt(before.open_chunks, 0);
    cr_assert_gt(before.sealed_chunks, 0);

    cr_assert_eq(code_cache_reset(cache), 0);
    code_cache_get_stats(cache, &after);
    check_maps(cache);
    expect_prot((void *)after.base, after.reserved, "---");
    const bool dual = test_cache_is_dual(cache);
    cr_assert_eq(after.protection_changes, before.protection_changes + (dual ? 0 : 1),
                 "one mprotect (none with dual)");
    cr_assert_eq(after.system_calls, before.system_calls + 2,
                 "mprotect and madvise, or mmap and fallocate, however many chunks");
    cr_assert_eq(after.free_ready, 0);
    cr_assert_eq(after.free_spans, 0);
    cr_assert_eq(after.committed, 0);
    cr_assert_eq(after.in_use, 0);
    cr_assert_eq(after.free, after.reserved);
    cr_assert_eq(after.never_used, after.reserved, "the bump pointer is back at the start");
    cr_assert_eq(after.open_chunks + after.sealed_chunks, 0);
    cr_assert_eq(after.chunks_allocated, before.chunks_allocated, "a history, not a count");
    cr_assert_lt(after.meta_bytes, before.meta_bytes, "the veneer tables were freed");
    code_cache_destroy(cache);
    far_function_release(far);
}

Test(reset, the_region_is_reused_from_its_start_with_fresh_memory)
{
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    struct live live[16];
    size_t n = fill(cache, helper_triple, live, 16);
    cr_assert_gt(n, 3);
    cr_assert_eq(code_cache_reset(cache), 0);
    check_maps(cache);

    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    struct code_chunk *whole = code_cache_alloc(cache, 16 * PAGE);
    cr_assert_not_null(whole, "the whole region is free again: %s", strerror(errno));
    check_maps(cache);
    cr_assert_eq((uintptr_t)code_chunk_span(whole).rx, st.base);
    expect_fresh_chunk(whole);
    jit_fn fn = emit_call(whole, helper_triple, 33);
    cr_assert_eq(code_chunk_seal(whole), 0);
    check_maps(cache);
    cr_assert_eq(fn(), 100);
    code_cache_destroy(cache);
}

Test(reset, handles_from_before_are_refused)
{
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    int (*far)(int) = far_function(cache);
    struct code_chunk *open = code_cache_alloc(cache, PAGE);
    struct code_chunk *sealed = code_cache_alloc(cache, PAGE);
    cr_assert(open != NULL && sealed != NULL);
    emit_return(sealed, 1);
    cr_assert_eq(code_chunk_seal(sealed), 0);
    cr_assert_eq(code_cache_reset(cache), 0);
    check_maps(cache);

    cr_assert_null(code_chunk_span(open).rw);
    cr_assert_null(code_chunk_span(sealed).rw);
    errno = 0;
    cr_assert_null(code_chunk_alloc(open, 8, 8).rw);
    cr_assert_eq(errno, EPERM);
    errno = 0;
    cr_assert_eq(code_chunk_seal(open), -1);
    cr_assert_eq(errno, EPERM);
    errno = 0;
    cr_assert_eq(code_chunk_seal(sealed), -1);
    cr_assert_eq(errno, EPERM);
    errno = 0;
    cr_assert_null(code_chunk_call_target(open, (const void *)far));
    cr_assert_eq(errno, EPERM);
    check_maps(cache);
    code_cache_destroy(cache);
    far_function_release(far);
}

Test(reset, of_an_empty_cache_changes_nothing)
{
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    struct code_cache_stats before, after;
    code_cache_get_stats(cache, &before);
    cr_assert_eq(code_cache_reset(cache), 0);
    code_cache_get_stats(cache, &after);
    cr_assert_eq(memcmp(&before, &after, sizeof before), 0);
    check_maps(cache);
    errno = 0;
    cr_assert_eq(code_cache_reset(NULL), -1);
    cr_assert_eq(errno, EINVAL);
    code_cache_destroy(cache);
}

Test(reset, repeated_fill_and_flush_cycles_keep_bookkeeping_flat)
{
    struct code_cache *cache = test_cache_near_helper(32 * PAGE);
    int (*far)(int) = far_function(cache);
    struct live live[32];
    size_t meta_steady = 0;
    int steady_from = -1;
    for (int cycle = 0; steady_from < 0 || cycle < steady_from + 4; cycle++) {
        cr_assert_lt(cycle, 100);
        size_t n = fill(cache, far, live, 32);
        cr_assert_gt(n, 5);
        for (size_t i = 0; i < n; i++) {
            if (code_chunk_seal(live[i].chunk) != 0)
                cr_assert_eq(errno, EBUSY);
            cr_assert_eq(live[i].fn(), live[i].expect, "cycle %d, chunk %zu", cycle, i);
        }
        check_maps(cache);
        cr_assert_eq(code_cache_reset(cache), 0);
        check_maps(cache);
        struct code_cache_stats st;
        code_cache_get_stats(cache, &st);
        /* Freed records wait in a quarantine of 64 before reuse: once more than 64 + two fills
         * were handed out, the records cover the quarantine and a fill, and nothing more may be
         * needed. */
        if (steady_from < 0 && st.chunks_allocated > 64 + 2 * 32) {
            steady_from = cycle;
            meta_steady = st.meta_bytes;
        } else if (steady_from >= 0) {
            cr_assert_eq(st.meta_bytes, meta_steady, "cycle %d: bookkeeping grew", cycle);
        }
    }
    code_cache_destroy(cache);
    far_function_release(far);
}

Test(reset, destroy_releases_chunks_that_were_never_freed)
{
    size_t baseline = jemalloc_allocated(), fds = open_fds();
    struct code_cache *cache = test_cache_near_helper(64 * PAGE);
    int (*far)(int) = far_function(cache);
    struct live live[64];
    size_t n = fill(cache, far, live, 64);
    cr_assert_gt(n, 10);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    /* Where the region is written: the RW view of a dual-mapped cache, the region itself else. */
    struct code_span span = code_chunk_span(live[0].chunk);
    const uintptr_t written = st.base + (uintptr_t)((char *)span.rw - (char *)span.rx);
    cr_assert_gt(jemalloc_allocated(), baseline);
    code_cache_destroy(cache);
    /* memcheck reports any record left behind (the run fails); jemalloc's own count must be back
     * where it was, and the reservation gone. */
    cr_assert_eq(jemalloc_allocated(), baseline);
    cr_assert_eq(mapped_bytes((void *)(st.base - PAGE), st.reserved + 2 * PAGE), 0);
    cr_assert_eq(mapped_bytes((void *)(written - PAGE), st.reserved + 2 * PAGE), 0,
                 "the RW view is still mapped");
    cr_assert_eq(open_fds(), fds, "the dual backend's file was not closed");
    far_function_release(far);
}
