/*
 * Chunks: JIT code that really runs, functions packed into one chunk, veneers, the rules of
 * code_chunk_alloc, bump-before-reuse, coalescing, a full cache, and the statistics. The maps are
 * checked after every operation (check_maps: no rwx, exact accessible bytes, both views).
 * Run once per backend (helpers.h); what differs is read from the statistics.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "helpers.h"

#define PAGE test_page_size()

static struct code_chunk *alloc_checked(struct code_cache *cache, size_t size)
{
    struct code_chunk *chunk = code_cache_alloc(cache, size);
    cr_assert_not_null(chunk, "code_cache_alloc(%zu): %s", size, strerror(errno));
    check_maps(cache);
    expect_open_chunk(chunk);
    return chunk;
}

static void seal_checked(struct code_cache *cache, struct code_chunk *chunk)
{
    cr_assert_eq(code_chunk_seal(chunk), 0, "code_chunk_seal: %s", strerror(errno));
    check_maps(cache);
    expect_sealed_chunk(chunk);
}

static void free_checked(struct code_cache *cache, struct code_chunk *chunk)
{
    struct code_span span = code_chunk_span(chunk);
    code_chunk_free(chunk);
    check_maps(cache);
    expect_freed_span(span);
}

static struct code_cache_stats stats(const struct code_cache *cache)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    return st;
}

static size_t round_up(size_t size, size_t granule)
{
    return (size + granule - 1) / granule * granule;
}

/*
 * What each operation costs in system calls, and how many of them are protection changes, by
 * backend. mprotect: create probes exec permission (r-x and back), a commit is mprotect rw- and a
 * populate, a seal one mprotect, a free mprotect --- and a discard. Dual: nothing is ever
 * mprotect'ed; a commit allocates the file's pages, populates them and maps them r-x, a seal and
 * a free make no call.
 */
struct costs {
    size_t commit, commit_prot, seal, seal_prot, free, free_prot;
};

static struct costs costs_of(const struct code_cache *cache)
{
    /* Where instruction fetch does not see stores through the RW view (an emulator), the dual
     * backend maps the RX view again at every seal and free, and once at the first commit of
     * the process (helpers.h). */
    if (test_cache_is_dual(cache)) {
        const size_t again = test_dual_fetch_is_stale() ? 1 : 0;
        /* A commit allocates the file's pages (fallocate), takes their first-write faults
         * through the RW view (madvise) and maps them into the RX view (mmap). */
        return (struct costs){.commit = 3,
                              .commit_prot = 0,
                              .seal = again,
                              .seal_prot = 0,
                              .free = again,
                              .free_prot = 0};
    }
    return (struct costs){
        .commit = 2, .commit_prot = 1, .seal = 1, .seal_prot = 1, .free = 2, .free_prot = 1};
}

static uintptr_t chunk_base(const struct code_chunk *chunk)
{
    return (uintptr_t)code_chunk_span(chunk).rx;
}

Test(chunk, runs_a_function_that_calls_a_helper_directly)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    struct code_chunk *chunk = alloc_checked(cache, 100);
    cr_assert_eq(code_chunk_span(chunk).size, round_up(100, stats(cache).granule),
                 "a chunk is rounded up to the granule");
    cr_assert_eq(code_chunk_call_target(chunk, (const void *)helper_triple),
                 (const void *)helper_triple, "the helper is reached directly, no veneer");
    jit_fn fn = emit_call(chunk, helper_triple, 14);
    check_maps(cache);
    seal_checked(cache, chunk);
    cr_assert_eq(fn(), 43);
    cr_assert_eq(fn(), 43, "and again");
    free_checked(cache, chunk);
    code_cache_destroy(cache);
}

