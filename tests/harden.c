/*
 * CODE_CACHE_DUAL_HARDEN: a page of the RW view becomes read-only once every granule on it is
 * sealed code, and writable again for a free or a patch. A stray write through the RW view to
 * finished code faults; the library's own writes still work.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <string.h>

#include "helpers.h"

#define PAGE test_page_size()

static struct code_cache *hardened(void)
{
    struct code_cache_options opts = {.size = 64 * PAGE,
                                      .near = (const void *)helper_triple,
                                      .flags = CODE_CACHE_DUAL_MAP | CODE_CACHE_DUAL_HARDEN};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "create: %s", strerror(errno));
    return cache;
}

/* Fills the first page with one 64-byte function per granule, each returning its index. */
static size_t fill_page(struct code_cache *cache, struct code_chunk **chunks, jit_fn *fns)
{
    size_t n = PAGE / 64;
    for (size_t i = 0; i < n; i++) {
        chunks[i] = code_cache_alloc(cache, 64);
        cr_assert_not_null(chunks[i]);
        fns[i] = emit_return(chunks[i], (int)i);
        cr_assert_eq(code_chunk_seal(chunks[i]), 0);
    }
    return n;
}

Test(harden, a_page_of_sealed_code_is_read_only_in_the_rw_view)
{
    struct code_cache *cache = hardened();
    struct code_chunk *chunks[1024];
    jit_fn fns[1024];
    size_t n = fill_page(cache, chunks, fns);
    void *rw = code_chunk_span(chunks[0]).rw;
    expect_prot(rw, PAGE, "r--");
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(fns[i](), (int)i);

    /* A patch opens the page for its write and closes it again. */
    cr_assert_eq(test_patch_return(chunks[3], fns[3], 1234), 0);
    cr_assert_eq(fns[3](), 1234);
    expect_prot(rw, PAGE, "r--");

    /* A free makes it writable (its traps are written there), and it stays so while a granule
     * of it is free. */
    code_chunk_free(chunks[5]);
    expect_prot(rw, PAGE, "rw-");
    cr_assert_eq(fns[6](), 6);

    cr_assert_eq(code_cache_reset(cache), 0);
    expect_prot(rw, PAGE, "rw-");
    code_cache_destroy(cache);
}

Test(harden, a_stray_write_to_sealed_code_faults, .signal = SIGSEGV)
{
    struct code_cache *cache = hardened();
    struct code_chunk *chunks[1024];
    jit_fn fns[1024];
    fill_page(cache, chunks, fns);
    unsigned char *rw = code_chunk_span(chunks[7]).rw;
    expect_fatal_signal(SIGSEGV, rw, rw + 64);
    rw[1] = 0x90; /* the attack: change finished code through the RW view */
    code_cache_destroy(cache);
}

Test(harden, only_with_the_dual_backend)
{
    struct code_cache_options opts = {.size = 64 * PAGE, .flags = CODE_CACHE_DUAL_HARDEN};
    errno = 0;
    cr_assert_null(code_cache_create(&opts));
    cr_assert_eq(errno, EINVAL);
}

/* A hardened cache does not reuse freed granules early (the ready quarantine of code_cache_alloc):
 * each reuse among sealed code would make a read-only page writable and the seal read-only again.
 * With more than 1 MiB of freed pages waiting, still committed and trapped, the next chunk still
 * comes from never-used space; the same without hardening takes the lowest freed granule. */
Test(harden, freed_granules_wait_while_never_used_space_remains)
{
    enum { PAGES = 300 };
    for (int hard = 0; hard < 2; hard++) {
        struct code_cache_options opts = {.size = 4 * PAGES * PAGE,
                                          .near = (const void *)helper_triple,
                                          .flags = CODE_CACHE_DUAL_MAP |
                                                   (hard ? CODE_CACHE_DUAL_HARDEN : 0)};
        struct code_cache *cache = code_cache_create(&opts);
        cr_assert_not_null(cache, "create: %s", strerror(errno));
        static struct code_chunk *chunks[PAGES];
        for (size_t i = 0; i < PAGES; i++) {
            chunks[i] = code_cache_alloc(cache, PAGE);
            cr_assert_not_null(chunks[i]);
            emit_return(chunks[i], (int)i);
            cr_assert_eq(code_chunk_seal(chunks[i]), 0);
        }
        struct code_cache_stats st;
        for (size_t i = 0; i < PAGES; i++)
            code_chunk_free(chunks[i]);
        code_cache_get_stats(cache, &st);
        cr_assert_geq(st.free_ready, (size_t)1 << 20, "%zu bytes ready", st.free_ready);
        struct code_chunk *next = code_cache_alloc(cache, 64);
        cr_assert_not_null(next);
        uintptr_t at = (uintptr_t)code_chunk_span(next).rx;
        if (hard)
            cr_assert_eq(at, st.base + PAGES * PAGE, "hardened: never-used space first");
        else
            cr_assert_eq(at, st.base, "the lowest ready granule first");
        check_maps(cache);
        code_cache_destroy(cache);
    }
}
