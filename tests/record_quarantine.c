/*
 * The records of freed chunks wait in a FIFO and are reused oldest first, only once more than 64
 * wait (code_cache.h, code_chunk_free): until then a freed handle is still recognised (seal gets
 * EPERM, span is empty, a second free aborts). Checked exactly at the bound, on both backends
 * (the dual one without thread caches, which keep records longer: tests/tcache.c).
 */
#include <criterion/criterion.h>
#include <errno.h>

#include "code_cache.h"
#include "helpers.h"

#define QUARANTINE 64

static void at_the_bound(unsigned flags)
{
    struct code_cache_options opts = {.size = 1 << 20, .flags = flags};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache);
    struct code_chunk *chunks[QUARANTINE + 1];
    for (int i = 0; i <= QUARANTINE; i++) {
        chunks[i] = code_cache_alloc(cache, 64);
        cr_assert_not_null(chunks[i]);
    }
    /* The oldest freed record, then 63 more: 64 wait, none may be reused yet. */
    struct code_chunk *oldest = chunks[0];
    for (int i = 0; i < QUARANTINE; i++)
        code_chunk_free(chunks[i]);
    struct code_chunk *fresh = code_cache_alloc(cache, 64);
    cr_assert_not_null(fresh);
    cr_assert_neq(fresh, oldest, "a record was reused while only %d waited", QUARANTINE);
    errno = 0;
    cr_assert_eq(code_chunk_seal(oldest), -1, "the freed handle is not recognised any more");
    cr_assert_eq(errno, EPERM);
    cr_assert_null(code_chunk_span(oldest).rw);

    /* One more freed: 65 wait, and the next allocation takes the oldest record. */
    code_chunk_free(chunks[QUARANTINE]);
    struct code_chunk *reused = code_cache_alloc(cache, 64);
    cr_assert_eq(reused, oldest, "the oldest record was not the one reused");
    cr_assert_not_null(code_chunk_span(reused).rw);
    code_chunk_free(reused);
    code_chunk_free(fresh);
    code_cache_destroy(cache);
}

Test(record_quarantine, mprotect_records_are_reused_only_past_64)
{
    at_the_bound(0);
}

Test(record_quarantine, dual_records_are_reused_only_past_64)
{
    at_the_bound(CODE_CACHE_DUAL_MAP | CODE_CACHE_NO_THREAD_CACHE);
}

/* With thread caches, a small chunk's record waits longer still: not reused at 65. */
Test(record_quarantine, dual_thread_caches_keep_records_longer)
{
    if (test_dual_fetch_is_stale())
        cr_skip_test("no thread caches where fetch does not see the RW view (tests/tcache.c)");
    struct code_cache_options opts = {.size = 1 << 20, .flags = CODE_CACHE_DUAL_MAP};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache);
    struct code_chunk *chunks[QUARANTINE + 1];
    for (int i = 0; i <= QUARANTINE; i++)
        chunks[i] = code_cache_alloc(cache, 64);
    for (int i = 0; i <= QUARANTINE; i++)
        code_chunk_free(chunks[i]);
    struct code_chunk *fresh = code_cache_alloc(cache, 64);
    for (int i = 0; i <= QUARANTINE; i++)
        cr_assert_neq(fresh, chunks[i], "a kept record was reused after %d frees", QUARANTINE + 1);
    cr_assert_eq(code_chunk_seal(chunks[0]), -1);
    cr_assert_eq(errno, EPERM);
    code_chunk_free(fresh);
    code_cache_destroy(cache);
}