Test(chunk, packs_many_functions_in_one_chunk_sealed_at_once)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    struct code_chunk *chunk = alloc_checked(cache, 4 * PAGE);
    enum { MAX = 2048 };
    static jit_fn fns[MAX];
    static int expect[MAX];
    size_t n = 0;
    for (;;) {
        /* A byte of padding before every other function varies the alignment work. */
        if (n % 2 == 0 && code_chunk_alloc(chunk, 1, 1).rw == NULL)
            break;
        jit_fn fn = try_emit_return(chunk, (int)n * 7);
        if (fn == NULL) {
            cr_assert_eq(errno, ENOSPC);
            break;
        }
        cr_assert_lt(n, MAX);
        fns[n] = fn;
        expect[n] = (int)n * 7;
        n++;
    }
    check_maps(cache);
    cr_assert_gt(n, 1000, "only %zu functions fitted in 4 pages", n);

    struct code_chunk *calls = alloc_checked(cache, PAGE);
    enum { CALLS = 100 }; /* TEST_CALL_SIZE bytes, aligned to 16: 32 bytes each */
    jit_fn callers[CALLS];
    for (int i = 0; i < CALLS; i++)
        callers[i] = emit_call(calls, helper_triple, i);
    check_maps(cache);

    struct code_cache_stats before, after;
    code_cache_get_stats(cache, &before);
    seal_checked(cache, chunk);
    seal_checked(cache, calls);
    code_cache_get_stats(cache, &after);
    cr_assert_eq(after.protection_changes - before.protection_changes,
                 2 * costs_of(cache).seal_prot,
                 "one protection change per chunk (none with dual), however many functions");
    cr_assert_eq(after.system_calls - before.system_calls, 2 * costs_of(cache).seal);

    for (size_t i = 0; i < n; i++)
        cr_assert_eq(fns[i](), expect[i], "function %zu", i);
    for (int i = 0; i < CALLS; i++)
        cr_assert_eq(callers[i](), 3 * i + 1, "caller %d", i);
    free_checked(cache, chunk);
    free_checked(cache, calls);
    code_cache_destroy(cache);
}

Test(chunk, reaches_a_far_function_through_one_shared_veneer)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    int (*far)(int) = far_function(cache);
    struct code_chunk *chunk = alloc_checked(cache, PAGE);
    uintptr_t base = chunk_base(chunk);

    const void *veneer = code_chunk_call_target(chunk, (const void *)far);
    cr_assert_not_null(veneer, "code_chunk_call_target: %s", strerror(errno));
    cr_assert_neq(veneer, (const void *)far);
    cr_assert((uintptr_t)veneer >= base + PAGE / 2 && (uintptr_t)veneer < base + PAGE,
              "the veneer %p is at the top of the chunk at %#lx", veneer, (unsigned long)base);
    cr_assert_eq(code_chunk_call_target(chunk, (const void *)far), veneer, "deduplicated");

    jit_fn a = emit_call(chunk, far, 7);
    jit_fn b = emit_call(chunk, far, 100);
    jit_fn c = emit_call(chunk, helper_triple, 5);
    check_maps(cache);
    seal_checked(cache, chunk);
    cr_assert_eq(a(), 19);
    cr_assert_eq(b(), 205);
    cr_assert_eq(c(), 16);

    /* Sealed: the existing veneer is still found, a new one cannot be made. */
    cr_assert_eq(code_chunk_call_target(chunk, (const void *)far), veneer);
    errno = 0;
    cr_assert_null(code_chunk_call_target(chunk, (const char *)far + 16));
    cr_assert_eq(errno, EPERM);
    cr_assert_eq(code_chunk_call_target(chunk, (const void *)helper_triple),
                 (const void *)helper_triple);
    errno = 0;
    cr_assert_null(code_chunk_call_target(chunk, NULL));
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_null(code_chunk_call_target(NULL, (const void *)far));
    cr_assert_eq(errno, EINVAL);

    free_checked(cache, chunk);
    code_cache_destroy(cache);
    far_function_release(far);
}

