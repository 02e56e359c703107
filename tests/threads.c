/*
 * Threads: several threads allocate, write, seal, run and free chunks of one cache at once; no two
 * live spans ever overlap, every function returns its own value, and while they work the test's
 * thread keeps reading /proc/self/maps to catch a moment when a page of the cache is writable and
 * executable. A thread also runs sealed code without pause while the others churn around it.
 *
 * Run once per backend (helpers.h). Chunk sizes are drawn in bytes, so with the dual backend
 * (64-byte granules) chunks of different threads share pages, and a thread running sealed code
 * sees others allocate, write, seal, patch and free on its very page. Patching is the dual
 * backend's (mprotect: ENOTSUP).
 *
 * Criterion's assertions may only fail in the test's own thread, so workers record their first
 * failure and the test reports it after joining them.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "helpers.h"

#define PAGE    test_page_size()
#define THREADS 4
#define KEEP    4 /* chunks each thread keeps alive at once */

struct shared {
    struct code_cache *cache;
    bool can_patch;         /* the dual backend */
    uintptr_t watched_page; /* chunks that land on this page are counted in same_page */
    long same_page;
    int rounds;
    pthread_mutex_t lock;
    uintptr_t lo[THREADS][KEEP], hi[THREADS][KEEP]; /* live spans, by owner; 0 = empty */
    int failures;
    char failure[256];
    int running; /* workers not finished yet */
    long runner_calls;
};

