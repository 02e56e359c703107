/*
 * CODE_CACHE_BTI: guarded code pages on aarch64 (run under qemu -cpu max, which enforces BTI), for
 * both backends; refused with EINVAL where there is no BTI (x86-64, or an aarch64 CPU or kernel
 * without it).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

#include "code_cache.h"

#if defined(__aarch64__)

static const uint32_t bti_c = 0xd503245f, mov_w0_42 = 0x52800540, ret = 0xd65f03c0;

/* A guarded cache of the given backend, or the test is skipped where the CPU has no BTI. */
static struct code_cache *bti_cache(unsigned backend)
{
    struct code_cache_options opts = {.size = 1 << 20, .flags = CODE_CACHE_BTI | backend};
    struct code_cache *cache = code_cache_create(&opts);
    if (cache == NULL && errno == EINVAL)
        cr_skip_test("no BTI on this CPU or kernel (create: EINVAL)");
    cr_assert_not_null(cache, "code_cache_create with CODE_CACHE_BTI: %s", strerror(errno));
    return cache;
}

/* Seals the instructions into a chunk of cache and calls them through a pointer (blr). */
static int call_code(struct code_cache *cache, const uint32_t *code, size_t n)
{
    struct code_chunk *chunk = code_cache_alloc(cache, 64);
    cr_assert_not_null(chunk);
    struct code_span span = code_chunk_alloc(chunk, n * 4, 16);
    cr_assert_not_null(span.rw);
    memcpy(span.rw, code, n * 4);
    cr_assert_eq(code_chunk_seal(chunk), 0, "seal: %s", strerror(errno));
    int (*fn)(void) = (int (*)(void))span.rx;
    return fn();
}

static void landing_pad_runs(unsigned backend)
{
    struct code_cache *cache = bti_cache(backend);
    const uint32_t code[] = {bti_c, mov_w0_42, ret};
    cr_assert_eq(call_code(cache, code, 3), 42);
    code_cache_destroy(cache);
}

static void missing_landing_pad_faults(unsigned backend)
{
    struct code_cache *cache = bti_cache(backend);
    const uint32_t code[] = {mov_w0_42, ret};
    call_code(cache, code, 2);
    cr_assert_fail("an indirect call to a guarded page without a landing pad ran");
}

Test(bti, landing_pad_runs_mprotect)
{
    landing_pad_runs(0);
}

Test(bti, landing_pad_runs_dual)
{
    landing_pad_runs(CODE_CACHE_DUAL_MAP);
}

Test(bti, missing_landing_pad_faults_mprotect, .signal = SIGILL)
{
    missing_landing_pad_faults(0);
}

Test(bti, missing_landing_pad_faults_dual, .signal = SIGILL)
{
    missing_landing_pad_faults(CODE_CACHE_DUAL_MAP);
}

Test(bti, without_the_flag_pages_are_not_guarded)
{
    struct code_cache *cache = code_cache_create(NULL);
    cr_assert_not_null(cache);
    const uint32_t code[] = {mov_w0_42, ret};
    cr_assert_eq(call_code(cache, code, 2), 42);
    code_cache_destroy(cache);
}

#else

Test(bti, refused_where_there_is_no_bti)
{
    struct code_cache_options opts = {.flags = CODE_CACHE_BTI};
    errno = 0;
    cr_assert_null(code_cache_create(&opts));
    cr_assert_eq(errno, EINVAL);
    opts.flags |= CODE_CACHE_DUAL_MAP;
    errno = 0;
    cr_assert_null(code_cache_create(&opts));
    cr_assert_eq(errno, EINVAL);
}

#endif
