/*
 * Misuse that must fault deterministically rather than corrupt anything: writing to sealed code,
 * running code before it is sealed, jumping into the unused tail of a chunk, calling freed code,
 * freeing twice. Each test expects the process to die of one signal, at the expected address
 * (expect_fatal_signal), after checking the maps. Run once per backend (helpers.h): where the
 * signal differs by backend (an inaccessible page raises SIGSEGV, the dual backend's traps
 * SIGTRAP), the fault happens in a child process (expect_child_fault) and the test names the
 * signal it expects.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <string.h>

#include "helpers.h"

#define PAGE test_page_size()

/* Volatile: the compiler must really perform the stores and calls these tests exist for. */
static void poke(void *p)
{
    *(volatile unsigned char *)p = 0x90;
}

static void run(const void *code)
{
    jit_fn volatile fn = (jit_fn)code;
    fn();
}

Test(chunk_faults, writing_to_a_sealed_chunk_faults, .signal = SIGSEGV)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk);
    jit_fn fn = emit_call(chunk, helper_triple, 1);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    check_maps(cache);
    cr_assert_eq(fn(), 4);
    expect_fatal_signal(SIGSEGV, (const void *)fn, (const char *)fn + 1);
    poke((void *)fn);
    cr_assert_fail("a write to sealed code went through");
}

static void run_arg(void *code)
{
    run(code);
}

/* mprotect: an OPEN chunk is rw-, so nothing in it runs. Dual: the RX view is r-x from the start
 * (sealing changes no protection), so code written there before the seal is not stopped by the
 * hardware; what stops a stray jump is that every byte not written yet is a trap. */
Test(chunk_faults, running_an_open_chunk_faults)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    const bool dual = test_cache_is_dual(cache);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk);
    jit_fn fn = emit_return(chunk, 1);
    check_maps(cache);
    expect_open_chunk(chunk);
    const unsigned char *unwritten = (const unsigned char *)fn + 64;
    if (!dual)
        expect_child_fault(SIGSEGV, (const void *)fn, (const char *)fn + 1, run_arg, (void *)fn);
    expect_child_fault(dual ? SIGTRAP : SIGSEGV, unwritten, unwritten + 1, run_arg,
                       (void *)unwritten);
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(chunk_faults, running_the_unused_tail_of_a_sealed_chunk_traps, .signal = SIGTRAP)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk);
    jit_fn fn = emit_return(chunk, 1);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    check_maps(cache);
    cr_assert_eq(fn(), 1);
    /* Halfway up the chunk: no function was ever written there. */
    const unsigned char *tail = (const unsigned char *)code_chunk_span(chunk).rx + PAGE / 2;
    expect_fatal_signal(SIGTRAP, tail, tail + 1);
    run(tail);
    cr_assert_fail("the unused tail did not trap");
}

Test(chunk_faults, the_gap_between_functions_and_veneers_traps, .signal = SIGTRAP)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    int (*far)(int) = far_function(cache);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk);
    jit_fn fn = emit_call(chunk, far, 3);
    const unsigned char *veneer = code_chunk_call_target(chunk, (const void *)far);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    check_maps(cache);
    cr_assert_eq(fn(), 11);
    /* The byte just below the veneer was never handed out. */
    expect_fatal_signal(SIGTRAP, veneer - 1, veneer);
    run(veneer - 1);
    cr_assert_fail("the gap below the veneers did not trap");
}

/* mprotect: a freed span is --- (SIGSEGV). Dual: it is filled with traps at once (SIGTRAP), and
 * becomes --- only when its pages are given back in a batch. */
Test(chunk_faults, calling_freed_code_faults)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    const bool dual = test_cache_is_dual(cache);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk);
    jit_fn fn = emit_call(chunk, helper_triple, 2);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    cr_assert_eq(fn(), 7);
    struct code_span span = code_chunk_span(chunk);
    code_chunk_free(chunk);
    check_maps(cache);
    /* Other chunks come and go: the freed span stays in quarantine while the cache bumps. */
    for (int i = 0; i < 8; i++) {
        struct code_chunk *other = code_cache_alloc(cache, PAGE);
        cr_assert_not_null(other);
        emit_return(other, i);
        cr_assert_eq(code_chunk_seal(other), 0);
        check_maps(cache);
    }
    expect_freed_span(span);
    expect_prot((const void *)fn, PAGE, dual ? "r-x" : "---");
    expect_child_fault(dual ? SIGTRAP : SIGSEGV, (const void *)fn, (const char *)fn + 1, run_arg,
                       (void *)fn);
    code_cache_destroy(cache);
}

/* Through the address where the chunk runs: mprotect makes it ---, and the dual backend's RX view
 * is never writable. (The dual backend's RW view is the file itself, rw- for the life of the
 * cache: a stale write through a freed chunk's .rw does not fault there.) */
Test(chunk_faults, writing_to_a_freed_open_chunk_faults, .signal = SIGSEGV)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    struct code_chunk *chunk = code_cache_alloc(cache, 2 * PAGE);
    cr_assert_not_null(chunk);
    struct code_span span = code_chunk_span(chunk);
    memset(span.rw, 0x90, 2 * PAGE);
    code_chunk_free(chunk);
    check_maps(cache);
    expect_freed_span(span);
    unsigned char *rx = span.rx;
    expect_fatal_signal(SIGSEGV, rx + PAGE, rx + PAGE + 1);
    poke(rx + PAGE);
    cr_assert_fail("a write to a freed chunk went through");
}

Test(chunk_faults, calling_code_flushed_by_reset_faults, .signal = SIGSEGV)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk);
    jit_fn fn = emit_return(chunk, 5);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    cr_assert_eq(fn(), 5);
    cr_assert_eq(code_cache_reset(cache), 0);
    check_maps(cache);
    expect_fatal_signal(SIGSEGV, (const void *)fn, (const char *)fn + 1);
    fn();
    cr_assert_fail("code ran after reset");
}

Test(chunk_faults, freeing_a_chunk_twice_aborts, .signal = SIGABRT)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk);
    code_chunk_free(chunk);
    check_maps(cache);
    code_chunk_free(chunk);
    cr_assert_fail("a double free went unnoticed");
}

Test(chunk_faults, a_double_free_is_caught_after_more_allocations, .signal = SIGABRT)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk);
    code_chunk_free(chunk);
    /* The freed record is not handed to the next chunks: they would otherwise make the second
     * free below release one of them silently. */
    for (int i = 0; i < 16; i++) {
        struct code_chunk *other = code_cache_alloc(cache, PAGE);
        cr_assert_not_null(other);
        cr_assert_neq(other, chunk, "allocation %d reused the freed record", i);
        check_maps(cache);
    }
    code_chunk_free(chunk);
    cr_assert_fail("a double free went unnoticed");
}

Test(chunk_faults, freeing_a_chunk_after_reset_aborts, .signal = SIGABRT)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    cr_assert_eq(code_cache_reset(cache), 0);
    check_maps(cache);
    code_chunk_free(chunk);
    cr_assert_fail("freeing a chunk flushed by reset went unnoticed");
}
