/*
 * ThreadSanitizer stress (`make tsan`, then `tests/tsan_stress [SECONDS]`): the library compiled
 * with -fsanitize=thread into this program, and threads that use it the way a multi-threaded JIT
 * does, at once:
 *
 *   - workers allocate chunks on two shared caches (mprotect and dual), write code that calls a
 *     helper (through a veneer when needed) and returns a value, seal it, run it, find it, and
 *     free it, or publish it to a pool where other workers take it, name it, run it, patch it
 *     (dual) and free it: a sealed chunk changes hands between threads (names are looked up with
 *     code_chunk_name_at, and the mprotect cache registers them with the GDB JIT interface);
 *   - a finder calls code_cache_find, code_cache_reaches and code_cache_get_stats on the shared
 *     caches all the time (lock-free readers next to the writers);
 *   - a lifecycle thread creates, uses, resets and destroys caches of its own;
 *   - method JITs: threads that make, run and free small unnamed functions one at a time on a
 *     shared dual cache of 4 MiB, which their thread caches (lib/tcache.c) fill: each hands kept
 *     chunks out again to itself, and takes the others' back when the cache is full (ENOSPC),
 *     while short-lived threads do the same and exit (giving theirs back), and a burster makes
 *     2.1 MiB of 1 KiB functions and frees them all, beyond what a thread keeps (its oldest chunks
 *     go back to the cache under the lock: tcache_flush);
 *   - the misuse the API promises to survive: one thread allocates on a cache R, writes a
 *     function, then asks for a veneer and seals while another thread resets R. The seal returns 0
 *     or EPERM, the veneer a target or EPERM, never anything else, and R is empty and consistent
 *     after each reset. Only that thread allocates on R, and it uses a handle only before its
 *     next allocation, so a stale handle always still names its freed record (code_cache.h,
 *     code_chunk_free: records are reused only once more than 64 wait).
 *
 * Zero reports: ThreadSanitizer's exit code (66) fails the program when it reported anything.
 * tests/tsan.supp holds the suppressions, each with its reason (none is for this library).
 * The counts of every operation are printed at the end.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "code_cache.h"
#include "jit.h"
#include "proc.h"

#define WORKERS 3
#define POOL    64

static atomic_bool stop;
static struct code_cache *shared[2]; /* mprotect, dual */
static int (*far)(int);

static struct code_cache *methods; /* dual, 4 MiB: the thread caches' workload */
static atomic_ullong n_method, n_method_full, n_method_threads, n_bursts;
static atomic_ullong n_alloc, n_seal, n_run, n_patch, n_find, n_free, n_handover, n_lifecycle,
    n_race_seal_ok, n_race_seal_eperm, n_race_veneer_eperm, n_resets, n_enospc;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tsan_stress: FAILED: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

__attribute__((noinline)) static int helper(int x)
{
    return 2 * x + 1;
}

static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* A sealed chunk with its two functions: one returns value, one calls a helper. */
struct job {
    struct code_chunk *chunk;
    struct code_cache *cache;
    int (*ret)(void);
    int (*call)(void);
    int value, arg;
    int (*callee)(int);
};

/* Allocates, writes, seals. False when the cache is full. */
static bool job_make(struct job *j, struct code_cache *cache, uint64_t *rng)
{
    size_t size = 64 + next_random(rng) % 8192;
    j->cache = cache;
    j->chunk = code_cache_alloc(cache, size);
    if (j->chunk == NULL) {
        if (errno != ENOSPC)
            fail("code_cache_alloc: %s", strerror(errno));
        n_enospc++;
        return false;
    }
    n_alloc++;
    j->callee = next_random(rng) % 2 ? helper : far;
    const void *target = code_chunk_call_target(j->chunk, (const void *)j->callee);
    if (target == NULL)
        fail("code_chunk_call_target: %s", strerror(errno));
    struct code_span a = code_chunk_alloc(j->chunk, JIT_CALL_SIZE, 16);
    struct code_span b = code_chunk_alloc(j->chunk, JIT_RETURN_SIZE, 8);
    if (a.rw == NULL || b.rw == NULL)
        fail("code_chunk_alloc: %s", strerror(errno));
    j->arg = (int)(next_random(rng) % 1000);
    j->value = (int)(next_random(rng) % 100000);
    if (!jit_call(a.rw, (uintptr_t)a.rx, target, j->arg))
        fail("the call target is out of reach");
    jit_return(b.rw, JIT_RETURN_SIZE, j->value);
    if (code_chunk_name(j->chunk, a.rx, JIT_CALL_SIZE, "tsan_call") != 0)
        fail("code_chunk_name: %s", strerror(errno));
    if (code_chunk_seal(j->chunk) != 0)
        fail("code_chunk_seal: %s", strerror(errno));
    n_seal++;
    j->call = (int (*)(void))a.rx;
    j->ret = (int (*)(void))b.rx;
    return true;
}

