/*
 * System calls failing under the library (tests/fault.c interposes on mmap, munmap, mprotect,
 * madvise, memfd_create, open, ftruncate, fcntl and fallocate for calls made from libcodecache):
 * every failure returns the documented error, leaves the cache as it was, leaks nothing, and the
 * cache keeps working. First one targeted test per call site, then a sweep that makes each call
 * of a whole scenario fail in turn.
 *
 * Run once per backend (helpers.h). The same step calls a different function in each: committing
 * is mprotect rw- (mprotect) or mmap of the file r-x (dual), revoking access mprotect --- or mmap
 * of fresh PROT_NONE space, discarding madvise(MADV_DONTNEED) or a hole punched in the file
 * (fallocate). Tests of what only one backend does (a seal or a free that makes a system call:
 * mprotect; the batched release of trapped spans: dual) skip the other. The failures of the dual
 * backend's file at create (sources, fallbacks, descriptors) are in tests/shared_file.c.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
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
#define MiB  ((size_t)1 << 20)

static void setup(void)
{
    /* Placement then takes the same path on every run of a scenario, so the nth call of a rerun
     * is the nth call of the counting run. */
    setenv("CODE_CACHE_NO_RANDOM", "1", 1);
}

TestSuite(syscall_failures, .init = setup);

/* A call site: the function called and the argument it is called with. */
struct site {
    enum fault_call call;
    int arg;
};

/* Committing pages: mprotect rw-, or mapping the file r-x over the reservation. */
static struct site commit_site(const struct code_cache *cache)
{
    if (test_cache_is_dual(cache))
        return (struct site){FAULT_MMAP, PROT_READ | PROT_EXEC};
    return (struct site){FAULT_MPROTECT, PROT_READ | PROT_WRITE};
}

/* Making pages inaccessible: mprotect ---, or fresh PROT_NONE address space mapped over them. */
static struct site revoke_site(const struct code_cache *cache)
{
    if (test_cache_is_dual(cache))
        return (struct site){FAULT_MMAP, PROT_NONE};
    return (struct site){FAULT_MPROTECT, PROT_NONE};
}

/* Giving the memory back: discarding the pages, or punching them out of the file. */
static struct site discard_site(const struct code_cache *cache)
{
    if (test_cache_is_dual(cache))
        return (struct site){FAULT_FALLOCATE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE};
    return (struct site){FAULT_MADVISE, MADV_DONTNEED};
}

static void fail_at(struct site site, unsigned nth, int err)
{
    fault_inject(site.call, site.arg, nth, err);
}

static void mprotect_backend_only(const char *why)
{
    if (test_dual())
        cr_skip_test("mprotect backend only: %s", why);
}

static void dual_backend_only(const char *why)
{
    if (!test_dual())
        cr_skip_test("dual backend only: %s", why);
}

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
                  a->sealed_chunks == b.sealed_chunks &&
                  a->chunks_allocated == b.chunks_allocated && a->free_ready == b.free_ready,
              "%s: a failed call changed the cache's statistics", what);
}

