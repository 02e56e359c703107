/*
 * Cross-thread state changes, made to happen: this program interposes mprotect (for the library's
 * calls only) and can hold one kind of call for a while, so that another thread acts inside the
 * window. A seal racing a reset, a free racing a seal, an allocation racing a reset: each ends in
 * a documented result, consistent statistics, and no page left executable after it was released.
 * And no system call is made under the cache's lock: another thread is never stuck behind one.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

#define PAGE test_page_size()

/* The interposer: a call from the library with protection hold_prot waits hold_ms first. */
static int hold_prot = -1;
static int hold_ms;
static int held; /* set when a held call starts waiting */

int mprotect(void *addr, size_t len, int prot)
{
    if (prot == __atomic_load_n(&hold_prot, __ATOMIC_SEQ_CST) &&
        test_called_from_library(__builtin_return_address(0))) {
        __atomic_store_n(&held, 1, __ATOMIC_SEQ_CST);
        usleep((useconds_t)hold_ms * 1000);
    }
    return (int)syscall(SYS_mprotect, addr, len, prot);
}

static void hold(int prot, int ms)
{
    __atomic_store_n(&held, 0, __ATOMIC_SEQ_CST);
    hold_ms = ms;
    __atomic_store_n(&hold_prot, prot, __ATOMIC_SEQ_CST);
}

static void release_hold(void)
{
    __atomic_store_n(&hold_prot, -1, __ATOMIC_SEQ_CST);
}

static void wait_until_held(void)
{
    while (!__atomic_load_n(&held, __ATOMIC_SEQ_CST))
        usleep(1000);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

struct call {
    struct code_chunk *chunk;
    struct code_cache *cache;
    size_t size;
    int result, err;
};

static void *seal_thread(void *arg)
{
    struct call *c = arg;
    errno = 0;
    c->result = code_chunk_seal(c->chunk);
    c->err = errno;
    return NULL;
}

static void *alloc_thread(void *arg)
{
    struct call *c = arg;
    errno = 0;
    c->chunk = code_cache_alloc(c->cache, c->size);
    c->err = errno;
    return NULL;
}

static void *free_thread(void *arg)
{
    struct call *c = arg;
    code_chunk_free(c->chunk);
    return NULL;
}

/* After a reset everything is FREED: the statistics say so and no page is accessible. */
static void expect_empty(struct code_cache *cache)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.open_chunks, 0, "open_chunks %zu", st.open_chunks);
    cr_assert_eq(st.sealed_chunks, 0, "sealed_chunks %zu", st.sealed_chunks);
    cr_assert_eq(st.in_use, 0);
    cr_assert_eq(st.committed, 0);
    check_maps(cache);
    expect_prot((void *)st.base, st.reserved, "---");
}

/* Two fresh chunks after the race: distinct records, both usable (a record in two lists would be
 * handed out twice). */
static void expect_records_sane(struct code_cache *cache)
{
    struct code_chunk *a = code_cache_alloc(cache, PAGE);
    struct code_chunk *b = code_cache_alloc(cache, PAGE);
    cr_assert(a != NULL && b != NULL && a != b, "records handed out twice: %p %p", a, b);
    jit_fn fa = emit_return(a, 1), fb = emit_return(b, 2);
    cr_assert_eq(code_chunk_seal(a), 0);
    cr_assert_eq(code_chunk_seal(b), 0);
    cr_assert_eq(fa() + fb(), 3);
    code_chunk_free(a);
    code_chunk_free(b);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.open_chunks + st.sealed_chunks, 0);
}