__attribute__((format(printf, 2, 3))) static void fail(struct shared *sh, const char *fmt, ...)
{
    pthread_mutex_lock(&sh->lock);
    if (sh->failures++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(sh->failure, sizeof sh->failure, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&sh->lock);
}

/* Records [lo, hi) in slot (t, k), checking it against every other live span. */
static void claim(struct shared *sh, int t, int k, uintptr_t lo, uintptr_t hi)
{
    pthread_mutex_lock(&sh->lock);
    for (int u = 0; u < THREADS; u++)
        for (int j = 0; j < KEEP; j++)
            if (sh->hi[u][j] != 0 && lo < sh->hi[u][j] && sh->lo[u][j] < hi && sh->failures++ == 0)
                snprintf(sh->failure, sizeof sh->failure,
                         "thread %d got [%#lx, %#lx), overlapping thread %d's [%#lx, %#lx)", t,
                         (unsigned long)lo, (unsigned long)hi, u, (unsigned long)sh->lo[u][j],
                         (unsigned long)sh->hi[u][j]);
    sh->lo[t][k] = lo;
    sh->hi[t][k] = hi;
    const uintptr_t page = test_page_size();
    if (sh->watched_page != 0 && (lo & ~(page - 1)) <= sh->watched_page &&
        sh->watched_page <= ((hi - 1) & ~(page - 1)))
        sh->same_page++;
    pthread_mutex_unlock(&sh->lock);
}

static void release(struct shared *sh, int t, int k)
{
    pthread_mutex_lock(&sh->lock);
    sh->lo[t][k] = sh->hi[t][k] = 0;
    pthread_mutex_unlock(&sh->lock);
}

struct worker {
    struct shared *sh;
    int id;
};

#define FUNCTIONS 6

static void *churn(void *arg)
{
    struct worker *w = arg;
    struct shared *sh = w->sh;
    struct code_chunk *kept[KEEP] = {0};
    for (int r = 0; r < sh->rounds && __atomic_load_n(&sh->failures, __ATOMIC_RELAXED) == 0; r++) {
        int k = r % KEEP;
        if (kept[k] != NULL) {
            release(sh, w->id, k);
            code_chunk_free(kept[k]);
            kept[k] = NULL;
        }
        /* 128 bytes (room for the functions below) to three pages, in bytes: whole pages with
         * mprotect, 64-byte granules with dual. */
        size_t size = 128 + (size_t)(r * 7919 + w->id * 131) % (3 * PAGE - 128);
        struct code_chunk *chunk = code_cache_alloc(sh->cache, size);
        if (chunk == NULL) {
            fail(sh, "thread %d round %d: alloc: %s", w->id, r, strerror(errno));
            break;
        }
        struct code_span span = code_chunk_span(chunk);
        claim(sh, w->id, k, (uintptr_t)span.rx, (uintptr_t)span.rx + span.size);
        if (code_cache_find(sh->cache, span.rx) != chunk ||
            code_cache_find(sh->cache, (char *)span.rw + span.size - 1) != chunk)
            fail(sh, "thread %d round %d: code_cache_find does not see its chunk", w->id, r);

        jit_fn fns[FUNCTIONS];
        int expect[FUNCTIONS];
        for (int j = 0; j < FUNCTIONS; j++) {
            int value = w->id << 24 | (r & 0xffff) << 8 | j;
            if (j == 0) {
                fns[j] = try_emit_call(chunk, helper_triple, value & 0xffffff);
                expect[j] = helper_triple(value & 0xffffff);
            } else {
                fns[j] = try_emit_return(chunk, value);
                expect[j] = value;
            }
            if (fns[j] == NULL)
                fail(sh, "thread %d round %d: emit: %s", w->id, r, strerror(errno));
        }
        if (code_chunk_seal(chunk) != 0) {
            fail(sh, "thread %d round %d: seal: %s", w->id, r, strerror(errno));
            code_chunk_free(chunk);
            release(sh, w->id, k);
            break;
        }
        for (int j = 0; j < FUNCTIONS; j++)
            if (fns[j] != NULL && fns[j]() != expect[j])
                fail(sh, "thread %d round %d: function %d returned the wrong value", w->id, r, j);
        /* Patch the value function 1 returns (its mov eax, imm32 lies in one aligned 8-byte
         * word: an atomic store), while others run code on the same page. */
        if (fns[1] != NULL) {
            int patched = expect[1] ^ 0x5a5a5a;
            int rc = code_chunk_patch(chunk, (char *)fns[1] + 1, &patched, sizeof patched);
            if (sh->can_patch && rc != 0)
                fail(sh, "thread %d round %d: patch: %s", w->id, r, strerror(errno));
            else if (!sh->can_patch && (rc != -1 || errno != ENOTSUP))
                fail(sh, "thread %d round %d: patch with mprotect: %d, %s", w->id, r, rc,
                     strerror(errno));
            if (rc == 0)
                expect[1] = patched;
            if (fns[1]() != expect[1])
                fail(sh, "thread %d round %d: the patched function returned the wrong value", w->id,
                     r);
        }
        kept[k] = chunk;
    }
    for (int k = 0; k < KEEP; k++) {
        if (kept[k] != NULL) {
            release(sh, w->id, k);
            code_chunk_free(kept[k]);
        }
    }
    __atomic_fetch_sub(&sh->running, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

/* Watches the maps while the workers run; returns how many times it looked. */
static int watch(struct shared *sh)
{
    int looks = 0;
    while (__atomic_load_n(&sh->running, __ATOMIC_SEQ_CST) > 0) {
        check_no_wx(sh->cache);
        looks++;
    }
    return looks;
}

static void shared_init(struct shared *sh, struct code_cache *cache, int rounds, int workers)
{
    memset(sh, 0, sizeof *sh);
    sh->cache = cache;
    sh->can_patch = test_cache_is_dual(cache);
    sh->rounds = rounds;
    sh->running = workers;
    pthread_mutex_init(&sh->lock, NULL);
}

Test(threads, allocate_seal_run_and_free_concurrently_without_overlap)
{
    struct code_cache *cache = test_cache_near_helper(256 * PAGE);
    struct shared sh;
    shared_init(&sh, cache, test_under_valgrind() ? 1000 : 5000, THREADS);
    pthread_t tid[THREADS];
    struct worker w[THREADS];
    for (int t = 0; t < THREADS; t++) {
        w[t] = (struct worker){&sh, t};
        cr_assert_eq(pthread_create(&tid[t], NULL, churn, &w[t]), 0);
    }
    int looks = watch(&sh);
    for (int t = 0; t < THREADS; t++)
        pthread_join(tid[t], NULL);
    cr_assert_eq(sh.failures, 0, "%d failures; first: %s", sh.failures, sh.failure);
    cr_log_info("%d threads x %d rounds; the maps were checked %d times meanwhile", THREADS,
                sh.rounds, looks);
    cr_assert_gt(looks, 0);

    check_maps(cache);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.open_chunks + st.sealed_chunks, 0);
    cr_assert_eq(st.in_use, 0);
    cr_assert_eq(st.committed, st.committed_ahead + st.free_ready);
    cr_assert_eq(st.chunks_allocated, (size_t)THREADS * sh.rounds);
    /* Less than the smallest request (128 bytes) is left at the top: a page with mprotect,
     * possibly one granule with dual. */
    cr_assert_lt(st.never_used, 128,
                 "the bump pointer ran out and freed spans were reused: %zu "
                 "bytes never used",
                 st.never_used);
    pthread_mutex_destroy(&sh.lock);
    code_cache_destroy(cache);
}

struct runner {
    struct shared *sh;
    jit_fn fn;
    int expect;
};

static void *run_sealed(void *arg)
{
    struct runner *r = arg;
    long calls = 0;
    do {
        for (int i = 0; i < 100; i++)
            if (r->fn() != r->expect)
                fail(r->sh, "sealed code returned the wrong value while others churned");
        calls += 100;
    } while (__atomic_load_n(&r->sh->running, __ATOMIC_SEQ_CST) > 0);
    r->sh->runner_calls = calls;
    return NULL;
}

Test(threads, sealed_code_runs_while_other_threads_churn_next_to_it)
{
    struct code_cache *cache = test_cache_near_helper(128 * PAGE);
    /* 100 bytes: a page with mprotect, two granules with dual, the rest of its page is the
     * others'. */
    struct code_chunk *chunk = code_cache_alloc(cache, 100);
    cr_assert_not_null(chunk);
    jit_fn fn = emit_call(chunk, helper_triple, 1234);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    check_maps(cache);

    struct shared sh;
    shared_init(&sh, cache, test_under_valgrind() ? 500 : 3000, THREADS - 1);
    sh.watched_page = (uintptr_t)fn & ~(uintptr_t)(PAGE - 1);
    struct runner runner = {&sh, fn, 3 * 1234 + 1};
    pthread_t run_tid, tid[THREADS - 1];
    struct worker w[THREADS - 1];
    cr_assert_eq(pthread_create(&run_tid, NULL, run_sealed, &runner), 0);
    for (int t = 0; t < THREADS - 1; t++) {
        w[t] = (struct worker){&sh, t};
        cr_assert_eq(pthread_create(&tid[t], NULL, churn, &w[t]), 0);
    }
    watch(&sh);
    for (int t = 0; t < THREADS - 1; t++)
        pthread_join(tid[t], NULL);
    pthread_join(run_tid, NULL);
    cr_assert_eq(sh.failures, 0, "%d failures; first: %s", sh.failures, sh.failure);
    cr_assert_gt(sh.runner_calls, 0);
    cr_log_info("the sealed function ran %ld times meanwhile; %ld chunks on its page",
                sh.runner_calls, sh.same_page);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    if (st.granule < PAGE)
        cr_assert_gt(sh.same_page, 0, "no chunk of the others landed on the running page");
    else
        cr_assert_eq(sh.same_page, 0, "a page-granular chunk shared a page");
    check_maps(cache);
    cr_assert_eq(fn(), 3 * 1234 + 1);
    code_chunk_free(chunk);
    check_maps(cache);
    pthread_mutex_destroy(&sh.lock);
    code_cache_destroy(cache);
}