Test(syscall_failures, alloc_fails_cleanly_when_the_commit_fails)
{
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    /* Every commit fails: the step ahead, then the chunk alone. */
    fail_at(commit_site(cache), 0, ENOMEM);
    errno = 0;
    cr_assert_null(code_cache_alloc(cache, 2 * PAGE));
    cr_assert_eq(errno, ENOMEM);
    cr_assert_eq(fault_failures(), 2);
    expect_same_stats(cache, &st, "alloc");
    check_maps(cache);
    expect_prot((void *)st.base, 16 * PAGE, "---");
    fault_clear();
    struct code_chunk *chunk = code_cache_alloc(cache, 2 * PAGE);
    cr_assert_not_null(chunk);
    cr_assert_eq((uintptr_t)code_chunk_span(chunk).rx, st.base, "the bump pointer had not moved");
    expect_fresh_chunk(chunk);
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
    expect_fresh_chunk(chunk);
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
            fail_at(commit_site(cache), 1, ENOMEM);
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
        expect_fresh_chunk(chunk);
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

/* The dual backend allocates the file's pages in one call before anything is mapped: a file
 * system out of room (tmpfs at its size limit: ENOSPC) is ENOMEM from alloc, what the call did
 * allocate is punched out again, and nothing else changed. A call interrupted by a signal (EINTR,
 * kernels before 6.9) is made again; any other refusal (no fallocate in the file system, a seccomp
 * filter) leaves it to the page faults. */
Test(syscall_failures, alloc_fails_with_ENOMEM_when_the_file_cannot_grow)
{
    dual_backend_only("the mprotect backend has no file");
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    fault_inject(FAULT_FALLOCATE, 0, 0, ENOSPC);
    errno = 0;
    cr_assert_null(code_cache_alloc(cache, 4 * PAGE));
    cr_assert_eq(errno, ENOMEM, "errno %d", errno);
    cr_assert_geq(fault_calls_with(FAULT_FALLOCATE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE), 1,
                  "what the failed allocation left in the file was not punched out");
    expect_same_stats(cache, &st, "alloc");
    check_maps(cache);
    expect_prot((void *)st.base, 4 * PAGE, "---");
    fault_inject(FAULT_FALLOCATE, 0, 1, EINTR);
    struct code_chunk *chunk = code_cache_alloc(cache, 4 * PAGE);
    cr_assert_not_null(chunk, "alloc after an interrupted fallocate: %s", strerror(errno));
    cr_assert_eq(fault_calls_with(FAULT_FALLOCATE, 0), 2, "the interrupted call was made again");
    expect_fresh_chunk(chunk);
    code_chunk_free(chunk);
    fault_inject(FAULT_FALLOCATE, 0, 0, EPERM);
    chunk = code_cache_alloc(cache, 4 * PAGE);
    cr_assert_not_null(chunk, "alloc without fallocate: %s", strerror(errno));
    expect_fresh_chunk(chunk);
    fault_clear();
    check_maps(cache);
    code_cache_destroy(cache);
}

/* A file system without fallocate (EOPNOTSUPP) says so once: later commits do not ask again. */
Test(syscall_failures, a_file_without_fallocate_is_asked_once)
{
    dual_backend_only("the mprotect backend has no file");
    struct code_cache *cache = test_cache_near_helper(16 * ((size_t)1 << 20));
    fault_inject(FAULT_FALLOCATE, 0, 0, EOPNOTSUPP);
    struct code_chunk *chunks[4];
    /* Each one beyond the step committed ahead (1 MiB at most): four commits. */
    for (int i = 0; i < 4; i++) {
        chunks[i] = code_cache_alloc(cache, 2 * ((size_t)1 << 20));
        cr_assert_not_null(chunks[i], "alloc %d without fallocate: %s", i, strerror(errno));
        expect_fresh_chunk(chunks[i]);
    }
    cr_assert_eq(fault_calls_with(FAULT_FALLOCATE, 0), 1, "fallocate asked %u times",
                 fault_calls_with(FAULT_FALLOCATE, 0));
    for (int i = 0; i < 4; i++)
        code_chunk_free(chunks[i]);
    fault_clear();
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(syscall_failures, refused_exec_permission_keeps_the_chunk_open_and_usable)
{
    mprotect_backend_only("a dual seal asks for nothing; its exec permission is asked at create "
                          "(tests/shared_file)");
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
    mprotect_backend_only("a dual free makes no system call: its batched release is tested in "
                          "a_batch_release_*");
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
    expect_fresh_chunk(all);
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(syscall_failures, free_that_cannot_discard_leaves_dirty_pages_discarded_before_reuse)
{
    mprotect_backend_only("a dual free makes no system call: its batched release is tested in "
                          "a_batch_release_*");
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
    expect_fresh_chunk(reused);
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
    fail_at(revoke_site(cache), 1, ENOMEM);
    errno = 0;
    cr_assert_eq(code_cache_reset(cache), -1);
    cr_assert_eq(errno, ENOMEM);
    cr_assert_eq(fault_failures(), 1);
    fault_clear();
    expect_same_stats(cache, &st, "reset");
    check_maps(cache);
    cr_assert_eq(fn(), 12, "sealed code still runs");
    jit_fn fb = emit_return(b, 3);
    expect_open_chunk(b);
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
    memset(code_chunk_span(chunk).rw, 0x90, 4 * PAGE);
    emit_return(chunk, 4);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    fail_at(discard_site(cache), 1, EAGAIN);
    cr_assert_eq(code_cache_reset(cache), 0, "the chunks are freed all the same");
    cr_assert_eq(fault_failures(), 1);
    fault_clear();
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free, 4 * PAGE);
    cr_assert_eq(st.committed, 0);
    cr_assert_eq(st.free_spans, 1, "the whole used part, one dirty span");
    check_maps(cache);
    expect_prot((void *)st.base, 4 * PAGE, "---");
    struct code_chunk *again = code_cache_alloc(cache, 4 * PAGE);
    cr_assert_not_null(again);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free_spans, 0);
    expect_fresh_chunk(again);
    check_maps(cache);
    code_cache_destroy(cache);
}

/* The same when more was committed ahead than the bump pointer had passed: the dirty span runs
 * past what the span bitmaps and the granule words covered, which must grow to cover it (a review
 * found the bitmaps written past their end, and the part beyond them lost from the index). Every
 * page of the cache is handed out again, fresh and found by code_cache_find. */
Test(syscall_failures, reset_that_cannot_discard_indexes_what_was_committed_ahead)
{
    enum { PAGES = 80, FIRST = 60 };
    struct code_cache *cache = test_cache_near_helper(PAGES * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, FIRST * PAGE);
    cr_assert_not_null(chunk);
    emit_return(chunk, FIRST);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_gt(st.committed, 64 * PAGE, "a step committed ahead, past the bitmaps' first word");
    fail_at(discard_site(cache), 1, EAGAIN);
    cr_assert_eq(code_cache_reset(cache), 0, "the chunks are freed all the same");
    cr_assert_eq(fault_failures(), 1);
    fault_clear();
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.retired, 0, "every dirty page is in the index");
    cr_assert_eq(st.free, PAGES * PAGE);
    check_maps(cache);
    size_t pages = 0;
    for (;;) {
        struct code_chunk *c = code_cache_alloc(cache, PAGE);
        if (c == NULL) {
            cr_assert_eq(errno, ENOSPC, "alloc: %s", strerror(errno));
            break;
        }
        struct code_span span = code_chunk_span(c);
        expect_fresh_chunk(c);
        cr_assert_eq(code_cache_find(cache, span.rx), c, "the chunk at page %zu is found",
                     ((uintptr_t)span.rx - st.base) / PAGE);
        cr_assert_eq(code_cache_find(cache, (char *)span.rx + span.size - 1), c);
        pages++;
    }
    cr_assert_eq(pages, PAGES, "%zu of the cache's %d pages handed out again", pages, PAGES);
    check_maps(cache);
    code_cache_destroy(cache);
}