static void job_run(const struct job *j)
{
    if (j->call() != j->callee(j->arg) || j->ret() != j->value)
        fail("sealed code returned the wrong value");
    if (code_cache_find(j->cache, (const void *)j->ret) != j->chunk)
        fail("code_cache_find does not find a live chunk");
    const char *name = code_chunk_name_at(j->chunk, (const void *)j->call, NULL, NULL);
    if (name == NULL || strcmp(name, "tsan_call") != 0)
        fail("code_chunk_name_at lost a name");
    n_run++;
}

/* Dual backend: a new value, patched in with one atomic store. */
static void job_patch(struct job *j, uint64_t *rng)
{
    int value = (int)(next_random(rng) % 100000);
    int rc = code_chunk_patch(j->chunk, (char *)j->ret + JIT_RETURN_VALUE_AT, &value, 4);
    if (rc == 0) {
        j->value = value;
        n_patch++;
    } else if (errno != ENOTSUP) {
        fail("code_chunk_patch: %s", strerror(errno));
    }
}

/* The pool where sealed chunks change hands. */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct job pool[POOL];
static unsigned pool_count;

static void *worker(void *arg)
{
    uint64_t rng = (uint64_t)(uintptr_t)arg * 7919;
    struct job mine[16];
    unsigned nmine = 0;
    while (!atomic_load(&stop)) {
        unsigned what = (unsigned)(next_random(&rng) % 8);
        if (what < 4 && nmine < 16) {
            struct job j;
            if (job_make(&j, shared[next_random(&rng) % 2], &rng)) {
                job_run(&j);
                mine[nmine++] = j;
            }
        } else if (what < 6 && nmine > 0) {
            /* Free one of ours, or hand it to whoever takes it from the pool. */
            struct job j = mine[--nmine];
            pthread_mutex_lock(&pool_lock);
            bool handed = pool_count < POOL && next_random(&rng) % 2;
            if (handed)
                pool[pool_count++] = j;
            pthread_mutex_unlock(&pool_lock);
            if (!handed) {
                code_chunk_free(j.chunk);
                n_free++;
            }
        } else {
            /* Take one from the pool: run it, patch it, give it back or free it. */
            struct job j;
            bool taken = false;
            pthread_mutex_lock(&pool_lock);
            if (pool_count > 0) {
                unsigned i = (unsigned)(next_random(&rng) % pool_count);
                j = pool[i];
                pool[i] = pool[--pool_count];
                taken = true;
            }
            pthread_mutex_unlock(&pool_lock);
            if (!taken)
                continue;
            n_handover++;
            /* Any thread may name a sealed chunk. */
            if (code_chunk_name(j.chunk, (const void *)j.ret, JIT_RETURN_SIZE, "tsan_ret") != 0)
                fail("code_chunk_name of a sealed chunk: %s", strerror(errno));
            job_run(&j);
            job_patch(&j, &rng);
            job_run(&j);
            code_chunk_free(j.chunk);
            n_free++;
        }
    }
    while (nmine > 0) {
        code_chunk_free(mine[--nmine].chunk);
        n_free++;
    }
    return NULL;
}

static void *finder(void *arg)
{
    (void)arg;
    uint64_t rng = 42;
    while (!atomic_load(&stop)) {
        /* The methods cache too: its statistics stop the thread caches' fast paths. */
        struct code_cache *const readers[3] = {shared[0], shared[1], methods};
        for (int k = 0; k < 3; k++) {
            struct code_cache_stats st;
            code_cache_get_stats(readers[k], &st);
            if (st.in_use > st.reserved || st.committed < st.in_use ||
                st.in_use + st.free > st.reserved)
                fail("inconsistent statistics under load");
            for (int i = 0; i < 64; i++) {
                const void *addr = (const void *)(st.base + next_random(&rng) % st.reserved);
                (void)code_cache_find(readers[k], addr);
                (void)code_cache_reaches(readers[k], addr);
                n_find++;
            }
        }
    }
    return NULL;
}

