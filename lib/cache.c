/*
 * The cache: one reservation near the targets, handed out in chunks of whole granules (a page
 * with the mprotect backend, 64 bytes with the dual-mapped one).
 *
 * Locking. One mutex guards the indexes and counters; no system call is made while it is held
 * (except by code_cache_reset, which stops the world on purpose). A thread that must commit or
 * release takes its span out of every index first, drops the lock, makes the calls, and takes the
 * lock again to finish; in_flight counts such threads, and reset and destroy wait for them.
 * Seals never take the lock: a chunk's state changes with compare-and-swap (chunk.c).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "debuginfo.h"
#include "internal.h"
#include "place.h"
#include "tcache.h"

static const unsigned known_flags = CODE_CACHE_NEAR_OBJECT | CODE_CACHE_DUAL_MAP |
                                    CODE_CACHE_DUAL_HARDEN | CODE_CACHE_BTI |
                                    CODE_CACHE_NO_THREAD_CACHE | DEBUGINFO_TOOLS;

struct object_extent {
    uintptr_t addr;   /* in */
    uintptr_t lo, hi; /* out: union of the PT_LOAD segments of the object holding addr */
    bool found;
};

static int object_extent_visit(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct object_extent *ext = data;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    bool contains = false;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        uintptr_t end = start + ph->p_memsz;
        if (start < lo)
            lo = start;
        if (end > hi)
            hi = end;
        if (ext->addr >= start && ext->addr < end)
            contains = true;
    }
    if (!contains)
        return 0;
    ext->lo = lo;
    ext->hi = hi;
    ext->found = true;
    return 1;
}

/* CODE_CACHE_NEAR_OBJECT: the targets are every loaded byte of the object holding near, so that
 * code reaches all of its functions and globals, not just one. */
static int cache_find_object(const void *near, uintptr_t *lo, uintptr_t *hi)
{
    struct object_extent ext = {.addr = (uintptr_t)near};
    dl_iterate_phdr(object_extent_visit, &ext);
    if (!ext.found)
        return -1;
    *lo = ext.lo;
    *hi = ext.hi;
    return 0;
}

/*
 * Is executable memory allowed at all (SELinux execmem, PaX, systemd's MemoryDenyWriteExecute,
 * prctl(PR_SET_MDWE), a seccomp filter)? Asked here, with the low guard page made r-x and
 * inaccessible again (two calls on a page that holds no memory), so that a runtime learns it
 * before its JIT has done any work, and can choose its interpreter. EPERM (seccomp's usual
 * answer) and EACCES both mean "denied". A yes is remembered for the process: the two calls split
 * and merge the reservation's mapping and cost more than the rest of a create (bench/create), and
 * a policy that forbids executable memory is set before a program runs its JIT, not in between
 * two caches (a later refusal still shows, as EACCES from code_chunk_seal). A no is asked again
 * each time. The dual backend's trial mapping of its file is its probe (wx_dual.c).
 */
static bool cache_exec_allowed;

static void caches_add(struct code_cache *cache);

static int cache_probe_exec(struct code_cache *cache)
{
    if (__atomic_load_n(&cache_exec_allowed, __ATOMIC_RELAXED))
        return 0;
    void *guard = (void *)cache->map_base;
    if (wx_protect(cache, cache->map_base, os_page_size, cache->exec_prot) != 0) {
        /* EINVAL with CODE_CACHE_BTI: this kernel or CPU has no BTI. */
        if (errno == EPERM || errno == EACCES) {
            debug_log("create: executable memory is denied (mprotect PROT_EXEC: errno %d)", errno);
            errno = EACCES;
        }
        return -1;
    }
    if (wx_protect(cache, (uintptr_t)guard, os_page_size, PROT_NONE) != 0)
        return -1;
    /* With PROT_BTI the answer is about BTI pages only; plain r-x is asked again. */
    if (cache->exec_prot == (PROT_READ | PROT_EXEC))
        __atomic_store_n(&cache_exec_allowed, true, __ATOMIC_RELAXED);
    return 0;
}