/* ---- The dual backend's batched release of freed spans ---- */

/* Allocates max chunks of 64 pages, then frees them: once more than 4 MiB of freed bytes wait,
 * the free that crosses it gives their whole pages back in one batch, all but the last 1 MiB.
 * Returns the chunks' spans. */
static size_t free_past_the_batch(struct code_cache *cache, struct code_span *spans, size_t max)
{
    size_t n = 0;
    struct code_chunk *chunks[64];
    cr_assert_leq(max, 64);
    for (n = 0; n < max; n++) {
        chunks[n] = code_cache_alloc(cache, 64 * PAGE);
        cr_assert_not_null(chunks[n], "alloc: %s", strerror(errno));
        emit_return(chunks[n], (int)n);
        cr_assert_eq(code_chunk_seal(chunks[n]), 0);
        spans[n] = code_chunk_span(chunks[n]);
    }
    for (size_t i = 0; i < n; i++)
        code_chunk_free(chunks[i]);
    return n;
}

/* A dual cache whose batch release met a failure at site (every call there failing with err):
 * BATCH chunks of 64 pages freed past the batch, their spans in spans, the failure cleared and the
 * statistics in *st. Whatever failed, nothing may be retired. */
enum { BATCH = 20 };

static struct code_cache *after_a_failed_batch(struct site (*site)(const struct code_cache *),
                                               int err, struct code_span spans[BATCH],
                                               struct code_cache_stats *st)
{
    dual_backend_only("mprotect gives each freed span back at once (free_that_cannot_*)");
    struct code_cache *cache = test_cache_near_helper(32 * MiB);
    fail_at(site(cache), 0, err);
    cr_assert_eq(free_past_the_batch(cache, spans, BATCH), BATCH);
    cr_assert_geq(fault_failures(), 1, "no batch was tried");
    fault_clear();
    code_cache_get_stats(cache, st);
    cr_assert_eq(st->retired, 0, "nothing is lost: the pages are still committed, or released");
    return cache;
}

