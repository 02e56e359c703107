/*
 * Bookkeeping in the cache's jemalloc arena: jemalloc's own statistics agree with the cache's
 * count, freeing every chunk leaves only the fixed records, arenas come from a pool instead of
 * being created per cache, create/destroy cycles do not eat address space, and memcheck sees the
 * records (which is what lets the valgrind run report a leaked or misused one). Run once per
 * backend (helpers.h): the indexes are per granule, so their size follows stats.granule.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include <valgrind/memcheck.h>

#include "helpers.h"

#define PAGE test_page_size()

/* jemalloc's count of live bytes beyond the baseline equals the cache's own count. */
static void expect_meta_matches(const struct code_cache *cache, size_t baseline)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(jemalloc_allocated() - baseline, st.meta_bytes,
                 "jemalloc holds %zu bytes for the cache, which counts %zu",
                 jemalloc_allocated() - baseline, st.meta_bytes);
}

/* Allocates n chunks, each calling `veneers` distinct far targets (the veneer table grows),
 * seals every other one, and frees them all. */
static void churn(struct code_cache *cache, int (*far)(int), size_t n, size_t veneers)
{
    struct code_chunk *chunks[64];
    cr_assert_leq(n, 64);
    for (size_t i = 0; i < n; i++) {
        chunks[i] = code_cache_alloc(cache, PAGE);
        cr_assert_not_null(chunks[i], "alloc: %s", strerror(errno));
        for (size_t v = 0; v < veneers; v++)
            cr_assert_not_null(code_chunk_call_target(chunks[i], (const char *)far + 16 * v));
        if (i % 2)
            cr_assert_eq(code_chunk_seal(chunks[i]), 0);
    }
    check_maps(cache);
    for (size_t i = 0; i < n; i++)
        code_chunk_free(chunks[i]);
    check_maps(cache);
}

Test(meta, jemalloc_statistics_agree_with_meta_bytes)
{
    size_t baseline = jemalloc_allocated();
    struct code_cache *cache = test_cache_near_helper(128 * PAGE);
    int (*far)(int) = far_function(cache);
    expect_meta_matches(cache, baseline);

    struct code_chunk *a = code_cache_alloc(cache, 3 * PAGE);
    cr_assert_not_null(a);
    expect_meta_matches(cache, baseline);
    for (int v = 0; v < 9; v++)
        cr_assert_not_null(code_chunk_call_target(a, (const char *)far + 16 * v));
    expect_meta_matches(cache, baseline);
    churn(cache, far, 20, 5);
    expect_meta_matches(cache, baseline);
    cr_assert_eq(code_cache_reset(cache), 0);
    expect_meta_matches(cache, baseline);
    code_cache_destroy(cache);
    cr_assert_eq(jemalloc_allocated(), baseline, "destroy left bookkeeping behind");
    far_function_release(far);
}

Test(meta, freeing_every_chunk_leaves_only_the_fixed_records)
{
    size_t baseline = jemalloc_allocated();
    struct code_cache *cache = test_cache_near_helper(64 * PAGE);
    int (*far)(int) = far_function(cache);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    size_t empty = st.meta_bytes;

    /* Three rounds fill the record FIFO: freed records are reused only while more than 64 wait
     * (the double-free quarantine), so rounds two and three add up to 64 records. */
    churn(cache, far, 40, 6);
    churn(cache, far, 40, 6);
    churn(cache, far, 40, 6);
    code_cache_get_stats(cache, &st);
    size_t steady = st.meta_bytes;
    /* What stays: the record table, slabs of 64 and 128 records of 56 bytes, enough for the
     * 40 + 64 records kept for reuse; the find index, one 4-byte word per granule the bump
     * pointer passed (every granule of the cache by now), in slabs of 1024, 2048, 4096...
     * words; the three free-span bitmaps, a bit per granule (at least jemalloc's smallest
     * class, 16 bytes). No veneer table survives its chunk. */
    const size_t granules = st.reserved / st.granule;
    size_t find_words = 0;
    for (size_t slab = 1024; find_words < granules; slab *= 2)
        find_words += slab;
    const size_t bitmap = granules / 8 > 16 ? granules / 8 : 16;
    cr_assert_leq(steady - empty, (64 + 128) * 56 + find_words * 4 + 3 * bitmap,
                  "%zu bytes stayed after freeing", steady - empty);
    expect_meta_matches(cache, baseline);

    for (int round = 0; round < 3; round++) {
        churn(cache, far, 40, 6);
        code_cache_get_stats(cache, &st);
        cr_assert_eq(st.meta_bytes, steady, "round %d: bookkeeping grew", round);
        expect_meta_matches(cache, baseline);
    }
    code_cache_destroy(cache);
    cr_assert_eq(jemalloc_allocated(), baseline);
    far_function_release(far);
}