struct code_cache *code_cache_create(const struct code_cache_options *opts)
{
    static const struct code_cache_options defaults;
    if (opts == NULL)
        opts = &defaults;
    os_init();
    arch_init();
    const size_t page = os_page_size;

    const struct wx_ops *wx = (opts->flags & CODE_CACHE_DUAL_MAP) ? &wx_dual : &wx_mprotect;
    const unsigned backend_flags = wx_dual.flags | wx_mprotect.flags;
    if ((opts->flags & ~known_flags) != 0 || (opts->flags & backend_flags & ~wx->flags) != 0 ||
        opts->reach > arch_default_reach ||
        ((opts->flags & CODE_CACHE_NEAR_OBJECT) && opts->near == NULL) ||
        ((opts->flags & CODE_CACHE_BTI) && arch_prot_bti == 0)) {
        errno = EINVAL;
        return NULL;
    }
    size_t size = opts->size ? opts->size : CACHE_DEFAULT_SIZE;
    size_t reach = opts->reach ? opts->reach : arch_default_reach;
    /* A guard page at each end: a run off either end of the code faults. The whole cache must
     * fit in one reach window (placement checks it exactly); this bound also keeps the rounding
     * below and every 32-bit offset of a chunk from wrapping. */
    if (size > 2 * reach) {
        errno = EINVAL;
        return NULL;
    }
    size = align_up(size, page);
    size_t map_size = size + 2 * page;

    uintptr_t tlo = (uintptr_t)opts->near, thi = tlo;
    if (opts->near != NULL) {
        thi = tlo + 1;
        if (thi == 0) { /* the last byte of the address space: nothing can lie above it */
            errno = ERANGE;
            return NULL;
        }
        if ((opts->flags & CODE_CACHE_NEAR_OBJECT) && cache_find_object(opts->near, &tlo, &thi)) {
            debug_log("create: %p is in no loaded object (NEAR_OBJECT)", opts->near);
            errno = EINVAL;
            return NULL;
        }
    }

    struct meta meta;
    if (meta_open(&meta) != 0)
        return NULL;
    struct code_cache *cache = meta_alloc(&meta, sizeof *cache);
    if (cache == NULL)
        goto fail_meta;
    cache->meta = meta;
    cache->flags = opts->flags;
    cache->exec_prot = PROT_READ | PROT_EXEC | (opts->flags & CODE_CACHE_BTI ? arch_prot_bti : 0);
    cache->fd = -1;
    cache->wx = wx;

    struct place_request req = {
        .target_lo = tlo, .target_hi = thi, .reach = reach, .size = map_size};
    void *map = place_reserve(&req, &cache->meta);
    if (map == NULL)
        goto fail_cache;

    cache->map_base = (uintptr_t)map;
    cache->map_size = map_size;
    cache->base = cache->map_base + page;
    cache->size = size;
    cache->granule_shift =
        cache->wx->granule_shift ? cache->wx->granule_shift : (unsigned)__builtin_ctzl(page);
    cache->ngranules = size >> cache->granule_shift;
    cache->page_granules = page >> cache->granule_shift;
    cache->target_lo = tlo;
    cache->target_hi = thi;
    cache->reach = reach;
    cache->near = opts->near;
    space_init(cache);
    cache->fork_generation = wx_fork_generation();
    spans_init(&cache->spans, cache->ngranules);
    table_init(&cache->records, sizeof(struct code_chunk), CHUNK_RECORDS_BASE);
    find_init(cache);

    if (cache->wx->open(cache) != 0)
        goto fail_map;
    if (cache->wx == &wx_mprotect && cache_probe_exec(cache) != 0)
        goto fail_open;
    tcache_init(cache);
    pthread_mutex_init(&cache->lock, NULL);
    pthread_cond_init(&cache->idle, NULL);
    debuginfo_create(cache);
    caches_add(cache);
    debug_log("create: %s cache at [%#lx, %#lx), %zu granules of %zu bytes", cache->wx->name,
              (unsigned long)cache->base, (unsigned long)(cache->base + size), cache->ngranules,
              cache_granule(cache));
    return cache;

fail_open : {
    int saved = errno;
    cache->wx->close(cache);
    errno = saved;
}
fail_map : {
    int saved = errno;
    os_release(map, map_size);
    errno = saved;
}
fail_cache:
    meta_free(&cache->meta, cache, sizeof *cache);
fail_meta : {
    int saved = errno;
    meta_close(&meta);
    errno = saved;
}
    return NULL;
}