Test(chunk, veneers_and_functions_never_overlap)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    int (*far)(int) = far_function(cache);
    struct code_chunk *chunk = alloc_checked(cache, PAGE);
    /* Fill the chunk with functions to its last byte: no room is left for a veneer. */
    struct code_span all = code_chunk_alloc(chunk, PAGE, 1);
    cr_assert_not_null(all.rw);
    errno = 0;
    cr_assert_null(code_chunk_call_target(chunk, (const void *)far));
    cr_assert_eq(errno, ENOSPC);
    code_chunk_free(chunk);
    check_maps(cache);

    /* The other way round: distinct veneers take the top, functions stop below them. */
    chunk = alloc_checked(cache, PAGE);
    size_t veneers = 0;
    for (;; veneers++) {
        const void *v = code_chunk_call_target(chunk, (const char *)far + veneers);
        if (v == NULL) {
            cr_assert_eq(errno, ENOSPC);
            break;
        }
    }
    cr_assert_gt(veneers, 100, "%zu veneers in a page", veneers);
    errno = 0;
    cr_assert_null(code_chunk_alloc(chunk, 1, 1).rw, "no byte is left for a function");
    cr_assert_eq(errno, ENOSPC);
    free_checked(cache, chunk);

    /* And mixed: whatever is handed out lies in the chunk and does not overlap the veneers. */
    chunk = alloc_checked(cache, PAGE);
    uintptr_t base = chunk_base(chunk), lowest_veneer = base + PAGE, highest_fn = base;
    for (int i = 0;; i++) {
        if (i % 3 == 0) {
            const void *v = code_chunk_call_target(chunk, (const char *)far + i);
            if (v == NULL)
                break;
            cr_assert_lt((uintptr_t)v, lowest_veneer);
            lowest_veneer = (uintptr_t)v;
        } else {
            struct code_span s = code_chunk_alloc(chunk, 24, 8);
            if (s.rw == NULL)
                break;
            highest_fn = (uintptr_t)s.rx + s.size;
        }
        cr_assert_leq(highest_fn, lowest_veneer);
    }
    free_checked(cache, chunk);
    code_cache_destroy(cache);
    far_function_release(far);
}