Test(meta, arenas_come_from_a_pool_not_one_per_cache)
{
    /* The first cache of the process may create the pool's first arena. */
    code_cache_destroy(test_cache_near_helper(PAGE));
    unsigned narenas = jemalloc_narenas();
    for (int i = 0; i < 50; i++)
        code_cache_destroy(test_cache_near_helper(PAGE));
    cr_assert_eq(jemalloc_narenas(), narenas, "create/destroy cycles created arenas");

    struct code_cache *a = test_cache_near_helper(PAGE);
    struct code_cache *b = test_cache_near_helper(PAGE);
    unsigned two = jemalloc_narenas();
    cr_assert_leq(two, narenas + 1, "two live caches: one arena from the pool, one new");
    code_cache_destroy(a);
    code_cache_destroy(b);
    for (int i = 0; i < 10; i++) {
        a = test_cache_near_helper(PAGE);
        b = test_cache_near_helper(PAGE);
        code_cache_destroy(b);
        code_cache_destroy(a);
    }
    cr_assert_eq(jemalloc_narenas(), two, "both arenas were reused");
}

Test(meta, two_caches_keep_separate_bookkeeping)
{
    struct code_cache *a = test_cache_near_helper(64 * PAGE);
    struct code_cache *b = test_cache_near_helper(64 * PAGE);
    struct code_cache_stats sa, sb, sb2;
    code_cache_get_stats(a, &sa);
    code_cache_get_stats(b, &sb);
    struct code_chunk *chunks[20];
    for (int i = 0; i < 20; i++) {
        chunks[i] = code_cache_alloc(a, PAGE);
        cr_assert_not_null(chunks[i]);
    }
    code_cache_get_stats(b, &sb2);
    cr_assert_eq(sb2.meta_bytes, sb.meta_bytes, "b's arena saw a's records");
    code_cache_get_stats(a, &sa);
    cr_assert_geq(sa.meta_bytes, sb.meta_bytes + 20 * 56, "20 chunk records of 56 bytes");
    code_cache_destroy(b);
    check_maps(a);
    for (int i = 0; i < 20; i++)
        code_chunk_free(chunks[i]);
    check_maps(a);
    code_cache_destroy(a);
}

Test(meta, create_destroy_cycles_do_not_grow_the_address_space)
{
    /* Debian's jemalloc keeps ~2 MiB of address space per destroyed arena (FACTS.md): 1,000
     * cycles would leave ~2 GiB behind if arenas were destroyed instead of reset and reused. */
    const int cycles = test_under_valgrind() ? 200 : 1000;
    for (int i = 0; i < 3; i++)
        code_cache_destroy(test_cache_near_helper(16 * PAGE));
    size_t before = vm_size();
    for (int i = 0; i < cycles; i++) {
        /* Not test_cache_create: no check_maps here, so its RW view need not be looked for. */
        struct code_cache_options opts = {
            .size = 16 * PAGE, .near = (const void *)helper_triple, .flags = test_backend_flags()};
        struct code_cache *cache = code_cache_create(&opts);
        cr_assert_not_null(cache, "cycle %d: %s", i, strerror(errno));
        struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
        cr_assert_not_null(chunk);
        jit_fn fn = emit_call(chunk, helper_triple, i);
        cr_assert_eq(code_chunk_seal(chunk), 0);
        cr_assert_eq(fn(), 3 * i + 1);
        code_cache_destroy(cache);
    }
    size_t after = vm_size();
    size_t growth = after > before ? after - before : 0;
    cr_log_info("%d create/destroy cycles: VmSize %zu -> %zu KiB", cycles, before >> 10,
                after >> 10);
    /* Under valgrind, memcheck's shadow memory grows too: each cycle places its cache at a new
     * random address and touches a few fresh 64 KiB stretches of address space (the exec probe's
     * page, the first step committed), each costing a secondary shadow map that memcheck keeps
     * (measured: about 28 KiB a cycle, and none natively). Still two orders of magnitude below
     * the 2 MiB per cycle this test is about. */
    const size_t allowed = test_under_valgrind() ? (size_t)cycles * (64 << 10) : (size_t)4 << 20;
    cr_assert_leq(growth, allowed, "%d cycles grew VmSize by %zu KiB", cycles, growth >> 10);
}

Test(meta, memcheck_sees_the_records)
{
    if (!test_under_valgrind())
        cr_skip_test("only meaningful under valgrind");
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk);
    /* A chunk handle points at its record: addressable while the cache lives... */
    unsigned char vbits[8];
    cr_assert_eq(VALGRIND_GET_VBITS(chunk, vbits, sizeof vbits), 1);
    code_cache_destroy(cache);
    /* ...and known to memcheck as freed afterwards (mallocx alone would leave it addressable):
     * so a use after destroy, or a record never freed, is reported like any heap block. */
    cr_assert_eq(VALGRIND_GET_VBITS(chunk, vbits, sizeof vbits), 3);
}