/* A thread that worked outside the lock is done: whoever waits for the cache to be idle, or for
 * granules to come back to the index, looks again. Caller holds the lock. */
void cache_end_outside(struct code_cache *cache)
{
    cache->in_flight--;
    pthread_cond_broadcast(&cache->idle);
}

/* Waits until no thread works outside the lock on this cache (caller holds the lock). */
static void cache_wait_idle(struct code_cache *cache)
{
    while (cache->in_flight > 0 || cache->committing)
        pthread_cond_wait(&cache->idle, &cache->lock);
}

void cache_lock(struct code_cache *cache)
{
    pthread_mutex_lock(&cache->lock);
    while (cache->resetting)
        pthread_cond_wait(&cache->idle, &cache->lock);
}

void cache_unlock(struct code_cache *cache)
{
    pthread_mutex_unlock(&cache->lock);
}

/* ---- The process's caches, and fork() ----
 *
 * A fork()ed child has one thread, the one that called fork(), and a copy of every lock and count
 * as the other threads left them: a cache's lock another thread held, threads counted as working
 * outside it (in_flight, committing), a reset waiting, thread caches marked busy. Any of them
 * would make a call in the child (stats, free, destroy) wait forever for threads that do not
 * exist there. So fork() waits until it holds every cache's lock, which no thread holds for long
 * (never across a system call, but in a reset), and the child clears what the missing threads
 * had counted. The process-wide locks come after the caches' (the order a free takes them in):
 * the debugger's list (gdbjit.c) and the pool of arenas (meta.c). The list is also how a thread
 * that exits knows whether a cache it kept chunks of still exists (tcache.c).
 *
 * Every fork handler of the library is registered when it is loaded, by a constructor, not at
 * the first code_cache_create: glibc (2.35 and later) runs only the handlers registered before a
 * fork() began, and lets pthread_atfork return meanwhile, so a first create racing another
 * thread's fork would take the pool's lock, then gdb's, with no handler to hold them across that
 * fork (a reviewer's program: 6 of 60 children waited forever).
 */
static pthread_mutex_t caches_lock = PTHREAD_MUTEX_INITIALIZER;
static struct code_cache *caches; /* under caches_lock */

void caches_lock_list(void)
{
    pthread_mutex_lock(&caches_lock);
}

void caches_unlock_list(void)
{
    pthread_mutex_unlock(&caches_lock);
}

struct code_cache *caches_find(uint64_t serial)
{
    for (struct code_cache *c = caches; c != NULL; c = c->next_cache)
        if (c->serial == serial)
            return c;
    return NULL;
}

/* The list's lock first, as everywhere; then each cache's, then its harden_lock (taken inside the
 * cache's lock by a free, so in that order); then the process-wide ones. */
static void caches_before_fork(void)
{
    pthread_mutex_lock(&caches_lock);
    for (struct code_cache *c = caches; c != NULL; c = c->next_cache) {
        pthread_mutex_lock(&c->lock);
        if (c->harden)
            pthread_mutex_lock(&c->harden_lock);
    }
    gdbjit_prefork();
    meta_prefork();
}

static void caches_after_fork_parent(void)
{
    meta_postfork();
    gdbjit_postfork();
    for (struct code_cache *c = caches; c != NULL; c = c->next_cache) {
        if (c->harden)
            pthread_mutex_unlock(&c->harden_lock);
        pthread_mutex_unlock(&c->lock);
    }
    pthread_mutex_unlock(&caches_lock);
}

static void caches_after_fork_child(void)
{
    meta_postfork();
    gdbjit_postfork();
    for (struct code_cache *c = caches; c != NULL; c = c->next_cache) {
        c->in_flight = 0;
        c->committing = false;
        c->resetting = false;
        tcache_after_fork_child(c);
        chunks_after_fork_child(c);
        /* Waiters the parent had are not here; glibc's broadcast could wait for them to leave. */
        pthread_cond_init(&c->idle, NULL);
        if (c->harden)
            pthread_mutex_unlock(&c->harden_lock);
        pthread_mutex_unlock(&c->lock);
    }
    pthread_mutex_unlock(&caches_lock);
}