Test(chunk, function_allocation_follows_size_and_alignment_rules)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    struct code_chunk *chunk = alloc_checked(cache, PAGE);
    uintptr_t base = chunk_base(chunk);
    const ptrdiff_t rw_minus_rx =
        (char *)code_chunk_span(chunk).rw - (char *)code_chunk_span(chunk).rx;

    static const size_t bad_aligns[] = {3, 6, 24, 100};
    for (size_t i = 0; i < sizeof bad_aligns / sizeof bad_aligns[0]; i++) {
        errno = 0;
        cr_assert_null(code_chunk_alloc(chunk, 8, bad_aligns[i]).rw);
        cr_assert_eq(errno, EINVAL, "align %zu", bad_aligns[i]);
    }
    errno = 0;
    cr_assert_null(code_chunk_alloc(chunk, 8, 2 * PAGE).rw, "more than a page");
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_null(code_chunk_alloc(chunk, 8, (size_t)1 << 63).rw);
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_null(code_chunk_alloc(chunk, 0, 8).rw, "size 0");
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_null(code_chunk_alloc(NULL, 8, 8).rw);
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_null(code_chunk_alloc(chunk, SIZE_MAX, 1).rw, "absurd size");
    cr_assert_eq(errno, ENOSPC);
    errno = 0;
    cr_assert_null(code_chunk_alloc(chunk, PAGE + 1, 1).rw, "larger than the chunk");
    cr_assert_eq(errno, ENOSPC);

    struct code_span a = code_chunk_alloc(chunk, 3, 0);
    cr_assert_eq((uintptr_t)a.rx, base, "align 0 means 1; the first function is at the base");
    cr_assert_eq((char *)a.rw - (char *)a.rx, rw_minus_rx, "written where the chunk is written");
    cr_assert_eq(a.size, 3);
    struct code_span b = code_chunk_alloc(chunk, 5, 64);
    cr_assert_eq((uintptr_t)b.rx, base + 64);
    cr_assert_eq((char *)b.rw - (char *)b.rx, rw_minus_rx);
    struct code_span c = code_chunk_alloc(chunk, 1, 1);
    cr_assert_eq((uintptr_t)c.rx, base + 69, "packed right after the previous one");
    errno = 0;
    struct code_span d = code_chunk_alloc(chunk, 16, PAGE);
    cr_assert_null(d.rw, "the next page-aligned address is past the chunk");
    cr_assert_eq(errno, ENOSPC);
    struct code_span rest = code_chunk_alloc(chunk, PAGE - 70, 1);
    cr_assert_eq((uintptr_t)rest.rx, base + 70, "a failed allocation consumed nothing");
    cr_assert_eq((char *)rest.rw - (char *)rest.rx, rw_minus_rx);
    errno = 0;
    cr_assert_null(code_chunk_alloc(chunk, 1, 1).rw, "full to the last byte");
    cr_assert_eq(errno, ENOSPC);
    memset(a.rw, 0x90, PAGE); /* every byte handed out is writable */
    check_maps(cache);
    code_chunk_free(chunk);
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(chunk, state_rules_seal_twice_alloc_after_seal_use_after_free)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    struct code_chunk *chunk = alloc_checked(cache, PAGE);
    jit_fn fn = emit_return(chunk, 42);
    seal_checked(cache, chunk);

    struct code_cache_stats before, after;
    code_cache_get_stats(cache, &before);
    errno = 0;
    cr_assert_eq(code_chunk_seal(chunk), -1);
    cr_assert_eq(errno, EBUSY);
    code_cache_get_stats(cache, &after);
    cr_assert_eq(after.protection_changes, before.protection_changes, "nothing changed");
    cr_assert_eq(after.sealed_chunks, 1);
    check_maps(cache);

    errno = 0;
    cr_assert_null(code_chunk_alloc(chunk, 8, 8).rw);
    cr_assert_eq(errno, EPERM);
    cr_assert_eq(fn(), 42, "the sealed code still runs");

    free_checked(cache, chunk);
    cr_assert_null(code_chunk_span(chunk).rw, "a freed chunk has no span");
    errno = 0;
    cr_assert_eq(code_chunk_seal(chunk), -1);
    cr_assert_eq(errno, EPERM);
    errno = 0;
    cr_assert_null(code_chunk_alloc(chunk, 8, 8).rw);
    cr_assert_eq(errno, EPERM);

    errno = 0;
    cr_assert_eq(code_chunk_seal(NULL), -1);
    cr_assert_eq(errno, EINVAL);
    code_chunk_free(NULL);
    cr_assert_null(code_chunk_span(NULL).rw);
    check_maps(cache);
    code_cache_destroy(cache);
    code_cache_destroy(NULL);
}

