/*
 * System calls failing under the library (tests/fault.c interposes on mmap, munmap, mprotect and
 * madvise for calls made from libcodecache): every failure returns the documented error, leaves
 * the cache as it was, leaks nothing, and the cache keeps working. First one targeted test per
 * call site, then a sweep that makes each call of a whole scenario fail in turn.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "fault.h"
#include "helpers.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define PAGE test_page_size()

static void setup(void)
{
    /* Placement then takes the same path on every run of a scenario, so the nth call of a rerun
     * is the nth call of the counting run. */
    setenv("CODE_CACHE_NO_RANDOM", "1", 1);
}

TestSuite(syscall_failures, .init = setup);

/* Every field except the protection-change counter (a failed commit may have changed and
 * restored protections) and meta_bytes (the free-span index may have grown for good). */
static void expect_same_stats(const struct code_cache *cache, const struct code_cache_stats *a,
                              const char *what)
{
    struct code_cache_stats b;
    code_cache_get_stats(cache, &b);
    cr_assert(a->committed == b.committed && a->in_use == b.in_use && a->free == b.free &&
                  a->never_used == b.never_used && a->retired == b.retired &&
                  a->free_spans == b.free_spans && a->open_chunks == b.open_chunks &&
                  a->sealed_chunks == b.sealed_chunks && a->chunks_allocated == b.chunks_allocated,
              "%s: a failed call changed the cache's statistics", what);
}

Test(syscall_failures, alloc_fails_cleanly_when_mprotect_fails)
{
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    /* Every commit fails: the step ahead, then the chunk alone. */
    fault_inject(FAULT_MPROTECT, PROT_READ | PROT_WRITE, 0, ENOMEM);
    errno = 0;
    cr_assert_null(code_cache_alloc(cache, 2 * PAGE));
    cr_assert_eq(errno, ENOMEM);
    cr_assert_eq(fault_failures(), 2);
    expect_same_stats(cache, &st, "alloc");
    check_maps(cache);
    fault_clear();
    struct code_chunk *chunk = code_cache_alloc(cache, 2 * PAGE);
    cr_assert_not_null(chunk);
    cr_assert_eq((uintptr_t)code_chunk_span(chunk).rx, st.base, "the bump pointer had not moved");
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(syscall_failures, populate_unknown_to_the_kernel_is_harmless)
{
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    fault_inject(FAULT_MADVISE, MADV_POPULATE_WRITE, 0, EINVAL);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk, "EINVAL from MADV_POPULATE_WRITE must be ignored");
    cr_assert_eq(fault_failures(), 1);
    check_maps(cache);
    jit_fn fn = emit_call(chunk, helper_triple, 9);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    cr_assert_eq(fn(), 28);
    fault_clear();
    code_cache_destroy(cache);
}

Test(syscall_failures, a_step_ahead_that_cannot_be_committed_does_not_fail_the_alloc)
{
    struct code_cache *cache = test_cache_near_helper(64 * PAGE);
    for (int kind = 0; kind < 2; kind++) {
        if (kind == 0)
            fault_inject(FAULT_MPROTECT, PROT_READ | PROT_WRITE, 1, ENOMEM);
        else
            fault_inject(FAULT_MADVISE, MADV_POPULATE_WRITE, 1, ENOMEM);
        struct code_chunk *chunk = code_cache_alloc(cache, 2 * PAGE);
        cr_assert_not_null(chunk, "the chunk alone is committed: %s", strerror(errno));
        cr_assert_eq(fault_failures(), 1);
        fault_clear();
        struct code_cache_stats st;
        code_cache_get_stats(cache, &st);
        cr_assert_eq(st.committed_ahead, 0, "nothing ahead after the step failed");
        check_maps(cache);
        jit_fn fn = emit_call(chunk, helper_triple, kind);
        cr_assert_eq(code_chunk_seal(chunk), 0);
        cr_assert_eq(fn(), 3 * kind + 1);
    }
    code_cache_destroy(cache);
}