Test(races, a_reset_during_a_seal_waits_for_it_and_leaves_nothing_executable)
{
    /* Before the fix, seal read the state without the lock, called mprotect, and then marked the
     * record SEALED without looking again: a reset in that window left the page r-x after the
     * reset, the record both live and recycled, and open_chunks wrapped to 2^64 - 1. */
    struct code_cache *cache = test_cache_near_helper(64 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk);
    emit_return(chunk, 7);
    struct call c = {.chunk = chunk};
    pthread_t t;
    hold(PROT_READ | PROT_EXEC, 300);
    cr_assert_eq(pthread_create(&t, NULL, seal_thread, &c), 0);
    wait_until_held();
    cr_assert_eq(code_cache_reset(cache), 0, "%s", strerror(errno));
    pthread_join(t, NULL);
    release_hold();
    /* The seal began before the reset: it completes, and the reset then frees the chunk. */
    cr_assert_eq(c.result, 0, "seal: %s", strerror(c.err));
    expect_empty(cache);
    errno = 0;
    cr_assert_eq(code_chunk_seal(chunk), -1, "the chunk was freed by the reset");
    cr_assert_eq(errno, EPERM);
    expect_records_sane(cache);
    code_cache_destroy(cache);
}

Test(races, a_seal_after_a_reset_fails_with_EPERM)
{
    struct code_cache *cache = test_cache_near_helper(64 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    emit_return(chunk, 7);
    cr_assert_eq(code_cache_reset(cache), 0);
    errno = 0;
    cr_assert_eq(code_chunk_seal(chunk), -1);
    cr_assert_eq(errno, EPERM);
    expect_empty(cache);
    expect_records_sane(cache);
    code_cache_destroy(cache);
}

Test(races, a_free_during_a_seal_of_the_same_chunk_waits_for_the_seal)
{
    /* Misuse (the chunk belongs to one thread until sealed), survived: the free waits for the
     * seal to settle instead of changing the state under it. */
    struct code_cache *cache = test_cache_near_helper(64 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    struct code_span span = code_chunk_span(chunk);
    emit_return(chunk, 7);
    struct call c = {.chunk = chunk};
    pthread_t t;
    hold(PROT_READ | PROT_EXEC, 200);
    cr_assert_eq(pthread_create(&t, NULL, seal_thread, &c), 0);
    wait_until_held();
    code_chunk_free(chunk);
    pthread_join(t, NULL);
    release_hold();
    cr_assert_eq(c.result, 0);
    expect_prot(span.rx, span.size, "---");
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.open_chunks + st.sealed_chunks, 0);
    check_maps(cache);
    expect_records_sane(cache);
    code_cache_destroy(cache);
}

Test(races, a_reset_during_an_allocation_waits_for_it)
{
    /* The allocation commits its memory outside the lock; the reset must not release the cache
     * under it and must not miss the chunk it hands out. */
    struct code_cache *cache = test_cache_near_helper(64 * PAGE);
    struct call c = {.cache = cache, .size = PAGE};
    pthread_t t;
    hold(PROT_READ | PROT_WRITE, 200);
    cr_assert_eq(pthread_create(&t, NULL, alloc_thread, &c), 0);
    wait_until_held();
    cr_assert_eq(code_cache_reset(cache), 0);
    pthread_join(t, NULL);
    release_hold();
    cr_assert_not_null(c.chunk, "alloc: %s", strerror(c.err));
    expect_empty(cache);
    errno = 0;
    cr_assert_null(code_chunk_alloc(c.chunk, 1, 1).rw, "the chunk was freed by the reset");
    cr_assert_eq(errno, EPERM);
    expect_records_sane(cache);
    code_cache_destroy(cache);
}

/* How long code_cache_get_stats (which takes the cache's lock) and an allocation that needs no
 * system call take while another thread is inside a held mprotect. */
static void expect_lock_free_while_held(struct code_cache *cache, int ms)
{
    wait_until_held();
    double start = now_ms();
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    double stats_ms = now_ms() - start;
    cr_assert_lt(stats_ms, ms / 2.0, "get_stats waited %.0f ms behind a system call", stats_ms);
}

Test(races, no_system_call_is_made_while_holding_the_lock)
{
    /* Before the fix, code_cache_alloc and code_chunk_free held the cache's lock across
     * mprotect and madvise: every other thread of the cache queued behind them. */
    const int ms = 600;
    struct code_cache *cache = test_cache_near_helper(64 * PAGE);
    pthread_t t;

    /* An allocation committing memory. */
    struct call a = {.cache = cache, .size = PAGE};
    hold(PROT_READ | PROT_WRITE, ms);
    cr_assert_eq(pthread_create(&t, NULL, alloc_thread, &a), 0);
    expect_lock_free_while_held(cache, ms);
    pthread_join(t, NULL);
    release_hold();
    cr_assert_not_null(a.chunk);

    /* A free releasing memory; meanwhile another thread allocates from the step committed
     * ahead, which needs no system call, and must not wait either. */
    struct call f = {.chunk = a.chunk};
    hold(PROT_NONE, ms);
    cr_assert_eq(pthread_create(&t, NULL, free_thread, &f), 0);
    expect_lock_free_while_held(cache, ms);
    double start = now_ms();
    struct code_chunk *other = code_cache_alloc(cache, PAGE);
    double alloc_ms = now_ms() - start;
    cr_assert_not_null(other);
    cr_assert_lt(alloc_ms, ms / 2.0, "an allocation waited %.0f ms behind a free", alloc_ms);
    pthread_join(t, NULL);
    release_hold();
    check_maps(cache);
    code_chunk_free(other);
    code_cache_destroy(cache);
}

/* Real threads, no hold: seals, allocations and veneer requests racing resets, many times. The
 * invariants are checked after each round; ThreadSanitizer runs the same kind of workload in the
 * stress program. */
struct racer {
    struct code_cache *cache;
    int (*far)(int);
    int rounds, failures, stop;
    char failure[160];
};

static void *racer_thread(void *arg)
{
    struct racer *r = arg;
    for (; !__atomic_load_n(&r->stop, __ATOMIC_SEQ_CST); r->rounds++) {
        struct code_chunk *chunk = code_cache_alloc(r->cache, PAGE);
        if (chunk == NULL)
            continue; /* ENOSPC while a reset is pending is fine */
        const void *v = code_chunk_call_target(chunk, (const void *)r->far);
        if (v == NULL && errno != EPERM && r->failures++ == 0)
            snprintf(r->failure, sizeof r->failure, "call_target: %s", strerror(errno));
        /* Claimed but not written: a reset may release the page at any moment, and a store
         * there would fault (deterministically, as documented) and end the test. */
        if (code_chunk_alloc(chunk, 6, 1).rw == NULL && errno != EPERM && r->failures++ == 0)
            snprintf(r->failure, sizeof r->failure, "alloc: %s", strerror(errno));
        int rc = code_chunk_seal(chunk);
        if (rc != 0 && errno != EPERM && r->failures++ == 0)
            snprintf(r->failure, sizeof r->failure, "seal: %s", strerror(errno));
    }
    return NULL;
}

Test(races, seals_and_allocations_racing_resets_keep_the_cache_consistent)
{
    struct code_cache *cache = test_cache_near_helper(256 * PAGE);
    int (*far)(int) = far_function(cache);
    struct racer r = {.cache = cache, .far = far};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, racer_thread, &r), 0);
    /* Fewer under valgrind, and in an emulator, where reading the maps (check_no_wx) is slow. */
    const int resets = test_under_valgrind() ? 100 : test_under_emulator() ? 200 : 2000;
    for (int i = 0; i < resets; i++) {
        cr_assert_eq(code_cache_reset(cache), 0);
        check_no_wx(cache);
    }
    __atomic_store_n(&r.stop, 1, __ATOMIC_SEQ_CST);
    pthread_join(t, NULL);
    cr_log_info("%d rounds raced %d resets", r.rounds, resets);
    cr_assert_gt(r.rounds, 0);
    cr_assert_eq(r.failures, 0, "%s", r.failure);
    cr_assert_eq(code_cache_reset(cache), 0);
    expect_empty(cache);
    expect_records_sane(cache);
    code_cache_destroy(cache);
    far_function_release(far);
}