/* Caches of its own: created, used, reset, destroyed, while the others work. */
static void *lifecycle(void *arg)
{
    (void)arg;
    uint64_t rng = 7;
    while (!atomic_load(&stop)) {
        struct code_cache_options o = {
            .size = 1 << 20,
            .near = next_random(&rng) % 2 ? (const void *)helper : NULL,
            .flags = next_random(&rng) % 2 ? CODE_CACHE_DUAL_MAP : 0,
        };
        struct code_cache *c = code_cache_create(&o);
        if (c == NULL)
            fail("code_cache_create: %s", strerror(errno));
        for (int round = 0; round < 3; round++) {
            struct job j[4];
            for (int i = 0; i < 4; i++)
                if (job_make(&j[i], c, &rng))
                    job_run(&j[i]);
            if (code_cache_reset(c) != 0)
                fail("code_cache_reset: %s", strerror(errno));
            n_resets++;
        }
        code_cache_destroy(c);
        n_lifecycle++;
    }
    return NULL;
}

/* The seal racing a reset: one thread allocates and seals on R, another resets R. */
static struct code_cache *racing;
static atomic_int race_phase; /* 0: idle, 1: the chunk is written, 2: the reset is done */

static void *racer_seal(void *arg)
{
    (void)arg;
    uint64_t rng = 5;
    while (!atomic_load(&stop)) {
        struct code_chunk *chunk = code_cache_alloc(racing, 4096);
        if (chunk == NULL)
            fail("alloc on the racing cache: %s", strerror(errno));
        struct code_span span = code_chunk_alloc(chunk, JIT_RETURN_SIZE, 8);
        if (span.rw == NULL)
            fail("code_chunk_alloc on the racing cache: %s", strerror(errno));
        jit_return(span.rw, JIT_RETURN_SIZE, 7);
        /* From here on the chunk is only touched through the library. */
        atomic_store(&race_phase, 1);
        /* Both sides wait a random while, so that the reset lands before, between and after
         * the two calls. */
        uint64_t r = next_random(&rng);
        if (r % 3 == 0)
            usleep((useconds_t)(r >> 8) % 2000); /* the resetting thread gets a turn */
        else
            for (unsigned spin = (unsigned)(r >> 8) % 40000; spin > 0; spin--)
                __asm__ volatile("" ::: "memory");
        const void *t = code_chunk_call_target(chunk, (const void *)far);
        if (t == NULL && errno != EPERM)
            fail("a veneer racing a reset: %s", strerror(errno));
        n_race_veneer_eperm += t == NULL;
        int rc = code_chunk_seal(chunk);
        if (rc != 0 && errno != EPERM)
            fail("a seal racing a reset: %s", strerror(errno));
        if (rc == 0)
            n_race_seal_ok++;
        else
            n_race_seal_eperm++;
        while (atomic_load(&race_phase) != 2)
            if (atomic_load(&stop))
                return NULL;
        atomic_store(&race_phase, 0);
    }
    return NULL;
}

static void *racer_reset(void *arg)
{
    (void)arg;
    uint64_t rng = 99;
    while (!atomic_load(&stop)) {
        if (atomic_load(&race_phase) != 1)
            continue;
        for (unsigned spin = (unsigned)(next_random(&rng) % 2000); spin > 0; spin--)
            __asm__ volatile("" ::: "memory");
        if (code_cache_reset(racing) != 0)
            fail("code_cache_reset of the racing cache: %s", strerror(errno));
        struct code_cache_stats st;
        code_cache_get_stats(racing, &st);
        if (st.in_use != 0 || st.open_chunks != 0 || st.sealed_chunks != 0 || st.committed != 0)
            fail("the racing cache is not empty after a reset");
        n_resets++;
        atomic_store(&race_phase, 2);
    }
    return NULL;
}

/* One function at a time, 64 B - 2 KiB, up to `keep` alive (a ring, oldest freed first); when
 * the cache is full, half of them are freed. Every function returns its own value. */