Test(syscall_failures, alloc_fails_with_ENOMEM_when_populate_fails)
{
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    fault_inject(FAULT_MADVISE, MADV_POPULATE_WRITE, 0, ENOMEM);
    errno = 0;
    cr_assert_null(code_cache_alloc(cache, 4 * PAGE));
    cr_assert_eq(errno, ENOMEM);
    expect_same_stats(cache, &st, "alloc");
    check_maps(cache);
    expect_prot((void *)st.base, 4 * PAGE, "---");
    fault_clear();
    struct code_chunk *chunk = code_cache_alloc(cache, 4 * PAGE);
    cr_assert_not_null(chunk);
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(syscall_failures, refused_exec_permission_keeps_the_chunk_open_and_usable)
{
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk);
    jit_fn a = emit_call(chunk, helper_triple, 1);
    /* SELinux execmem: every request for PROT_EXEC is refused. */
    fault_inject(FAULT_MPROTECT, PROT_READ | PROT_EXEC, 0, EACCES);
    errno = 0;
    cr_assert_eq(code_chunk_seal(chunk), -1);
    cr_assert_eq(errno, EACCES);
    check_maps(cache);
    expect_prot(code_chunk_span(chunk).rx, PAGE, "rw-");
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.open_chunks, 1);
    cr_assert_eq(st.sealed_chunks, 0);

    /* Still OPEN: more code can be written, and sealing is refused again. */
    jit_fn b = emit_call(chunk, helper_triple, 2);
    jit_fn c = emit_return(chunk, 77);
    errno = 0;
    cr_assert_eq(code_chunk_seal(chunk), -1);
    cr_assert_eq(errno, EACCES);
    cr_assert_eq(fault_failures(), 2);
    check_maps(cache);

    /* The refusal is lifted: the same chunk seals and all of its code runs. */
    fault_clear();
    cr_assert_eq(code_chunk_seal(chunk), 0);
    check_maps(cache);
    expect_prot(code_chunk_span(chunk).rx, PAGE, "r-x");
    cr_assert_eq(a(), 4);
    cr_assert_eq(b(), 7);
    cr_assert_eq(c(), 77);
    code_cache_destroy(cache);
}

Test(syscall_failures, free_that_cannot_revoke_access_retires_the_span_until_reset)
{
    struct code_cache *cache = test_cache_near_helper(4 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, 2 * PAGE);
    cr_assert_not_null(chunk);
    jit_fn fn = emit_return(chunk, 5);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    fault_inject(FAULT_MPROTECT, PROT_NONE, 1, ENOMEM);
    code_chunk_free(chunk);
    cr_assert_eq(fault_failures(), 1);
    fault_clear();
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.retired, 2 * PAGE);
    cr_assert_eq(st.free, 2 * PAGE, "only the never-used half is free");
    cr_assert_eq(st.free_spans, 0, "a retired span is not a free one");
    cr_assert_eq(st.sealed_chunks, 0);
    check_maps(cache);
    expect_prot((const void *)fn, 2 * PAGE, "r-x");

    /* The retired span is never handed out, not even when nothing else is left. */
    struct code_chunk *rest = code_cache_alloc(cache, 2 * PAGE);
    cr_assert_not_null(rest);
    errno = 0;
    cr_assert_null(code_cache_alloc(cache, PAGE));
    cr_assert_eq(errno, ENOSPC);
    check_maps(cache);

    /* Reset retries the release: everything comes back. */
    cr_assert_eq(code_cache_reset(cache), 0);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.retired, 0);
    cr_assert_eq(st.free, 4 * PAGE);
    check_maps(cache);
    struct code_chunk *all = code_cache_alloc(cache, 4 * PAGE);
    cr_assert_not_null(all);
    expect_zero_chunk(all);
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(syscall_failures, free_that_cannot_discard_leaves_dirty_pages_discarded_before_reuse)
{
    struct code_cache *cache = test_cache_near_helper(4 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, 2 * PAGE);
    cr_assert_not_null(chunk);
    emit_return(chunk, 5);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    fault_inject(FAULT_MADVISE, MADV_DONTNEED, 1, EAGAIN);
    code_chunk_free(chunk);
    cr_assert_eq(fault_failures(), 1);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free, 4 * PAGE, "a dirty span is still free");
    cr_assert_eq(st.retired, 0);
    check_maps(cache);
    struct code_chunk *other = code_cache_alloc(cache, 2 * PAGE);
    cr_assert_not_null(other);

    /* The old code is still in memory; reusing the span must discard it first, and a discard
     * that fails again makes the allocation fail without handing out old code. (The failed
     * allocation releases the pages again, and that discard fails too: they stay dirty.) */
    fault_inject(FAULT_MADVISE, MADV_DONTNEED, 0, EAGAIN);
    code_cache_get_stats(cache, &st);
    errno = 0;
    cr_assert_null(code_cache_alloc(cache, 2 * PAGE));
    cr_assert_eq(errno, EAGAIN);
    cr_assert_eq(fault_failures(), 2);
    expect_same_stats(cache, &st, "alloc of a dirty span");
    check_maps(cache);

    fault_clear();
    struct code_chunk *reused = code_cache_alloc(cache, 2 * PAGE);
    cr_assert_not_null(reused);
    cr_assert_eq(fault_calls(FAULT_MADVISE), 2, "one discard, one populate");
    cr_assert_eq(code_chunk_span(reused).rx, (void *)st.base);
    expect_zero_chunk(reused);
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(syscall_failures, reset_that_cannot_revoke_access_changes_nothing)
{
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    struct code_chunk *a = code_cache_alloc(cache, PAGE);
    struct code_chunk *b = code_cache_alloc(cache, 2 * PAGE);
    cr_assert(a != NULL && b != NULL);
    jit_fn fn = emit_return(a, 12);
    cr_assert_eq(code_chunk_seal(a), 0);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    fault_inject(FAULT_MPROTECT, PROT_NONE, 1, ENOMEM);
    errno = 0;
    cr_assert_eq(code_cache_reset(cache), -1);
    cr_assert_eq(errno, ENOMEM);
    fault_clear();
    expect_same_stats(cache, &st, "reset");
    check_maps(cache);
    cr_assert_eq(fn(), 12, "sealed code still runs");
    jit_fn fb = emit_return(b, 3);
    expect_prot(code_chunk_span(b).rx, 2 * PAGE, "rw-");
    cr_assert_eq(code_chunk_seal(b), 0, "and the OPEN chunk is still open");
    cr_assert_eq(fb(), 3);
    cr_assert_eq(code_cache_reset(cache), 0);
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(syscall_failures, reset_that_cannot_discard_keeps_old_pages_out_of_reach)
{
    struct code_cache *cache = test_cache_near_helper(4 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, 4 * PAGE);
    cr_assert_not_null(chunk);
    memset(code_chunk_span(chunk).rw, 0xcc, 4 * PAGE);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    fault_inject(FAULT_MADVISE, MADV_DONTNEED, 1, EAGAIN);
    cr_assert_eq(code_cache_reset(cache), 0, "the chunks are freed all the same");
    cr_assert_eq(fault_failures(), 1);
    fault_clear();
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free, 4 * PAGE);
    cr_assert_eq(st.committed, 0);
    cr_assert_eq(st.free_spans, 1, "the whole used part, one dirty span");
    check_maps(cache);
    struct code_chunk *again = code_cache_alloc(cache, 4 * PAGE);
    cr_assert_not_null(again);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free_spans, 0);
    expect_zero_chunk(again);
    check_maps(cache);
    code_cache_destroy(cache);
}

