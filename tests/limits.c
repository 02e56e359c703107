/*
 * Resource limits, created for real: an address-space limit (RLIMIT_AS) too small for the
 * reservation makes code_cache_create fail with ENOMEM, leaves no mapping behind, and once the
 * limit is lifted the same call succeeds. A chunk whose commit would pass the limit cannot exist:
 * the reservation already counts against RLIMIT_AS, so allocation within it keeps working.
 * Run once per backend (tests/limits.sh): the dual backend's RW view is mapped at create as well,
 * and its commits map the file over the reservation, which adds nothing to the address space.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include <sys/resource.h>

#include "helpers.h"

#define MiB ((size_t)1 << 20)

static struct rlimit saved_limit;

/* Lowers the soft RLIMIT_AS to what the process uses now plus headroom. */
static void limit_address_space(size_t headroom)
{
    cr_assert_eq(getrlimit(RLIMIT_AS, &saved_limit), 0);
    struct rlimit lower = saved_limit;
    lower.rlim_cur = vm_size() + headroom;
    cr_assert_eq(setrlimit(RLIMIT_AS, &lower), 0, "setrlimit: %s", strerror(errno));
}

static void restore_address_space(void)
{
    cr_assert_eq(setrlimit(RLIMIT_AS, &saved_limit), 0, "setrlimit: %s", strerror(errno));
}

Test(limits, address_space_limit_fails_create_with_enomem_and_leaves_nothing)
{
    /* Warm up the metadata arena so that the limit is about the reservation only. */
    code_cache_destroy(test_cache_near_helper(MiB));
    size_t before = vm_size();

    limit_address_space(16 * MiB);
    struct code_cache_options opts = {
        .size = 64 * MiB, .near = (const void *)helper_triple, .flags = test_backend_flags()};
    errno = 0;
    struct code_cache *cache = code_cache_create(&opts);
    int saved = errno;
    restore_address_space();

    cr_assert_null(cache, "a 64 MiB cache was created under a 16 MiB address-space headroom");
    cr_assert_eq(saved, ENOMEM, "errno %d (%s)", saved, strerror(saved));
    cr_assert_eq(vm_size(), before, "the failed create left %zd bytes mapped",
                 (ssize_t)(vm_size() - before));

    cache = test_cache_create(&opts);
    cr_assert_not_null(cache, "create after the limit was lifted: %s", strerror(errno));
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(limits, chunks_commit_within_a_reservation_under_a_tight_limit)
{
    struct code_cache *cache = test_cache_near_helper(8 * MiB);
    /* The reservation is already counted: no headroom at all is needed to commit in it. */
    limit_address_space(0);
    struct code_chunk *chunks[8];
    for (int i = 0; i < 8; i++) {
        chunks[i] = code_cache_alloc(cache, MiB);
        cr_assert_not_null(chunks[i], "alloc %d: %s", i, strerror(errno));
        jit_fn fn = emit_call(chunks[i], helper_triple, i);
        cr_assert_eq(code_chunk_seal(chunks[i]), 0, "seal: %s", strerror(errno));
        cr_assert_eq(fn(), helper_triple(i));
    }
    restore_address_space();
    check_maps(cache);
    for (int i = 0; i < 8; i++)
        code_chunk_free(chunks[i]);
    check_maps(cache);
    code_cache_destroy(cache);
}
