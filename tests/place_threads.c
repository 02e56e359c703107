/*
 * Concurrent placement: threads creating and destroying caches near the same target at once.
 * They race for the same free spots (MAP_FIXED_NOREPLACE makes the loser fail with EEXIST and
 * try elsewhere); no two live caches may ever overlap, and every one must reach the target.
 * Failures are counted in the threads and asserted in the test's own thread, since a Criterion
 * assertion must not fire from another thread.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "place_helpers.h"

#define THREADS         8
#define ITERATIONS      20
#define LIVE_PER_THREAD 2

/* The live caches of every thread, checked for overlap on each create. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct test_region registry[THREADS * LIVE_PER_THREAD];

static atomic_uint created, failures, overlaps, out_of_reach;
static char first_failure[256];

struct worker {
    unsigned index;
    const void *target;
    size_t reach, size;
};

static void note_failure(const char *what)
{
    if (atomic_fetch_add(&failures, 1) == 0)
        snprintf(first_failure, sizeof first_failure, "%s", what);
}

/* Records r in slot, after checking it against every other live cache. */
static void registry_enter(size_t slot, struct test_region r)
{
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < THREADS * LIVE_PER_THREAD; i++)
        if (registry[i].hi > registry[i].lo && r.lo < registry[i].hi && r.hi > registry[i].lo)
            atomic_fetch_add(&overlaps, 1);
    registry[slot] = r;
    pthread_mutex_unlock(&registry_lock);
}

static void registry_leave(size_t slot)
{
    pthread_mutex_lock(&registry_lock);
    registry[slot] = (struct test_region){0, 0};
    pthread_mutex_unlock(&registry_lock);
}

static void *worker_run(void *arg)
{
    const struct worker *w = arg;
    struct code_cache *live[LIVE_PER_THREAD] = {0};
    struct code_cache_options opts = {.near = w->target, .size = w->size, .reach = w->reach};
    for (unsigned i = 0; i < ITERATIONS; i++) {
        /* Keep up to two caches alive per thread, so up to 16 compete for the window. */
        size_t slot = i % LIVE_PER_THREAD, reg = w->index * LIVE_PER_THREAD + slot;
        if (live[slot] != NULL) {
            registry_leave(reg);
            code_cache_destroy(live[slot]);
        }
        live[slot] = code_cache_create(&opts);
        if (live[slot] == NULL) {
            char what[128];
            snprintf(what, sizeof what, "create: errno %d (%s)", errno, strerror(errno));
            note_failure(what);
            continue;
        }
        atomic_fetch_add(&created, 1);
        struct test_region r = test_cache_region(live[slot]);
        if (!test_reaches(r.lo, r.hi, (uintptr_t)w->target, w->reach) ||
            !code_cache_reaches(live[slot], w->target))
            atomic_fetch_add(&out_of_reach, 1);
        registry_enter(reg, r);
    }
    for (size_t slot = 0; slot < LIVE_PER_THREAD; slot++) {
        if (live[slot] != NULL) {
            registry_leave(w->index * LIVE_PER_THREAD + slot);
            code_cache_destroy(live[slot]);
        }
    }
    return NULL;
}

static void run_workers(const void *target, size_t reach, size_t size)
{
    pthread_t threads[THREADS];
    struct worker workers[THREADS];
    for (unsigned i = 0; i < THREADS; i++) {
        workers[i] = (struct worker){i, target, reach, size};
        cr_assert_eq(pthread_create(&threads[i], NULL, worker_run, &workers[i]), 0);
    }
    for (unsigned i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    cr_assert_eq(failures, 0, "%u failures, the first: %s", failures, first_failure);
    cr_assert_eq(created, THREADS * ITERATIONS);
    cr_assert_eq(overlaps, 0, "%u overlaps between live caches", overlaps);
    cr_assert_eq(out_of_reach, 0, "%u caches out of reach", out_of_reach);
}

static __attribute__((noinline, used)) int place_threads_helper(int x)
{
    return x * 3;
}

Test(place_threads, near_the_same_function_with_the_default_reach)
{
    run_workers((const void *)place_threads_helper, TEST_CALL_REACH, 1 * MiB);
}

Test(place_threads, in_a_tight_window_where_threads_collide)
{
    /* A 32 MiB window for up to 16 live caches of 1 MiB: random spots collide often, so the
     * EEXIST path and the rescans run for real. */
    const size_t reach = 16 * MiB;
    uintptr_t area = test_free_area(4 * reach);
    run_workers((const void *)(area + 2 * reach), reach, 1 * MiB);
}