/* ---- The sweep: each call of one kind made to fail in turn. ---- */

static int injected_err;
static char context[64];

static struct code_chunk *sweep_alloc(struct code_cache *cache, size_t size)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    struct code_chunk *chunk = code_cache_alloc(cache, size);
    if (chunk == NULL && errno != ENOSPC) {
        cr_assert_eq(errno, injected_err, "%s: alloc failed with %s", context, strerror(errno));
        expect_same_stats(cache, &st, context);
        check_maps(cache);
        chunk = code_cache_alloc(cache, size);
    }
    if (chunk != NULL) {
        check_maps(cache);
        expect_zero_chunk(chunk);
    } else {
        cr_assert_eq(errno, ENOSPC, "%s: alloc failed twice: %s", context, strerror(errno));
    }
    return chunk;
}

static void sweep_seal(struct code_cache *cache, struct code_chunk *chunk)
{
    if (code_chunk_seal(chunk) != 0) {
        cr_assert_eq(errno, injected_err, "%s: seal failed with %s", context, strerror(errno));
        check_maps(cache);
        expect_prot(code_chunk_span(chunk).rx, code_chunk_span(chunk).size, "rw-");
        cr_assert_eq(code_chunk_seal(chunk), 0, "%s: seal failed twice", context);
    }
    check_maps(cache);
}

static void sweep_reset(struct code_cache *cache, jit_fn survivor, int value)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    if (code_cache_reset(cache) != 0) {
        cr_assert_eq(errno, injected_err, "%s: reset failed with %s", context, strerror(errno));
        expect_same_stats(cache, &st, context);
        check_maps(cache);
        cr_assert_eq(survivor(), value, "%s: code broken by a failed reset", context);
        cr_assert_eq(code_cache_reset(cache), 0, "%s: reset failed twice", context);
    }
    check_maps(cache);
}