static void methods_churn(uint64_t seed, size_t ops, size_t keep)
{
    struct code_chunk *ring[512];
    int values[512];
    size_t head = 0, count = 0;
    uint64_t rng = seed;
    if (keep > 512)
        keep = 512;
    for (size_t i = 0; i < ops && !atomic_load(&stop); i++) {
        if (count == keep || (count > 0 && next_random(&rng) % 4 == 0)) {
            code_chunk_free(ring[head]);
            head = (head + 1) % 512;
            count--;
        }
        size_t size = 64 + next_random(&rng) % 1985;
        struct code_chunk *c = code_cache_alloc(methods, size);
        if (c == NULL) {
            if (errno != ENOSPC)
                fail("method alloc: %s", strerror(errno));
            n_method_full++;
            for (size_t k = count / 2; k > 0; k--) {
                code_chunk_free(ring[head]);
                head = (head + 1) % 512;
                count--;
            }
            continue;
        }
        struct code_span s = code_chunk_alloc(c, JIT_RETURN_SIZE, 8);
        if (s.rw == NULL)
            fail("method code_chunk_alloc: %s", strerror(errno));
        int value = (int)(next_random(&rng) % 100000);
        jit_return(s.rw, JIT_RETURN_SIZE, value);
        if (code_chunk_seal(c) != 0)
            fail("method seal: %s", strerror(errno));
        if (((int (*)(void))s.rx)() != value)
            fail("a method returned another function's value");
        size_t at = (head + count) % 512;
        ring[at] = c;
        values[at] = value;
        count++;
        n_method++;
        /* The oldest still runs its own code (nobody else's chunk landed on it). */
        struct code_span old = code_chunk_span(ring[head]);
        if (((int (*)(void))old.rx)() != values[head])
            fail("a live method's code changed");
    }
    while (count > 0) {
        code_chunk_free(ring[head]);
        head = (head + 1) % 512;
        count--;
    }
}

static void *method_jit(void *arg)
{
    uint64_t seed = (uintptr_t)arg * 7919;
    while (!atomic_load(&stop))
        methods_churn(seed++, 20000, 400);
    return NULL;
}

static void *method_short(void *arg)
{
    methods_churn((uintptr_t)arg, 3000, 64);
    return NULL;
}

/* 2.1 MiB of 1 KiB functions made, then all freed: a thread keeps at most 2 MiB, so the free of
 * the last ones gives the oldest chunks back under the lock (tcache_flush), next to the method
 * JITs' fast paths, their ENOSPC drains and the finder's statistics. */
#define BURST_FUNCTIONS 2150
static void *method_burster(void *arg)
{
    (void)arg;
    static struct code_chunk *burst[BURST_FUNCTIONS];
    uint64_t rng = 99;
    while (!atomic_load(&stop)) {
        size_t made = 0;
        while (made < BURST_FUNCTIONS && !atomic_load(&stop)) {
            struct code_chunk *c = code_cache_alloc(methods, 1024);
            if (c == NULL) {
                if (errno != ENOSPC)
                    fail("burst alloc: %s", strerror(errno));
                n_method_full++;
                break;
            }
            struct code_span s = code_chunk_alloc(c, JIT_RETURN_SIZE, 8);
            int value = (int)(next_random(&rng) % 100000);
            if (s.rw == NULL)
                fail("burst code_chunk_alloc: %s", strerror(errno));
            jit_return(s.rw, JIT_RETURN_SIZE, value);
            if (code_chunk_seal(c) != 0 || ((int (*)(void))s.rx)() != value)
                fail("a burst function did not return its value");
            burst[made++] = c;
        }
        while (made > 0)
            code_chunk_free(burst[--made]);
        n_bursts++;
    }
    return NULL;
}

/* Short-lived method JITs, one after the other: each exits with chunks kept. */
static void *method_spawner(void *arg)
{
    (void)arg;
    for (uintptr_t i = 1; !atomic_load(&stop); i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, method_short, (void *)(i * 104729)) != 0)
            fail("pthread_create");
        pthread_join(t, NULL);
        n_method_threads++;
    }
    return NULL;
}

