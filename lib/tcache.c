/*
 * Thread caches: each thread keeps the small chunks it frees, scrubbed (traps) and with their
 * records, and its next allocations of the same size take them back, without the cache's lock.
 * A method JIT compiles, runs and drops one function at a time; with the lock, the index of free
 * spans, the record FIFO and the granule counts, a 64-byte function cost some 1,040 instructions
 * and two lock round trips (bench/README.md), more than asmjit's JitAllocator with no W^X at all.
 * A chunk kept here keeps its span, its record and its place in the record table: taking it back
 * is a pop and its state.
 *
 * It keeps its words of the find index too: they still hold its id, and code_cache_find reads the
 * record's state to tell a kept chunk from a live one (find.c). Clearing them at the free and
 * writing them again at the reuse was two cold cache lines per function: bench/dual's 1 KiB FIFO
 * took 177-211 ns with them and 119-133 ns without (medians of 5, four interleaved rounds each,
 * 2026-12-03; asmjit's rwx JitAllocator 111-136 ns beside them). They are cleared when the chunk
 * goes back to the cache's index (space_put_back), before its record can be reused.
 *
 * Only where a free is stores alone (wx_ops.scrub_in_lock: the dual backend, not hardened), and
 * only for chunks of up to TCACHE_CLASSES granules with no veneers and no names, whose free needs
 * nothing else of the cache.
 *
 * Quarantine. A kept chunk is handed out again only once TCACHE_QUARANTINE further frees of its
 * thread followed it (each kept chunk is stamped with the thread's count of frees): a stale call
 * into one of the last 1,024 functions a thread freed still traps, whatever their sizes. Counted
 * in functions, not in bytes as the cache's ready spans are (space.c: a megabyte), because that is
 * what a stale pointer points to, and because a megabyte of 64-byte functions is 16,384 of them,
 * whose reuse comes back from beyond the processor's L2 cache: bench/dual's 64-byte FIFO took
 * 215 ns with a megabyte and 150 ns with 1,024 functions (medians of 11, interleaved,
 * 2026-12-02). Beyond TCACHE_MAX the oldest chunks, whatever their size, go back to the cache's
 * index until half of it is left (one lock for thousands of frees), where space.c gives whole
 * pages back to the system in its batches: only chunks past their quarantine, since the index
 * hands spans out again at once. The last 1,024 frees are at most 2 MiB (2 KiB each), more than
 * half of TCACHE_MAX: where they are over a megabyte (functions of more than 1 KiB on average),
 * the flush stops at them, and the next one waits until half of TCACHE_MAX more is kept
 * (flush_above), else every free past TCACHE_MAX would take the lock to give back one chunk, the
 * one the next allocation was about to take back. A thread keeps at most 3 MiB so (up to 2 MiB
 * in quarantine and 1 MiB more), until a flush gets down to 1 MiB again or everything goes back:
 * a thread's cache is also given back when the thread exits, and when an allocation would fail
 * with ENOSPC; a reset takes every thread's chunks first.
 *
 * Against other threads. The owner works between tcache_enter and tcache_leave: a flag of its own
 * (busy), set with a sequentially consistent store, then the cache's tcache_stopped read. A
 * thread that takes chunks from other threads' caches (reset, ENOSPC: under the cache's lock)
 * sets tcache_stopped, then waits until every busy flag is down: one of the two always sees the
 * other (Dekker), so the owner either finishes before the taker looks, or sees the stop and
 * takes the lock instead (where it waits for the taker). Counts that code_cache_get_stats reads
 * while owners work are atomic.
 *
 * Lifetime. A cache has a serial number, unique in the process; a thread finds its cache for it
 * by that number in TCACHE_SLOTS slots of thread-local storage (no system call, no lock). A thread
 * cache is allocated in the cache's arena and dies with it: a slot whose serial is no longer in
 * the process's list of caches (cache.c) is free again. The list, under its own lock, is what a
 * thread that exits consults before it gives its chunks back (pthread key destructor);
 * code_cache_destroy takes its cache off the list first.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>

#include "internal.h"
#include "tcache.h"

#define TCACHE_QUARANTINE 1024u
#define TCACHE_MAX        ((size_t)2 << 20)
/* Caches per thread with a thread cache; a thread using more frees into the others with the
 * lock, as before. */