/* jemalloc first (its handlers must run after ours: meta.c), then the generation of wx.c, these,
 * and perf.c's, in the order the library used to register them lazily. */
__attribute__((constructor)) static void caches_watch_fork(void)
{
    meta_init_allocator();
    (void)wx_fork_generation();
    pthread_atfork(caches_before_fork, caches_after_fork_parent, caches_after_fork_child);
    perf_watch_fork();
}

static void caches_add(struct code_cache *cache)
{
    pthread_mutex_lock(&caches_lock);
    cache->next_cache = caches;
    caches = cache;
    pthread_mutex_unlock(&caches_lock);
}

static void caches_remove(struct code_cache *cache)
{
    pthread_mutex_lock(&caches_lock);
    for (struct code_cache **p = &caches; *p != NULL; p = &(*p)->next_cache)
        if (*p == cache) {
            *p = cache->next_cache;
            break;
        }
    pthread_mutex_unlock(&caches_lock);
}

static void cache_freeze_chunks(struct code_cache *cache);

void code_cache_destroy(struct code_cache *cache)
{
    if (cache == NULL)
        return;
    /* Threads that exit from now on leave the cache alone, and fork() no longer waits for it. */
    caches_remove(cache);
    tcache_forget(cache);
    /* A free still finishing in another thread touches the cache once more, and a seal in
     * progress its chunk: let them. */
    pthread_mutex_lock(&cache->lock);
    cache_wait_idle(cache);
    cache_freeze_chunks(cache);
    pthread_mutex_unlock(&cache->lock);
    chunks_release_all(cache);
    table_release(&cache->find, &cache->meta);
    spans_release(&cache->spans, &cache->meta);
    cache->wx->close(cache);
    /* munmap cannot fail on a range we mapped ourselves, except when it would have to split a
     * mapping past the map count limit; the whole reservation is one or more of our own
     * mappings, all removed, so there is nothing to split. */
    os_release((void *)cache->map_base, cache->map_size);
    pthread_cond_destroy(&cache->idle);
    pthread_mutex_destroy(&cache->lock);
    struct meta meta = cache->meta;
    meta_free(&meta, cache, sizeof *cache);
    meta_close(&meta);
}

bool code_cache_reaches(const struct code_cache *cache, const void *target)
{
    if (cache == NULL)
        return false;
    uintptr_t t = (uintptr_t)target;
    return reach_covers(cache->base, cache->base + cache->size, t, t + 1, cache->reach);
}

/* ---- Reset ---- */

/* Every live chunk -> FREEING, remembering its state; waits for seals in progress to settle
 * (a sealing thread needs no lock to finish). */