Test(chunk, cache_alloc_rejects_bad_arguments)
{
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    const size_t too_big[] = {17 * PAGE, 16 * PAGE + 1, SIZE_MAX, SIZE_MAX - PAGE + 2};
    for (size_t i = 0; i < sizeof too_big / sizeof too_big[0]; i++) {
        errno = 0;
        cr_assert_null(code_cache_alloc(cache, too_big[i]));
        cr_assert_eq(errno, ENOSPC, "size %zu", too_big[i]);
        check_maps(cache);
    }
    errno = 0;
    cr_assert_null(code_cache_alloc(cache, 0));
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_null(code_cache_alloc(NULL, PAGE));
    cr_assert_eq(errno, EINVAL);

    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.chunks_allocated, 0, "no failed call counted");
    cr_assert_eq(st.never_used, 16 * PAGE);
    struct code_chunk *whole = alloc_checked(cache, 16 * PAGE);
    code_chunk_free(whole);
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(chunk, freed_spans_are_reused_only_when_never_used_space_runs_out)
{
    struct code_cache *cache = test_cache_near_helper(8 * PAGE);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    struct code_chunk *a = alloc_checked(cache, PAGE);
    cr_assert_eq(chunk_base(a), st.base, "bumped from the start of the region");
    struct code_chunk *b = alloc_checked(cache, PAGE);
    cr_assert_eq(chunk_base(b), st.base + PAGE);
    memset(code_chunk_span(a).rw, TEST_TRAP_BYTE, PAGE);
    emit_return(a, 1);
    seal_checked(cache, a);
    free_checked(cache, a);

    /* Six pages never used remain: they all go before page 0 comes back. */
    struct code_chunk *more[6];
    for (int i = 0; i < 6; i++) {
        more[i] = alloc_checked(cache, PAGE);
        cr_assert_eq(chunk_base(more[i]), st.base + (2 + (uintptr_t)i) * PAGE,
                     "the freed page stays in quarantine while bumping");
    }
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.never_used, 0);
    cr_assert_eq(st.free, PAGE);
    cr_assert_eq(st.free_spans, 1);

    struct code_chunk *again = alloc_checked(cache, PAGE);
    cr_assert_eq(chunk_base(again), st.base, "then the freed span is reused");
    /* Its memory is fresh: the old content was given back (mprotect: zeroes) or trapped (dual). */
    expect_fresh_chunk(again);

    errno = 0;
    cr_assert_null(code_cache_alloc(cache, PAGE));
    cr_assert_eq(errno, ENOSPC);
    check_maps(cache);
    code_chunk_free(again);
    code_chunk_free(b);
    for (int i = 0; i < 6; i++)
        code_chunk_free(more[i]);
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(chunk, coalesced_neighbours_satisfy_a_bigger_request_first_fit)
{
    struct code_cache *cache = test_cache_near_helper(8 * PAGE);
    struct code_chunk *c[8];
    for (int i = 0; i < 8; i++)
        c[i] = alloc_checked(cache, PAGE);
    uintptr_t base = chunk_base(c[0]);
    errno = 0;
    cr_assert_null(code_cache_alloc(cache, PAGE));
    cr_assert_eq(errno, ENOSPC);

    free_checked(cache, c[5]);
    free_checked(cache, c[2]);
    free_checked(cache, c[3]);
    /* Free: pages 2, 3 and 5. Two pages: pages 2-3, the lowest fit, merged from two chunks. */
    struct code_chunk *two = alloc_checked(cache, 2 * PAGE);
    cr_assert_eq(chunk_base(two), base + 2 * PAGE);
    errno = 0;
    cr_assert_null(code_cache_alloc(cache, 2 * PAGE), "page 5 alone is too small");
    cr_assert_eq(errno, ENOSPC);
    check_maps(cache);

    free_checked(cache, c[6]);
    free_checked(cache, c[4]);
    /* Free: 4, 5, 6. Three pages from three chunks, with a sealed chunk beside them. */
    cr_assert_eq(code_chunk_seal(c[7]), 0);
    struct code_chunk *three = alloc_checked(cache, 3 * PAGE);
    cr_assert_eq(chunk_base(three), base + 4 * PAGE);
    expect_prot((void *)(base + 7 * PAGE), PAGE, "r-x");

    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free, 0);
    cr_assert_eq(st.in_use, 8 * PAGE);
    code_cache_destroy(cache); /* with every chunk still live: destroy frees them */
}

Test(chunk, full_cache_fails_with_ENOSPC_and_stays_usable)
{
    struct code_cache *cache = test_cache_near_helper(32 * PAGE);
    struct code_chunk *c[32];
    size_t n = 0;
    for (;;) {
        struct code_chunk *chunk = code_cache_alloc(cache, 3 * PAGE);
        if (chunk == NULL) {
            cr_assert_eq(errno, ENOSPC);
            break;
        }
        c[n++] = chunk;
        emit_return(chunk, (int)n);
        seal_checked(cache, chunk);
    }
    cr_assert_eq(n, 10, "32 pages hold ten 3-page chunks");
    struct code_chunk *last = alloc_checked(cache, 2 * PAGE);
    cr_assert_null(code_cache_alloc(cache, PAGE));
    cr_assert_eq(errno, ENOSPC);
    check_maps(cache);

    free_checked(cache, c[4]);
    struct code_chunk *chunk = alloc_checked(cache, 3 * PAGE);
    jit_fn fn = emit_return(chunk, 99);
    seal_checked(cache, chunk);
    cr_assert_eq(fn(), 99);
    for (size_t i = 0; i < n; i++)
        if (i != 4)
            cr_assert_eq(((jit_fn)code_chunk_span(c[i]).rx)(), (int)i + 1);
    code_cache_destroy(cache);
    (void)last;
}

