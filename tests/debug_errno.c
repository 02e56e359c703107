/*
 * CODE_CACHE_DEBUG=1 explains failures on standard error, and never changes errno doing so. The
 * debug line is written between the failing call and the return that reports it; with stderr
 * closed, as in a daemon, fprintf fails with EBADF, and before the fix that EBADF reached the
 * caller instead of EACCES, ENOMEM, ERANGE or ENOSPC.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fault.h"
#include "helpers.h"

#define PAGE test_page_size()

static int saved_stderr = -1;

static void setup(void)
{
    /* Read once per process by the library: set before its first call. */
    setenv("CODE_CACHE_DEBUG", "1", 1);
}

static void close_stderr(void)
{
    fflush(stderr);
    saved_stderr = dup(2);
    cr_assert_geq(saved_stderr, 0);
    close(2);
}

static void reopen_stderr(void)
{
    dup2(saved_stderr, 2);
    close(saved_stderr);
}

TestSuite(debug_errno, .init = setup);

Test(debug_errno, a_refused_seal_reports_EACCES)
{
    struct code_cache *cache = test_cache_near_helper(64 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    emit_return(chunk, 1);
    close_stderr();
    fault_inject(FAULT_MPROTECT, PROT_READ | PROT_EXEC, 0, EACCES);
    errno = 0;
    int rc = code_chunk_seal(chunk);
    int err = errno;
    fault_clear();
    reopen_stderr();
    cr_assert_eq(rc, -1);
    cr_assert_eq(err, EACCES, "errno %d (%s)", err, strerror(err));
    code_cache_destroy(cache);
}

Test(debug_errno, a_create_out_of_the_address_space_reports_ERANGE)
{
    struct code_cache_options opts = {.near = (const void *)0xffffffffff600000, .size = PAGE};
    close_stderr();
    errno = 0;
    struct code_cache *cache = code_cache_create(&opts);
    int err = errno;
    reopen_stderr();
    cr_assert_null(cache);
    cr_assert_eq(err, ERANGE, "errno %d (%s)", err, strerror(err));
}

Test(debug_errno, a_failed_mmap_anywhere_reports_ENOMEM)
{
    struct code_cache_options opts = {.size = 64 * PAGE};
    code_cache_destroy(code_cache_create(&opts)); /* the arena pool, warmed up */
    close_stderr();
    fault_inject(FAULT_MMAP, FAULT_ANY, 0, ENOMEM);
    errno = 0;
    struct code_cache *cache = code_cache_create(&opts);
    int err = errno;
    fault_clear();
    reopen_stderr();
    cr_assert_null(cache);
    cr_assert_eq(err, ENOMEM, "errno %d (%s)", err, strerror(err));
}

Test(debug_errno, failed_allocations_report_ENOSPC_and_ENOMEM)
{
    struct code_cache *cache = test_cache_near_helper(4 * PAGE);
    close_stderr();
    errno = 0;
    struct code_chunk *too_big = code_cache_alloc(cache, 5 * PAGE);
    int err_space = errno;
    fault_inject(FAULT_MPROTECT, PROT_READ | PROT_WRITE, 0, ENOMEM);
    errno = 0;
    struct code_chunk *no_memory = code_cache_alloc(cache, PAGE);
    int err_memory = errno;
    fault_clear();
    reopen_stderr();
    cr_assert_null(too_big);
    cr_assert_eq(err_space, ENOSPC, "errno %d (%s)", err_space, strerror(err_space));
    cr_assert_null(no_memory);
    cr_assert_eq(err_memory, ENOMEM, "errno %d (%s)", err_memory, strerror(err_memory));
    code_cache_destroy(cache);
}

Test(debug_errno, the_reasons_are_written_to_stderr)
{
    struct code_cache *cache = test_cache_near_helper(4 * PAGE);
    char path[] = "/tmp/codecache-debug.XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    struct code_chunk *a = code_cache_alloc(cache, 3 * PAGE);
    cr_assert_null(code_cache_alloc(cache, 2 * PAGE));
    code_chunk_free(a);
    cr_assert_null(code_cache_alloc(cache, 4 * PAGE));
    fault_inject(FAULT_MPROTECT, PROT_READ | PROT_WRITE, 0, ENOMEM);
    cr_assert_null(code_cache_alloc(cache, 2 * PAGE));
    fault_clear();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char text[8192];
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    close(fd);
    cr_assert_gt(n, 0);
    text[n] = '\0';
    char expect[128];
    snprintf(expect, sizeof expect, "no span of %zu bytes left: %zu never used", 2 * PAGE, PAGE);
    cr_assert_not_null(strstr(text, expect), "no \"%s\" in:\n%s", expect, text);
    snprintf(expect, sizeof expect, "in 1 freed spans, the largest %zu bytes: ENOSPC", 3 * PAGE);
    cr_assert_not_null(strstr(text, expect), "no \"%s\" in:\n%s", expect, text);
    cr_assert_not_null(strstr(text, "again failed: errno 12"), "the failing call:\n%s", text);
    code_cache_destroy(cache);
}