static void cache_freeze_chunks(struct code_cache *cache)
{
    for (size_t id = 0; id < cache->records_used; id++) {
        struct code_chunk *chunk = chunks_at(cache, id);
        uint8_t state = chunk_load_state(chunk);
        for (;;) {
            if (state == CHUNK_SEALING) {
                sched_yield();
                state = chunk_load_state(chunk);
                continue;
            }
            if (state != CHUNK_OPEN && state != CHUNK_SEALED)
                break;
            if (__atomic_compare_exchange_n(&chunk->state, &state, CHUNK_FREEING, false,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                chunk->frozen_from = state;
                break;
            }
        }
    }
}

/* Undoes cache_freeze_chunks (the reset failed), or retires the frozen chunks. */
static void cache_thaw_chunks(struct code_cache *cache, bool retire)
{
    for (size_t id = 0; id < cache->records_used; id++) {
        struct code_chunk *chunk = chunks_at(cache, id);
        if (chunk_load_state(chunk) != CHUNK_FREEING)
            continue;
        if (retire)
            chunks_retire(cache, chunk);
        else
            chunk_store_state(chunk, chunk->frozen_from);
    }
}

/*
 * One release over everything the cache ever committed, however many chunks there are. Retired
 * spans are covered too: reset is where their release is retried. Chunks are frozen first, so
 * that a seal racing the reset cannot make a page executable after it was released.
 */
int code_cache_reset(struct code_cache *cache)
{
    if (cache == NULL) {
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_lock(&cache->lock);
    while (cache->resetting)
        pthread_cond_wait(&cache->idle, &cache->lock);
    if (cache_frozen_by_fork(cache)) {
        pthread_mutex_unlock(&cache->lock);
        errno = EPERM;
        return -1;
    }
    cache->resetting = true;
    cache_wait_idle(cache);
    /* The chunks threads keep hold spans this releases: back to the index first. */
    tcache_drain_all(cache);
    cache_freeze_chunks(cache);

    int rc = 0;
    const size_t len = space_committed_bytes(cache);
    bool discarded = true;
    if (len > 0)
        rc = cache->wx->release(cache, 0, len, &discarded);
    if (rc != 0) {
        int saved = errno;
        debug_log("reset: releasing the cache failed (errno %d): nothing changed", saved);
        cache_thaw_chunks(cache, false);
        errno = saved;
    } else {
        find_clear(cache, 0, cache->bump); /* before the records are called freed */
        cache_thaw_chunks(cache, true);
        space_forget_all(cache, len, discarded);
        cache->live_chunks = 0;
        __atomic_store_n(&cache->sealed_chunks, 0, __ATOMIC_RELAXED);
    }
    cache->resetting = false;
    tcache_resume(cache);
    pthread_cond_broadcast(&cache->idle);
    pthread_mutex_unlock(&cache->lock);
    return rc;
}

void code_cache_get_stats(const struct code_cache *cache, struct code_cache_stats *out)
{
    if (cache == NULL || out == NULL)
        return;
    /* The lock guards the counters, not the cache's identity: taking it does not change what a
     * const cache means to the caller. */
    struct code_cache *c = (struct code_cache *)cache;
    const unsigned shift = c->granule_shift;
    pthread_mutex_lock(&c->lock);
    size_t ahead = c->ahead > c->bump ? c->ahead - c->bump : 0;
    /* Chunks kept by threads (tcache.c) are live to the index, free and ready to the user. Their
     * threads are stopped meanwhile (they free and allocate the locked way, and wait for it):
     * a chunk moving between kept and sealed or open is never counted twice or not at all. */
    struct tcache_totals kept;
    tcache_stop(c);
    tcache_totals(c, &kept);
    size_t ready = c->free_granules - c->cold_granules + kept.granules;
    size_t live = c->live_granules - kept.granules;
    /* Seals add to the sealed count without the lock, while their chunk is SEALING: a live chunk
     * that a free or a reset waits for. */
    size_t sealed = __atomic_load_n(&c->sealed_chunks, __ATOMIC_RELAXED);
    size_t live_chunks = c->live_chunks - kept.chunks;
    tcache_resume(c);
    *out = (struct code_cache_stats){
        .base = c->base,
        .reserved = c->size,
        .granule = cache_granule(c),
        .committed = (live + ahead + ready) << shift,
        .in_use = live << shift,
        .committed_ahead = ahead << shift,
        .free_ready = ready << shift,
        .free = (c->ngranules - c->bump + c->free_granules + kept.granules) << shift,
        .never_used = (c->ngranules - c->bump) << shift,
        .retired = c->retired_granules << shift,
        .free_spans = spans_holes(&c->spans),
        .open_chunks = live_chunks > sealed ? live_chunks - sealed : 0,
        .sealed_chunks = sealed,
        .chunks_allocated = c->chunks_allocated + kept.allocated,
        .protection_changes = __atomic_load_n(&c->protection_changes, __ATOMIC_RELAXED),
        .system_calls = __atomic_load_n(&c->system_calls, __ATOMIC_RELAXED),
        .meta_bytes = __atomic_load_n(&c->meta.bytes, __ATOMIC_RELAXED),
        .reach = c->reach,
        .near = c->near,
        .backend = c->wx->name,
        .dual_file = c->dual_file,
    };
    pthread_mutex_unlock(&c->lock);
    /* mallctl takes jemalloc's own locks: outside ours. */
    out->meta_resident = meta_arena_resident(&c->meta);
}
