/*
 * Executable memory denied is known at create: code_cache_create asks, with its low guard page,
 * whether mprotect(PROT_EXEC) is allowed, and fails with EACCES when it is not (SELinux execmem,
 * PaX, a seccomp filter answering EPERM). A yes is remembered for the process, so each test here
 * (Criterion runs each in a process of its own) warms the arena pool up with the dual backend,
 * which does not ask, before the refusals. Here the refusal is interposed (tests/fault.c);
 * tests/exec_denied.c makes the kernel itself refuse. The dual-mapped backend never mprotects
 * anything to PROT_EXEC, so it keeps working where only that is denied.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "fault.h"
#include "place_helpers.h"

#define PAGE test_page_size()

static void expect_create_fails(unsigned flags, int err, const char *what)
{
    size_t baseline = jemalloc_allocated();
    /* A leaked reservation would be one more PROT_NONE mapping of the cache's size (VmSize is no
     * measure under valgrind, whose own mappings come and go). */
    char *before = test_maps_reservations(66 * PAGE);
    struct code_cache_options opts = {
        .size = 64 * PAGE, .near = (const void *)helper_triple, .flags = flags};
    errno = 0;
    cr_assert_null(code_cache_create(&opts), "%s: create succeeded", what);
    cr_assert_eq(errno, err, "%s: errno %d (%s), expected %d", what, errno, strerror(errno), err);
    cr_assert_eq(jemalloc_allocated(), baseline, "%s: bookkeeping leaked", what);
    char *after = test_maps_reservations(66 * PAGE);
    cr_assert_str_eq(after, before, "%s: a reservation leaked", what);
    free(after);
    free(before);
}

static void expect_cache_works(unsigned flags)
{
    struct code_cache_options opts = {
        .size = 64 * PAGE, .near = (const void *)helper_triple, .flags = flags};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "create: %s", strerror(errno));
    struct code_chunk *chunk = code_cache_alloc(cache, 128);
    cr_assert_not_null(chunk);
    jit_fn fn = emit_call(chunk, helper_triple, 6);
    cr_assert_eq(code_chunk_seal(chunk), 0, "seal: %s", strerror(errno));
    cr_assert_eq(fn(), 19);
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(exec_probe, denied_exec_fails_create_with_EACCES_and_leaves_nothing)
{
    expect_cache_works(CODE_CACHE_DUAL_MAP); /* warms up the arena pool: leaks count from here */
    fault_inject(FAULT_MPROTECT, PROT_READ | PROT_EXEC, 0, EACCES);
    expect_create_fails(0, EACCES, "SELinux-style EACCES");
    fault_inject(FAULT_MPROTECT, PROT_READ | PROT_EXEC, 0, EPERM);
    expect_create_fails(0, EACCES, "seccomp-style EPERM is reported as EACCES");
    fault_clear();
    expect_cache_works(0);
}

Test(exec_probe, other_failures_keep_their_errno)
{
    expect_cache_works(CODE_CACHE_DUAL_MAP);
    fault_inject(FAULT_MPROTECT, PROT_READ | PROT_EXEC, 1, ENOMEM);
    expect_create_fails(0, ENOMEM, "the probe's mprotect fails with ENOMEM");
    /* Making the guard page inaccessible again fails: the cache is not handed out with an
     * accessible guard page. */
    fault_inject(FAULT_MPROTECT, PROT_NONE, 1, ENOMEM);
    expect_create_fails(0, ENOMEM, "restoring the guard page fails");
    fault_clear();
    expect_cache_works(0);
}

Test(exec_probe, is_two_protection_changes_once_per_process)
{
    struct code_cache *cache = test_cache_near_helper(64 * PAGE);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.protection_changes, 2, "the first create asks");
    expect_prot((const void *)(st.base - PAGE), PAGE, "---");
    struct code_cache *second = test_cache_near_helper(64 * PAGE);
    code_cache_get_stats(second, &st);
    cr_assert_eq(st.protection_changes, 0, "the answer is remembered");
    code_cache_destroy(second);
    code_cache_destroy(cache);
    /* Remembered means not asked again: a refusal that comes later shows at the seal. */
    fault_inject(FAULT_MPROTECT, PROT_READ | PROT_EXEC, 0, EACCES);
    cache = test_cache_near_helper(64 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    emit_return(chunk, 1);
    errno = 0;
    cr_assert_eq(code_chunk_seal(chunk), -1);
    cr_assert_eq(errno, EACCES);
    fault_clear();
    code_cache_destroy(cache);
}

Test(exec_probe, the_dual_backend_works_where_mprotect_to_exec_is_denied)
{
    fault_inject(FAULT_MPROTECT, PROT_READ | PROT_EXEC, 0, EPERM);
    expect_cache_works(CODE_CACHE_DUAL_MAP);
    cr_assert_eq(fault_calls(FAULT_MPROTECT), 0, "the dual backend made an mprotect call");
    fault_clear();
}