Test(syscall_failures, a_batch_release_that_cannot_revoke_access_keeps_the_pages_ready)
{
    struct code_span spans[BATCH];
    struct code_cache_stats st;
    struct code_cache *cache = after_a_failed_batch(revoke_site, ENOMEM, spans, &st);
    const size_t n = BATCH;
    cr_assert_geq(st.free_ready, n * 64 * PAGE, "the pages are still committed and trapped");
    check_maps(cache);
    for (size_t i = 0; i < n; i++) {
        expect_prot(spans[i].rx, spans[i].size, "r-x");
        expect_freed_span(spans[i]);
    }

    /* The next batch, with nothing failing, gives them back, the lowest first. A failed batch
     * waits for 3 MiB more before it is tried again: 10 MiB freed crosses it. */
    struct code_span more[40];
    free_past_the_batch(cache, more, 40);
    code_cache_get_stats(cache, &st);
    cr_assert_lt(st.free_ready, 4 * MiB, "%zu bytes still ready", st.free_ready);
    check_maps(cache);
    expect_prot(spans[0].rx, spans[0].size, "---");
    code_cache_destroy(cache);
}

Test(syscall_failures, a_batch_release_that_cannot_punch_the_file_still_hands_out_fresh_traps)
{
    struct code_span spans[BATCH];
    struct code_cache_stats st;
    struct code_cache *cache = after_a_failed_batch(discard_site, EAGAIN, spans, &st);
    cr_assert_lt(st.free_ready, 4 * MiB,
                 "the pages were made inaccessible all the same: %zu KiB ready",
                 st.free_ready >> 10);
    check_maps(cache);
    expect_prot(spans[0].rx, spans[0].size, "---");

    /* Their memory still holds traps: reused, it is handed out as fresh traps. */
    code_cache_get_stats(cache, &st);
    size_t all = st.free / (64 * PAGE);
    for (size_t i = 0; i < all; i++) {
        struct code_chunk *chunk = code_cache_alloc(cache, 64 * PAGE);
        if (chunk == NULL) {
            cr_assert_eq(errno, ENOSPC);
            break;
        }
        expect_fresh_chunk(chunk);
    }
    check_maps(cache);
    code_cache_destroy(cache);
}

/* ---- The sweep: each call of one kind made to fail in turn. ---- */

static int injected_err;
static enum fault_call injected_call;
static char context[80];

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
        expect_fresh_chunk(chunk);
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
        expect_open_chunk(chunk);
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

/* Whatever a cache left mapped at [lo, lo + len) after destroy: nothing, unless an munmap the
 * test refused was the one that would have removed it (destroy cannot report that: it returns
 * nothing, and it cannot happen outside a test, since unmapping whole mappings never splits
 * one). */
static void expect_unmapped(uintptr_t lo, size_t len, const char *what)
{
    if (mapped_bytes((const void *)lo, len) == 0)
        return;
    cr_assert_eq(injected_call, FAULT_MUNMAP, "%s: destroy left %s mapped", context, what);
    cr_assert_eq(munmap((void *)lo, len), 0);
}

/* Create, fill, seal, run, free, exhaust, free more than 1 MiB at once (the dual backend's batch),
 * reuse, reset, reuse, destroy: every path that makes a system call, small enough to be run once
 * per call. */
static void sweep_scenario(void)
{
    size_t baseline = jemalloc_allocated(), fds = open_fds();
    struct code_cache_options opts = {
        .size = 3 * MiB / 2, .near = (const void *)helper_triple, .flags = test_backend_flags()};
    struct code_cache *cache = test_cache_create(&opts);
    if (cache == NULL) {
        cr_assert(errno == injected_err || errno == ENOMEM, "%s: create failed with %s", context,
                  strerror(errno));
        cr_assert_eq(jemalloc_allocated(), baseline, "%s: a failed create leaked", context);
        cr_assert_eq(open_fds(), fds, "%s: a failed create left a descriptor open", context);
        if (injected_call != FAULT_MUNMAP)
            fault_expect_nothing_left_mapped(context);
        cache = test_cache_create(&opts);
        cr_assert_not_null(cache, "%s: create failed twice: %s", context, strerror(errno));
    }
    if (unmap_stray_file_mappings(cache) != 0)
        cr_assert_eq(injected_call, FAULT_MUNMAP, "%s: create left the file mapped", context);
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
    struct code_span bs = code_chunk_span(b);
    const uintptr_t rw_minus_rx = (uintptr_t)bs.rw - (uintptr_t)bs.rx;

    code_chunk_free(a);
    check_maps(cache);
    /* Exhaust the never-used space with large chunks, then free them all: more than 1 MiB. */
    struct code_chunk *big[8];
    size_t n = 0;
    while (n < 8 && (big[n] = sweep_alloc(cache, 256 << 10)) != NULL)
        n++;
    cr_assert_geq(n, 5, "%s: only %zu chunks", context, n);
    for (size_t i = 0; i < n; i++) {
        code_chunk_free(big[i]);
        check_maps(cache);
    }
    /* Reuse a's span (unless its release failed). */
    struct code_chunk *small = sweep_alloc(cache, PAGE);
    cr_assert_not_null(small);
    code_chunk_free(small);
    check_maps(cache);

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
    expect_unmapped(st.base - PAGE, st.reserved + 2 * PAGE, "the reservation");
    expect_unmapped(st.base + rw_minus_rx - PAGE, st.reserved + 2 * PAGE, "the RW view");
    cr_assert_eq(open_fds(), fds, "%s: destroy left a descriptor open", context);
    if (injected_call != FAULT_MUNMAP)
        fault_expect_nothing_left_mapped(context);
    cr_assert_eq(fault_wx_requests(), 0,
                 "%s: the library asked for a writable and executable "
                 "mapping",
                 context);
}

