/*
 * Proof that the tests of a cross build run in the emulator, workers included: this program
 * writes x86-64 machine code into a cache and calls it. Built for aarch64 and run under qemu, the
 * call meets an undefined instruction and the test fails; it would pass only if Criterion's worker
 * ran the test natively on an x86-64 host, which is what happens to an x86-64 guest under
 * qemu-x86_64 (FACTS.md). Listed in XFAIL_TESTS of emulated builds: if it ever passes (XPASS),
 * make check fails.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "code_cache.h"

Test(emulator_bites, runs_x86_64_code)
{
    static const unsigned char mov_eax_42_ret[] = {0xb8, 42, 0, 0, 0, 0xc3};
    struct code_cache *cache = code_cache_create(NULL);
    cr_assert_not_null(cache);
    struct code_chunk *chunk = code_cache_alloc(cache, 1);
    cr_assert_not_null(chunk);
    struct code_span span = code_chunk_alloc(chunk, sizeof mov_eax_42_ret, 16);
    cr_assert_not_null(span.rw);
    memcpy(span.rw, mov_eax_42_ret, sizeof mov_eax_42_ret);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    int (*fn)(void) = (int (*)(void))span.rx;
    cr_assert_eq(fn(), 42, "x86-64 code ran: this worker is not emulated");
    code_cache_destroy(cache);
}