#define TCACHE_SLOTS 4

/* A FIFO of kept chunks of one size: record id + 1, linked by fifo_next, oldest first. head is
 * atomic (relaxed): the owner peeks at it outside tcache_enter while a taker may empty the bin. */
struct tcache_bin {
    uint32_t head, tail;
    size_t count;
};

struct tcache {
    struct code_cache *cache;
    struct tcache *next; /* the cache's list, under its lock */
    unsigned busy;       /* atomic: the owner is between tcache_enter and tcache_leave */
    /* Written by the owner (or a taker, while the owner is stopped); read by stats with the
     * owners stopped. */
    size_t granules, chunks, allocated;
    size_t flush_above; /* bytes kept past which a free flushes (tcache_flush) */
    uint32_t frees;     /* chunks kept so far, the kept_at of the next one (wraps) */
    struct tcache_bin bin[TCACHE_CLASSES + 1]; /* by granules; [0] unused */
};

struct tcache_slot {
    uint64_t serial;
    struct tcache *tc;
};

/* initial-exec: a load at a fixed offset from the thread pointer, not a call to __tls_get_addr
 * per lookup (which, besides, allocates the thread's block of the library at its first use).
 * Not with a private jemalloc linked in (--with-private-jemalloc): its own initial-exec state
 * takes nearly all of the static TLS glibc keeps for libraries loaded with dlopen, and 68 bytes
 * more made dlopen fail with "cannot allocate memory in static TLS block" (tests/dlopen). */
#ifdef CODE_CACHE_PRIVATE_JEMALLOC
#define TCACHE_TLS __thread
#else
#define TCACHE_TLS __thread __attribute__((tls_model("initial-exec")))
#endif
static TCACHE_TLS struct tcache_slot tcache_slots[TCACHE_SLOTS];
/* Frees left before this thread, whose slots were all taken, asks for one again. */
#define TCACHE_NO_SLOT_FREES 1024
static TCACHE_TLS unsigned tcache_no_slot;

static uint64_t tcache_serials; /* atomic */
static pthread_once_t tcache_once = PTHREAD_ONCE_INIT;
static pthread_key_t tcache_key;
static bool tcache_key_made;

/* ---- The owner's fast paths ---- */

static inline struct tcache *tcache_mine(const struct code_cache *cache)
{
    for (unsigned i = 0; i < TCACHE_SLOTS; i++)
        if (tcache_slots[i].serial == cache->serial)
            return tcache_slots[i].tc;
    return NULL;
}

static inline bool tcache_enter(const struct code_cache *cache, struct tcache *tc)
{
    __atomic_store_n(&tc->busy, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&cache->tcache_stopped, __ATOMIC_SEQ_CST) == 0)
        return true;
    __atomic_store_n(&tc->busy, 0, __ATOMIC_RELEASE);
    return false;
}

static inline void tcache_leave(struct tcache *tc)
{
    __atomic_store_n(&tc->busy, 0, __ATOMIC_RELEASE);
}

/* The kept totals, written only by the owner or by a taker while the owner is stopped. */
static inline void tcache_count_kept(struct tcache *tc, size_t granules)
{
    tc->granules += granules;
    tc->chunks++;
}

static inline void tcache_count_taken(struct tcache *tc, size_t granules)
{
    tc->granules -= granules;
    tc->chunks--;
}

static inline uint32_t tcache_bin_head(const struct tcache_bin *bin)
{
    return __atomic_load_n(&bin->head, __ATOMIC_RELAXED);
}

static inline void tcache_bin_set_head(struct tcache_bin *bin, uint32_t head)
{
    __atomic_store_n(&bin->head, head, __ATOMIC_RELAXED);
}

/* The oldest kept chunk of n granules, or NULL; with quarantined, only once TCACHE_QUARANTINE
 * frees followed it. */
static struct code_chunk *tcache_pop(struct code_cache *cache, struct tcache *tc, size_t n,
                                     bool quarantined)
{
    struct tcache_bin *bin = &tc->bin[n];
    const uint32_t head = tcache_bin_head(bin);
    if (head == 0)
        return NULL;
    struct code_chunk *chunk = chunks_at(cache, head - 1);
    if (quarantined && tc->frees - chunk->kept_at < TCACHE_QUARANTINE)
        return NULL;
    tcache_bin_set_head(bin, chunk->fifo_next);
    if (chunk->fifo_next == 0)
        bin->tail = 0;
    bin->count--;
    chunk->fifo_next = 0;
    tcache_count_taken(tc, n);
    return chunk;
}

