/*
 * Regression test for a library bug the model found (tests/model): code_chunk_commit with `used`
 * larger than the whole reservation, no veneer placed meanwhile, failed with ENOSPC, while
 * code_cache.h documents EINVAL for "used larger than the reservation" and keeps ENOSPC for "the
 * used bytes reach into a veneer placed during the reservation" (lib/chunk.c, code_chunk_commit
 * answered both with one check). Fixed in 94720d6.
 */
#include <criterion/criterion.h>
#include <errno.h>

#include "code_cache.h"
#include "helpers.h"

static void commit_too_much(unsigned flags)
{
    struct code_cache_options opts = {.size = 1 << 16, .flags = flags};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache);
    struct code_chunk *chunk = code_cache_alloc(cache, 4096);
    cr_assert_not_null(chunk);
    struct code_span span = code_chunk_reserve(chunk, 16);
    cr_assert_not_null(span.rw);
    errno = 0;
    cr_assert_eq(code_chunk_commit(chunk, span.size + 1), -1);
    cr_expect_eq(errno, EINVAL, "%s backend: commit of %zu bytes of a %zu-byte reservation: %s",
                 flags ? "dual" : "mprotect", span.size + 1, span.size, strerror(errno));
    /* The reservation is still outstanding and usable. */
    cr_assert_eq(code_chunk_commit(chunk, span.size), 0);
    code_cache_destroy(cache);
}

Test(commit_errno, used_beyond_the_reservation_is_EINVAL_mprotect)
{
    commit_too_much(0);
}

Test(commit_errno, used_beyond_the_reservation_is_EINVAL_dual)
{
    commit_too_much(CODE_CACHE_DUAL_MAP);
}