/* Create, fill, seal, run, free, exhaust, reuse, reset, reuse, destroy: every path that makes a
 * system call, small enough to be run once per call. */
static void sweep_scenario(void)
{
    size_t baseline = jemalloc_allocated();
    struct code_cache_options opts = {.size = 10 * PAGE, .near = (const void *)helper_triple};
    struct code_cache *cache = code_cache_create(&opts);
    if (cache == NULL) {
        cr_assert(errno == injected_err || errno == ENOMEM, "%s: create failed with %s", context,
                  strerror(errno));
        cr_assert_eq(jemalloc_allocated(), baseline, "%s: a failed create leaked", context);
        cache = code_cache_create(&opts);
        cr_assert_not_null(cache, "%s: create failed twice: %s", context, strerror(errno));
    }
    check_maps(cache);

    struct code_chunk *a = sweep_alloc(cache, 3 * PAGE);
    cr_assert_not_null(a);
    jit_fn fa = emit_call(a, helper_triple, 10);
    sweep_seal(cache, a);
    cr_assert_eq(fa(), 31);
    struct code_chunk *b = sweep_alloc(cache, 2 * PAGE);
    cr_assert_not_null(b);
    jit_fn fb = emit_return(b, 20);
    sweep_seal(cache, b);
    cr_assert_eq(fb(), 20);

    code_chunk_free(a);
    check_maps(cache);
    /* Exhaust the never-used space, then reuse a's span (unless its release failed). */
    struct code_chunk *small[10];
    size_t n = 0;
    while (n < 10 && (small[n] = sweep_alloc(cache, PAGE)) != NULL)
        n++;
    cr_assert_geq(n, 5, "%s: only %zu chunks", context, n);
    for (size_t i = 0; i < n; i++) {
        code_chunk_free(small[i]);
        check_maps(cache);
    }

    sweep_reset(cache, fb, 20);
    struct code_chunk *c = sweep_alloc(cache, 4 * PAGE);
    cr_assert_not_null(c);
    jit_fn fc = emit_call(c, helper_triple, 30);
    sweep_seal(cache, c);
    cr_assert_eq(fc(), 91);
    code_chunk_free(c);
    check_maps(cache);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    code_cache_destroy(cache);
    cr_assert_eq(jemalloc_allocated(), baseline, "%s: jemalloc holds leaked bookkeeping", context);
    const uintptr_t lo = st.base - PAGE;
    const size_t len = st.reserved + 2 * PAGE;
    if (mapped_bytes((const void *)lo, len) != 0) {
        /* Only an munmap refused for the whole reservation leaves it behind: destroy cannot
         * report that (it returns nothing), and it cannot happen outside a test, since unmapping
         * whole mappings never splits one. */
        cr_assert_eq(injected_err, EINVAL, "%s: destroy left the reservation mapped", context);
        cr_assert_eq(munmap((void *)lo, len), 0);
    }
}

static void sweep(enum fault_call call, const char *name, int err)
{
    injected_err = 0;
    /* The exec probe runs once per process (a yes is remembered): let it run before the
     * counting, or the counting run would count calls no later run makes. tests/exec_probe.c
     * makes the probe itself fail. */
    code_cache_destroy(code_cache_create(NULL));
    snprintf(context, sizeof context, "%s, counting run", name);
    fault_clear();
    sweep_scenario();
    unsigned total = fault_calls(call);
    cr_log_info("%s: %u calls from the library in the scenario", name, total);
    for (unsigned n = 1; n <= total; n++) {
        snprintf(context, sizeof context, "%s #%u failing with %s", name, n, strerror(err));
        injected_err = err;
        fault_inject(call, FAULT_ANY, n, err);
        sweep_scenario();
        cr_assert_eq(fault_failures(), 1, "%s: the call was not made", context);
        fault_clear();
    }
}

Test(syscall_failures, every_mprotect_failure_is_clean)
{
    sweep(FAULT_MPROTECT, "mprotect", ENOMEM);
}

Test(syscall_failures, every_madvise_failure_is_clean)
{
    sweep(FAULT_MADVISE, "madvise", EAGAIN);
}

Test(syscall_failures, every_mmap_failure_is_clean)
{
    sweep(FAULT_MMAP, "mmap", ENOMEM);
}

Test(syscall_failures, every_munmap_failure_is_clean)
{
    sweep(FAULT_MUNMAP, "munmap", EINVAL);
}