Test(chunk, chunks_are_rounded_up_to_the_granule_and_bumped_side_by_side)
{
    struct code_cache *cache = test_cache_near_helper(64 * PAGE);
    const size_t granule = stats(cache).granule;
    cr_assert_eq(granule, test_dual() ? 64 : PAGE, "a page (mprotect) or 64 bytes (dual)");
    static const size_t sizes[] = {1, 63, 64, 65, 200, 1000, 4095, 4097};
    enum { N = sizeof sizes / sizeof sizes[0] };
    struct code_chunk *c[N];
    uintptr_t next = stats(cache).base;
    size_t in_use = 0;
    for (size_t i = 0; i < N; i++) {
        c[i] = alloc_checked(cache, sizes[i]);
        struct code_span span = code_chunk_span(c[i]);
        cr_assert_eq(span.size, round_up(sizes[i], granule), "size %zu", sizes[i]);
        cr_assert_eq((uintptr_t)span.rx, next, "size %zu: right after the previous chunk",
                     sizes[i]);
        next += span.size;
        in_use += span.size;
        cr_assert_eq(stats(cache).in_use, in_use);
        expect_fresh_chunk(c[i]);
        /* Each chunk gets its own function, at its first byte and filling it. */
        struct code_span all = code_chunk_alloc(c[i], span.size, 1);
        cr_assert_eq(all.rx, span.rx);
        fill_return(all, (int)i);
    }
    for (size_t i = 0; i < N; i++)
        seal_checked(cache, c[i]);
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(((jit_fn)code_chunk_span(c[i]).rx)(), (int)i);
    for (size_t i = 0; i < N; i++)
        free_checked(cache, c[i]);
    code_cache_destroy(cache);
}