/* No mapping of the process is writable and executable at once. */
static void check_no_wx(void)
{
    struct proc_maps maps;
    if (proc_maps_read(&maps) != 0)
        fail("cannot read the map");
    for (size_t i = 0; i < maps.n; i++)
        if (proc_prot_wx(maps.v[i].prot))
            fail("%#lx-%#lx is %s", (unsigned long)maps.v[i].lo, (unsigned long)maps.v[i].hi,
                 maps.v[i].prot);
    proc_maps_free(&maps);
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 20;
    size_t fds = proc_file_fds();
    far = jit_far_function();
    if (far == NULL)
        fail("the far function: %s", strerror(errno));
    /* The GDB JIT interface registers each sealed chunk's names: one more thing shared. */
    struct code_cache_options o = {
        .size = 16 << 20, .near = (const void *)helper, .flags = CODE_CACHE_GDB_JIT};
    shared[0] = code_cache_create(&o);
    o.flags = CODE_CACHE_DUAL_MAP;
    shared[1] = code_cache_create(&o);
    o.size = 1 << 20;
    o.flags = 0;
    racing = code_cache_create(&o);
    o.size = 4 << 20;
    o.flags = CODE_CACHE_DUAL_MAP;
    methods = code_cache_create(&o);
    if (shared[0] == NULL || shared[1] == NULL || racing == NULL || methods == NULL)
        fail("code_cache_create: %s", strerror(errno));

    pthread_t threads[WORKERS + 8];
    unsigned n = 0;
    for (uintptr_t i = 0; i < WORKERS; i++)
        pthread_create(&threads[n++], NULL, worker, (void *)(i + 1));
    pthread_create(&threads[n++], NULL, finder, NULL);
    pthread_create(&threads[n++], NULL, lifecycle, NULL);
    pthread_create(&threads[n++], NULL, racer_seal, NULL);
    pthread_create(&threads[n++], NULL, racer_reset, NULL);
    pthread_create(&threads[n++], NULL, method_jit, (void *)1);
    pthread_create(&threads[n++], NULL, method_jit, (void *)2);
    pthread_create(&threads[n++], NULL, method_spawner, NULL);
    pthread_create(&threads[n++], NULL, method_burster, NULL);

    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        usleep(200 * 1000);
        check_no_wx();
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 < seconds);
    atomic_store(&stop, true);
    for (unsigned i = 0; i < n; i++)
        pthread_join(threads[i], NULL);

    /* What the pool still holds, then everything must be back. */
    for (unsigned i = 0; i < pool_count; i++) {
        code_chunk_free(pool[i].chunk);
        n_free++;
    }
    for (int k = 0; k < 2; k++) {
        struct code_cache_stats st;
        code_cache_get_stats(shared[k], &st);
        if (st.in_use != 0 || st.open_chunks != 0 || st.sealed_chunks != 0)
            fail("%s cache: %zu bytes still in use after every chunk was freed", st.backend,
                 st.in_use);
        code_cache_destroy(shared[k]);
    }
    code_cache_destroy(racing);
    struct code_cache_stats ms;
    code_cache_get_stats(methods, &ms);
    if (ms.in_use != 0 || ms.open_chunks != 0 || ms.sealed_chunks != 0)
        fail("methods cache: %zu bytes still in use after every chunk was freed", ms.in_use);
    code_cache_destroy(methods);
    munmap((void *)far, 4096);
    if (proc_file_fds() != fds)
        fail("%zu memory files open at the end, %zu at the start", proc_file_fds(), fds);
    printf("tsan_stress: %u threads for %.0f s: %llu allocs, %llu seals, %llu runs, %llu patches, "
           "%llu finds, %llu frees, %llu hand-overs, %llu ENOSPC, %llu caches created and "
           "destroyed, %llu resets; seal racing reset: %llu sealed, %llu EPERM; veneer racing "
           "reset: %llu EPERM; methods: %llu made, %llu ENOSPC, %llu short-lived threads, %llu "
           "bursts of "
           "2.1 MiB\n",
           n, seconds, n_alloc, n_seal, n_run, n_patch, n_find, n_free, n_handover, n_enospc,
           n_lifecycle, n_resets, n_race_seal_ok, n_race_seal_eperm, n_race_veneer_eperm, n_method,
           n_method_full, n_method_threads, n_bursts);
    return 0;
}