struct code_chunk *tcache_alloc(struct code_cache *cache, size_t n)
{
    if (n > TCACHE_CLASSES)
        return NULL;
    struct tcache *tc = tcache_mine(cache);
    /* Nothing kept of this size (only the owner adds, so an empty bin stays empty meanwhile):
     * the locked way, without the fence of tcache_enter. */
    if (tc == NULL || tcache_bin_head(&tc->bin[n]) == 0 || !tcache_enter(cache, tc))
        return NULL;
    struct code_chunk *chunk = tcache_pop(cache, tc, n, true);
    if (chunk != NULL) {
        tc->allocated++;
        /* Code ran there: its seal resynchronises the other cores (arch_sync_cores). */
        chunk->reused = true;
        chunks_reopen(cache, chunk);
    }
    tcache_leave(tc);
    return chunk;
}

static struct tcache *tcache_create(struct code_cache *cache);
static void tcache_flush(struct code_cache *cache, struct tcache *tc);

bool tcache_free(struct code_chunk *chunk)
{
    struct code_cache *cache = chunk->cache;
    if (!cache->tcache_on)
        return false;
    const uint64_t extent = chunk_load_extent(chunk);
    const size_t first = chunk_first(extent), n = chunk_granules(extent);
    const unsigned shift = cache->granule_shift;
    if (n > TCACHE_CLASSES || chunk->veneers != NULL ||
        __atomic_load_n(&chunk->debug_names, __ATOMIC_ACQUIRE) != NULL || wx_forked(cache) ||
        !cache->wx->scrub_in_lock(cache))
        return false;
    struct tcache *tc = tcache_mine(cache);
    if (tc == NULL) {
        if (tcache_no_slot > 0) {
            tcache_no_slot--;
            return false;
        }
        if ((tc = tcache_create(cache)) == NULL)
            return false;
    }
    if (!tcache_enter(cache, tc))
        return false;
    /* The chunk is claimed before anything is written: a second free of it in another thread
     * (a misuse) then loses the exchange and meets the locked way's report, instead of writing
     * traps where, by then, the winner's next chunk may be. SEALING (a seal in another thread: a
     * misuse too) is waited out, and a chunk that is not live reported, by the locked way. */
    uint8_t state = chunk_load_state(chunk);
    if ((state != CHUNK_OPEN && state != CHUNK_SEALED) ||
        !__atomic_compare_exchange_n(&chunk->state, &state, CHUNK_FREEING, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        tcache_leave(tc);
        return false;
    }
    /* Claimed, the extent cannot change any more; read before, it could have (a free and a
     * reuse in between, a misuse). Then the traps; the lookup words stay (a find meanwhile reads
     * the state and finds nothing: find.c). Should the traps fail (they cannot where
     * scrub_in_lock says the scrub is stores alone), the chunk is live again, as it was, and the
     * locked way starts over. */
    if (chunk_load_extent(chunk) != extent) {
        chunk_store_state(chunk, state);
        tcache_leave(tc);
        return false;
    }
    if (cache->wx->scrub(cache, first << shift, n << shift, state == CHUNK_SEALED) != 0) {
        chunk_store_state(chunk, state);
        tcache_leave(tc);
        return false;
    }
    if (state == CHUNK_SEALED)
        __atomic_fetch_sub(&cache->sealed_chunks, 1, __ATOMIC_RELAXED);
    chunk_store_state(chunk, CHUNK_FREED);
    chunk->kept_at = tc->frees++;
    struct tcache_bin *bin = &tc->bin[n];
    chunk->fifo_next = 0;
    if (bin->tail != 0)
        chunks_at(cache, bin->tail - 1)->fifo_next = chunk->id + 1;
    else
        tcache_bin_set_head(bin, chunk->id + 1);
    bin->tail = chunk->id + 1;
    bin->count++;
    tcache_count_kept(tc, n);
    const bool full = (tc->granules << shift) > tc->flush_above;
    tcache_leave(tc);
    if (full)
        tcache_flush(cache, tc);
    return true;
}

/* ---- Giving chunks back (the cache's lock held) ---- */

/* Every kept chunk back to the cache's index, size by size, oldest first; the granules. Nothing
 * is left in quarantine: the next flush is past TCACHE_MAX again. */
static size_t tcache_give_back_all(struct code_cache *cache, struct tcache *tc)
{
    size_t granules = 0;
    struct code_chunk *chunk;
    for (size_t n = 1; n <= TCACHE_CLASSES; n++)
        while ((chunk = tcache_pop(cache, tc, n, false)) != NULL) {
            space_put_back(cache, chunk);
            granules += n;
        }
    tc->flush_above = TCACHE_MAX;
    return granules;
}

/* The owner, past flush_above: the oldest chunks of all sizes, down to half of TCACHE_MAX. Not
 * "the oldest half of every size": in a size with few chunks that would give back one freed a
 * moment ago, which the index may hand out again at once (the lowest freed span that fits).
 * Holding the lock keeps takers out (they hold it too), and the owner is this thread. */
static void tcache_flush(struct code_cache *cache, struct tcache *tc)
{
    const unsigned shift = cache->granule_shift;
    cache_lock(cache);
    while ((tc->granules << shift) > TCACHE_MAX / 2) {
        /* Each size's FIFO is in order of its stamps: the oldest is one of the heads. */
        size_t oldest = 0;
        uint32_t age = 0;
        for (size_t n = 1; n <= TCACHE_CLASSES; n++) {
            const uint32_t head = tcache_bin_head(&tc->bin[n]);
            const uint32_t head_age =
                head != 0 ? tc->frees - chunks_at(cache, head - 1)->kept_at : 0;
            if (head != 0 && head_age >= age) {
                age = head_age;
                oldest = n;
            }
        }
        /* Past its quarantine, or the flush stops here (the last 1,024 frees are over half of
         * TCACHE_MAX: functions of more than 1 KiB on average). */
        struct code_chunk *chunk = oldest != 0 ? tcache_pop(cache, tc, oldest, true) : NULL;
        if (chunk == NULL)
            break;
        space_put_back(cache, chunk);
    }
    /* Stopped above half by the quarantine: the next flush once half of TCACHE_MAX more is kept. */
    const size_t kept = tc->granules << shift;
    tc->flush_above = kept > TCACHE_MAX / 2 ? kept + TCACHE_MAX / 2 : TCACHE_MAX;
    space_release_if_due(cache);
    cache_unlock(cache);
}

void tcache_stop(struct code_cache *cache)
{
    __atomic_store_n(&cache->tcache_stopped, 1, __ATOMIC_SEQ_CST);
    for (struct tcache *tc = cache->tcaches; tc != NULL; tc = tc->next)
        while (__atomic_load_n(&tc->busy, __ATOMIC_SEQ_CST) != 0)
            sched_yield();
}

size_t tcache_drain_all(struct code_cache *cache)
{
    tcache_stop(cache);
    size_t granules = 0;
    for (struct tcache *tc = cache->tcaches; tc != NULL; tc = tc->next)
        granules += tcache_give_back_all(cache, tc);
    return granules;
}

void tcache_resume(struct code_cache *cache)
{
    __atomic_store_n(&cache->tcache_stopped, 0, __ATOMIC_RELEASE);
}

void tcache_totals(const struct code_cache *cache, struct tcache_totals *out)
{
    *out = (struct tcache_totals){0, 0, 0};
    for (const struct tcache *tc = cache->tcaches; tc != NULL; tc = tc->next) {
        out->granules += tc->granules;
        out->chunks += tc->chunks;
        out->allocated += tc->allocated;
    }
}

/* ---- Lifetime ---- */

/* At thread exit: every kept chunk back to its cache, if the cache still exists. The list's lock
 * keeps code_cache_destroy out while the chunks go back; whole pages then go back to the system
 * after it is dropped (exiting threads and first frees of new threads wait for that lock), the
 * cache kept alive by in_flight, which destroy and reset wait out. */
static void tcache_thread_exit(void *unused)
{
    (void)unused;
    struct code_cache *given_to[TCACHE_SLOTS];
    unsigned caches = 0;
    caches_lock_list();
    for (unsigned i = 0; i < TCACHE_SLOTS; i++) {
        struct tcache_slot *slot = &tcache_slots[i];
        struct code_cache *cache = slot->serial ? caches_find(slot->serial) : NULL;
        /* A fork()ed child's copy of a parent's cache is frozen: nothing goes back. */
        if (cache != NULL && !wx_forked(cache)) {
            cache_lock(cache);
            tcache_give_back_all(cache, slot->tc);
            /* What it handed out stays counted (stats.chunks_allocated never goes down). */
            cache->chunks_allocated += slot->tc->allocated;
            for (struct tcache **p = &cache->tcaches; *p != NULL; p = &(*p)->next)
                if (*p == slot->tc) {
                    *p = slot->tc->next;
                    break;
                }
            meta_free(&cache->meta, slot->tc, sizeof *slot->tc);
            cache->in_flight++;
            given_to[caches++] = cache;
            cache_unlock(cache);
        }
        *slot = (struct tcache_slot){0, NULL};
    }
    caches_unlock_list();
    for (unsigned i = 0; i < caches; i++) {
        struct code_cache *cache = given_to[i];
        /* Not cache_lock: a reset that began meanwhile waits for this thread (in_flight), and
         * gives every page back itself. */
        pthread_mutex_lock(&cache->lock);
        if (!cache->resetting)
            space_release_if_due(cache);
        cache_end_outside(cache);
        pthread_mutex_unlock(&cache->lock);
    }
}

static void tcache_setup(void)
{
    /* The key's value is only a mark: its destructor runs for threads that set it. */
    tcache_key_made = pthread_key_create(&tcache_key, tcache_thread_exit) == 0;
}

/* dlclose: no destructor may point into the unloaded library. */
__attribute__((destructor)) static void tcache_unload(void)
{
    if (__atomic_exchange_n(&tcache_key_made, false, __ATOMIC_ACQ_REL))
        pthread_key_delete(tcache_key);
}

void tcache_init(struct code_cache *cache)
{
    cache->serial = __atomic_add_fetch(&tcache_serials, 1, __ATOMIC_RELAXED);
    cache->tcache_on = !(cache->flags & CODE_CACHE_NO_THREAD_CACHE) &&
                       cache->wx->freed_stays_ready && cache->wx->scrub_in_lock != NULL &&
                       cache->wx->scrub_in_lock(cache);
}

static struct tcache *tcache_create(struct code_cache *cache)
{
    pthread_once(&tcache_once, tcache_setup);
    if (!__atomic_load_n(&tcache_key_made, __ATOMIC_ACQUIRE))
        return NULL;
    struct tcache *tc = NULL;
    caches_lock_list();
    struct tcache_slot *slot = NULL;
    for (unsigned i = 0; i < TCACHE_SLOTS && slot == NULL; i++)
        if (tcache_slots[i].serial == 0 || caches_find(tcache_slots[i].serial) == NULL)
            slot = &tcache_slots[i];
    if (slot != NULL && pthread_setspecific(tcache_key, tcache_slots) == 0) {
        cache_lock(cache);
        tc = meta_alloc(&cache->meta, sizeof *tc);
        if (tc != NULL) {
            *tc = (struct tcache){.cache = cache, .flush_above = TCACHE_MAX};
            tc->next = cache->tcaches;
            cache->tcaches = tc;
            *slot = (struct tcache_slot){cache->serial, tc};
        }
        cache_unlock(cache);
    }
    caches_unlock_list();
    /* Every slot names a live cache: the next frees into other caches go the locked way without
     * asking the process-wide lock again each time. */
    if (slot == NULL)
        tcache_no_slot = TCACHE_NO_SLOT_FREES;
    return tc;
}

void tcache_forget(struct code_cache *cache)
{
    /* No thread looks at them any more: their slots name a serial that is no longer listed.
     * Freed one by one, as every block of the arena is (valgrind knows each as a block). */
    while (cache->tcaches != NULL) {
        struct tcache *tc = cache->tcaches;
        cache->tcaches = tc->next;
        meta_free(&cache->meta, tc, sizeof *tc);
    }
}

void tcache_after_fork_child(struct code_cache *cache)
{
    cache->tcache_stopped = 0;
    for (struct tcache *tc = cache->tcaches; tc != NULL; tc = tc->next)
        tc->busy = 0;
}