Test(chunk, statistics_follow_every_operation)
{
    struct code_cache *cache = test_cache_near_helper(64 * PAGE);
    const struct costs cost = costs_of(cache);
    const bool dual = test_cache_is_dual(cache);
    /* Committing ahead of the bump pointer goes in steps of 64 KiB at first. */
    const size_t step = (64 * 1024 > PAGE ? 64 * 1024 : PAGE);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.reserved, 64 * PAGE);
    cr_assert_eq(st.granule, dual ? 64 : PAGE);
    if (dual) {
        cr_assert_str_eq(st.backend, "dual");
        cr_assert_not_null(st.dual_file);
        cr_assert_str_eq(st.dual_file, "memfd", "memfd_create works on these machines");
        cr_assert_eq(st.protection_changes, 0, "the dual backend never calls mprotect");
        /* memfd_create (twice on a kernel before 6.3, which refuses MFD_EXEC), ftruncate, the
         * trial r-x mapping and its munmap, F_ADD_SEALS, the RW view's reservation, its mapping
         * and MADV_DONTFORK. */
        cr_assert(st.system_calls == 8 || st.system_calls == 9, "%zu system calls at create",
                  st.system_calls);
    } else {
        cr_assert_str_eq(st.backend, "mprotect");
        cr_assert_null(st.dual_file);
        cr_assert_eq(st.protection_changes, 2, "the exec probe: r-x and back");
        cr_assert_eq(st.system_calls, 2);
    }
    cr_assert_eq(st.committed, 0);
    cr_assert_eq(st.in_use, 0);
    cr_assert_eq(st.committed_ahead, 0);
    cr_assert_eq(st.free_ready, 0);
    cr_assert_eq(st.free, 64 * PAGE);
    cr_assert_eq(st.never_used, 64 * PAGE);
    cr_assert_eq(st.retired, 0);
    cr_assert_eq(st.free_spans, 0);
    cr_assert_eq(st.open_chunks + st.sealed_chunks + st.chunks_allocated, 0);
    cr_assert_gt(st.meta_bytes, 0, "the cache's own record lives in its arena");
    cr_assert_geq(st.meta_resident, st.meta_bytes, "the arena's pages hold at least that");
    cr_assert_eq(st.reach, TEST_CALL_REACH);
    cr_assert_eq(st.near, (const void *)helper_triple);
    cr_assert(code_cache_reaches(cache, (const void *)helper_triple));
    const size_t meta0 = st.meta_bytes, prot0 = st.protection_changes;
    size_t calls0 = st.system_calls;

    /* The first chunk commits itself and a step ahead: one commit. */
    struct code_chunk *a = alloc_checked(cache, 2 * PAGE);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.in_use, 2 * PAGE);
    cr_assert_eq(st.committed_ahead, step);
    cr_assert_eq(st.committed, 2 * PAGE + step);
    cr_assert_eq(st.protection_changes, prot0 + cost.commit_prot);
    /* The first commit of the process runs the dual backend's fetch probe: see costs_of. */
    const size_t probe = dual && test_dual_fetch_is_stale() ? 1 : 0;
    calls0 += probe;
    cr_assert_eq(st.system_calls, calls0 + cost.commit, "%zu system calls, expected %zu",
                 st.system_calls - calls0, cost.commit);
    /* The second comes from the step: no system call at all. */
    struct code_chunk *b = alloc_checked(cache, 3 * PAGE);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.committed, 2 * PAGE + step);
    cr_assert_eq(st.committed_ahead, step - 3 * PAGE);
    cr_assert_eq(st.in_use, 5 * PAGE);
    cr_assert_eq(st.free, 59 * PAGE);
    cr_assert_eq(st.never_used, 59 * PAGE);
    cr_assert_eq(st.open_chunks, 2);
    cr_assert_eq(st.sealed_chunks, 0);
    cr_assert_eq(st.chunks_allocated, 2);
    cr_assert_eq(st.system_calls, calls0 + cost.commit,
                 "an allocation from the step makes no system call");
    cr_assert_gt(st.meta_bytes, meta0, "chunk records");

    seal_checked(cache, a);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.open_chunks, 1);
    cr_assert_eq(st.sealed_chunks, 1);
    cr_assert_eq(st.protection_changes, prot0 + cost.commit_prot + cost.seal_prot);
    cr_assert_eq(st.system_calls, calls0 + cost.commit + cost.seal,
                 "a seal is one mprotect (mprotect) or no call (dual)");

    free_checked(cache, a);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.in_use, 3 * PAGE);
    /* mprotect gives a freed span back at once; dual keeps it committed and trapped, ready. */
    cr_assert_eq(st.free_ready, dual ? 2 * PAGE : 0);
    cr_assert_eq(st.committed, 3 * PAGE + step - 3 * PAGE + st.free_ready);
    cr_assert_eq(st.free, 61 * PAGE);
    cr_assert_eq(st.never_used, 59 * PAGE);
    cr_assert_eq(st.free_spans, 1);
    cr_assert_eq(st.open_chunks, 1);
    cr_assert_eq(st.sealed_chunks, 0);
    cr_assert_eq(st.chunks_allocated, 2);
    cr_assert_eq(st.protection_changes, prot0 + cost.commit_prot + cost.seal_prot + cost.free_prot);
    cr_assert_eq(st.system_calls, calls0 + cost.commit + cost.seal + cost.free,
                 "a free is mprotect and madvise (mprotect) or no call (dual)");

    free_checked(cache, b);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.in_use, 0);
    cr_assert_eq(st.committed, st.committed_ahead + st.free_ready);
    cr_assert_eq(st.free_ready, dual ? 5 * PAGE : 0);
    cr_assert_eq(st.free, 64 * PAGE);
    cr_assert_eq(st.free_spans, 1, "b coalesced with a's span");
    cr_assert_eq(st.open_chunks + st.sealed_chunks, 0);
    code_cache_get_stats(NULL, &st);
    code_cache_get_stats(cache, NULL);
    code_cache_destroy(cache);
}