/* Makes each call of one kind in the scenario fail in turn. used: whether the backend under test
 * makes such calls at all. */
static void sweep(enum fault_call call, int err, bool used)
{
    /* Once, so that what the library does once per process (reads vm.mmap_min_addr, probes
     * PROT_EXEC and remembers the yes, and at the first commit of a dual cache probes whether
     * instruction fetch sees the RW view, which under an emulator maps the RX view again) is
     * done, and the counting run below makes the same calls as every rerun. tests/exec_probe.c
     * makes the exec probe itself fail. */
    struct code_cache *warm = test_cache_near_helper(PAGE);
    struct code_chunk *first = code_cache_alloc(warm, PAGE);
    cr_assert_not_null(first, "code_cache_alloc: %s", strerror(errno));
    code_chunk_free(first);
    code_cache_destroy(warm);
    injected_err = 0;
    injected_call = FAULT_KINDS;
    snprintf(context, sizeof context, "%s, %s, counting run", test_backend_name(),
             fault_name(call));
    fault_clear();
    sweep_scenario();
    unsigned total = fault_calls(call);
    cr_log_info("%s: %u calls of %s from the library in the scenario", test_backend_name(), total,
                fault_name(call));
    if (!used) {
        cr_assert_eq(total, 0, "the %s backend calls %s", test_backend_name(), fault_name(call));
        return;
    }
    cr_assert_gt(total, 0, "the %s backend makes no %s call", test_backend_name(),
                 fault_name(call));
    for (unsigned n = 1; n <= total; n++) {
        snprintf(context, sizeof context, "%s, %s #%u failing with %s", test_backend_name(),
                 fault_name(call), n, strerror(err));
        injected_err = err;
        injected_call = call;
        fault_inject(call, FAULT_ANY, n, err);
        sweep_scenario();
        cr_assert_eq(fault_failures(), 1, "%s: the call was not made", context);
        fault_clear();
    }
}

Test(syscall_failures, every_mprotect_failure_is_clean)
{
    /* The dual backend never changes a protection: its RX view is mapped r-x, its RW view rw-. */
    sweep(FAULT_MPROTECT, ENOMEM, !test_dual());
}

Test(syscall_failures, every_madvise_failure_is_clean)
{
    sweep(FAULT_MADVISE, EAGAIN, true);
}

Test(syscall_failures, every_mmap_failure_is_clean)
{
    sweep(FAULT_MMAP, ENOMEM, true);
}

Test(syscall_failures, every_munmap_failure_is_clean)
{
    sweep(FAULT_MUNMAP, EINVAL, true);
}

/* The dual backend's file (none with mprotect): a failure at create falls back to the next source
 * (tests/shared_file has the details); punching freed pages out of it may fail and only costs
 * memory. One test for the four calls: each test is a process of its own, which valgrind takes
 * seconds to start. */
Test(syscall_failures, every_failure_of_the_file_calls_is_clean)
{
    sweep(FAULT_MEMFD_CREATE, EMFILE, test_dual());
    sweep(FAULT_FTRUNCATE, EFBIG, test_dual());
    sweep(FAULT_FCNTL, EBUSY, test_dual());
    sweep(FAULT_FALLOCATE, EOPNOTSUPP, test_dual());
}
