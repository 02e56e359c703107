/*
 * The cache: one reservation near the targets, handed out in chunks of whole granules (a page
 * with the mprotect backend, 64 bytes with the dual-mapped one).
 *
 * Where a chunk comes from. Never-used space is bumped from the low end first: that keeps freed
 * code in quarantine (inaccessible or trapped, so a stale call faults) for as long as possible.
 * The quarantine is bounded, though: every freed span between accessible chunks may be a mapping
 * of its own, and the mappings of a process are limited (vm.max_map_count), so once
 * CACHE_QUARANTINE_HOLES freed spans wait, a freed span is taken first. Among freed spans, one
 * that is ready (still committed) wins over one that must be committed again.
 *
 * What a chunk costs in system calls. Committing memory (mprotect rw- and MADV_POPULATE_WRITE, or
 * the dual backend's trap fill and file mapping) is done a step ahead of need: the bump pointer
 * runs through pages committed in steps of 64 KiB growing to 1 MiB (FACTS.md: 256 KiB - 1 MiB
 * measured best), and a freed span committed again is committed a step beyond what is asked,
 * leaving the rest ready. So allocating a chunk is usually no system call, and the mprotect
 * backend's chunk costs its seal and its free; the dual backend's costs nothing: it frees by
 * filling traps, and gives whole free pages back in batches (cache_release_ready).
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

static const unsigned known_flags =
    CODE_CACHE_NEAR_OBJECT | CODE_CACHE_DUAL_MAP | CODE_CACHE_DUAL_HARDEN | CODE_CACHE_BTI |
    DEBUGINFO_TOOLS;

/* Commit-ahead steps: the first, and the largest (FACTS.md). */
#define CACHE_AHEAD_MIN ((size_t)64 << 10)
#define CACHE_AHEAD_MAX ((size_t)1 << 20)

/*
 * Freed spans that are still committed ("ready": the dual backend's trapped spans, the rest of a
 * step committed into a freed span) cost no system call to hand out again, but reusing them at
 * once would end the quarantine of freed code. So they are reused first only once
 * CACHE_READY_QUARANTINE bytes of them wait (the lowest first, which is roughly the oldest): a
 * stale call into the last megabyte freed still traps. Beyond CACHE_READY_MAX, their whole pages
 * are given back to the system in a batch, down to the quarantine (cache_release_ready). The gap
 * between the two is larger than a commit-ahead step, so that a step committed into a freed span
 * is never given back before it is used.
 */
#define CACHE_READY_QUARANTINE ((size_t)1 << 20)
#define CACHE_READY_MAX        ((size_t)4 << 20)

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

/* The ready granules at which the next batch release runs, ready being what is ready now: at
 * least CACHE_READY_MAX, and far enough above what a pass could not give back (scattered, not
 * whole pages) that frees do not rescan for it every time. */
static size_t cache_release_due(const struct code_cache *cache, size_t ready)
{
    const size_t floor = CACHE_READY_MAX >> cache->granule_shift;
    const size_t slack = (CACHE_READY_MAX - CACHE_READY_QUARANTINE) >> cache->granule_shift;
    return ready + slack > floor ? ready + slack : floor;
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
    cache->ahead_step = CACHE_AHEAD_MIN;
    cache->release_due = cache_release_due(cache, 0);
    cache->fork_generation = wx_fork_generation();
    spans_init(&cache->spans, cache->ngranules);
    table_init(&cache->records, sizeof(struct code_chunk), 6);
    find_init(cache);

    if (cache->wx->open(cache) != 0)
        goto fail_map;
    if (cache->wx == &wx_mprotect && cache_probe_exec(cache) != 0)
        goto fail_open;
    pthread_mutex_init(&cache->lock, NULL);
    pthread_cond_init(&cache->idle, NULL);
    debuginfo_create(cache);
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
static void cache_end_outside(struct code_cache *cache)
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

static void cache_freeze_chunks(struct code_cache *cache);

void code_cache_destroy(struct code_cache *cache)
{
    if (cache == NULL)
        return;
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

/* ---- Committing ---- */

static size_t cache_pages_up(const struct code_cache *cache, size_t granule)
{
    return align_up(granule, cache->page_granules);
}

/* The next commit-ahead step, in granules, and let the one after it grow. */
static size_t cache_next_step(struct code_cache *cache)
{
    size_t step = cache->ahead_step >> cache->granule_shift;
    if (cache->ahead_step < CACHE_AHEAD_MAX)
        cache->ahead_step *= 2;
    return step;
}

/* Commits granules [from, to) (whole pages) outside the lock, trying first the larger range
 * [from, wish); returns the end committed, or 0 + errno. The caller holds the lock and has taken
 * [from, wish) out of every index; the lock is dropped meanwhile. */
static size_t cache_commit_unlocked(struct code_cache *cache, size_t from, size_t to, size_t wish,
                                    bool dirty)
{
    const unsigned shift = cache->granule_shift;
    pthread_mutex_unlock(&cache->lock);
    size_t end = wish;
    int rc = cache->wx->commit(cache, from << shift, (wish - from) << shift, dirty);
    if (rc != 0 && wish > to) {
        /* The step ahead is a convenience: asking for less may still work. */
        debug_log("alloc: committing %zu bytes ahead failed (errno %d): committing only %zu",
                  (wish - from) << shift, errno, (to - from) << shift);
        end = to;
        rc = cache->wx->commit(cache, from << shift, (to - from) << shift, dirty);
    }
    int saved = errno;
    pthread_mutex_lock(&cache->lock);
    errno = saved;
    return rc == 0 ? end : 0;
}

/*
 * Never-used granules [first, first + n) from the bump pointer: already committed when below
 * cache->ahead; else this thread commits [ahead, a step beyond first + n) with the lock dropped,
 * while others that need fresh space wait for it (they would need the same pages). 0, or -1 +
 * errno with nothing changed. Caller holds the lock; returns with it held.
 */
static int cache_take_fresh(struct code_cache *cache, size_t first, size_t n, bool *waited)
{
    size_t end = first + n;
    *waited = false;
    if (end <= cache->ahead) {
        cache->bump = end;
        return 0;
    }
    if (cache->committing) {
        pthread_cond_wait(&cache->idle, &cache->lock);
        *waited = true;
        return 0;
    }
    size_t from = cache->ahead > first ? cache->ahead : align_down(first, cache->page_granules);
    size_t to = cache_pages_up(cache, end);
    size_t wish = to + cache_next_step(cache);
    if (wish > cache->ngranules)
        wish = cache->ngranules;
    cache->committing = true;
    cache->bump = end;
    size_t committed = cache_commit_unlocked(cache, from, to, wish, false);
    cache->committing = false;
    pthread_cond_broadcast(&cache->idle);
    if (committed == 0) {
        /* Everyone else who wanted fresh space waited, so the bump pointer is still ours. */
        cache->bump = first;
        return -1;
    }
    cache->ahead = committed;
    return 0;
}

/*
 * Freed granules [first, first + n): ready at once when none is cold. Else the whole pages they
 * touch are committed again (cold pages are whole pages, all free), a step further when the cold
 * run goes on past the chunk, and what the chunk does not use is left free and ready. The granules
 * are taken out of the index while the lock is dropped, so nobody else commits or hands out the
 * same pages. A page at either end that was not cold may hold other chunks (dual backend): it is
 * never committed again. 0, or -1 + errno. Caller holds the lock; returns with it held.
 */
static int cache_take_freed(struct code_cache *cache, size_t first, size_t n)
{
    struct spans *s = &cache->spans;
    const size_t pg = cache->page_granules, end = first + n;
    if (!spans_any(s, SPANS_COLD, first, n)) {
        spans_take(s, first, n);
        cache->free_granules -= n;
        return 0;
    }
    size_t lo = spans_any(s, SPANS_COLD, first, 1) ? align_down(first, pg) : first;
    size_t hi = end, wish = end, a, b;
    if (spans_any(s, SPANS_COLD, end - 1, 1)) {
        hi = wish = cache_pages_up(cache, end);
        if (spans_next_run(s, SPANS_COLD, hi, SIZE_MAX, &a, &b) && a == hi) {
            size_t step = cache_next_step(cache);
            wish = b - hi > step ? hi + step : b;
        }
    }
    /* Whole pages only: [c_lo, c_to) must be committed, [c_to, c_wish) would be welcome. */
    const size_t c_lo = align_up(lo, pg), c_to = align_down(hi, pg), c_wish = align_down(wish, pg);
    size_t cold = 0;
    for (size_t i = lo; spans_next_run(s, SPANS_COLD, i, wish, &a, &b); i = b)
        cold += b - a;
    const bool dirty = spans_any(s, SPANS_DIRTY, lo, wish - lo);
    spans_take(s, lo, wish - lo);
    cache->free_granules -= wish - lo;
    cache->cold_granules -= cold;
    cache->in_flight++;
    size_t committed = cache_commit_unlocked(cache, c_lo, c_to, c_wish, dirty);
    if (committed == 0) {
        /* The pages in between may now be anything from untouched to half committed: release
         * them again, which makes "cold" true, or retire them when even that fails. */
        int saved = errno;
        bool discarded = false;
        pthread_mutex_unlock(&cache->lock);
        int rc = cache->wx->release(cache, c_lo << cache->granule_shift,
                                    (c_wish - c_lo) << cache->granule_shift, &discarded);
        pthread_mutex_lock(&cache->lock);
        if (c_lo > lo)
            spans_put(s, lo, c_lo - lo, false, false);
        if (wish > c_wish)
            spans_put(s, c_wish, wish - c_wish, false, false);
        cache->free_granules += (c_lo - lo) + (wish - c_wish);
        if (rc == 0) {
            spans_put(s, c_lo, c_wish - c_lo, true, !discarded);
            cache->free_granules += c_wish - c_lo;
            cache->cold_granules += c_wish - c_lo;
        } else {
            cache->retired_granules += c_wish - c_lo;
        }
        errno = saved;
    } else {
        /* What the chunk does not use is free: ready where committed, cold beyond. */
        if (first > lo)
            spans_put(s, lo, first - lo, false, false);
        size_t ready_end = committed > end ? committed : end;
        if (ready_end > end)
            spans_put(s, end, ready_end - end, false, false);
        if (wish > ready_end)
            spans_put(s, ready_end, wish - ready_end, true, dirty);
        cache->free_granules += (first - lo) + (wish - end);
        cache->cold_granules += wish - ready_end;
    }
    cache_end_outside(cache);
    return committed == 0 ? -1 : 0;
}

/* The lowest ready freed span of n granules, or SIZE_MAX. */
static size_t cache_find_ready(struct code_cache *cache, size_t n)
{
    size_t start, end;
    for (size_t i = 0; spans_next_run(&cache->spans, SPANS_READY, i, SIZE_MAX, &start, &end);
         i = end)
        if (end - start >= n)
            return start;
    return SIZE_MAX;
}

/* The lowest freed span of n granules, a ready one first. */
static size_t cache_find_freed(struct code_cache *cache, size_t n)
{
    size_t first = cache_find_ready(cache, n);
    return first != SIZE_MAX ? first : spans_find(&cache->spans, n);
}

struct code_chunk *code_cache_alloc(struct code_cache *cache, size_t size)
{
    if (cache == NULL || size == 0) {
        errno = EINVAL;
        return NULL;
    }
    if (cache_frozen_by_fork(cache)) {
        errno = EPERM;
        return NULL;
    }
    /* Checked before rounding, which could otherwise wrap. A chunk keeps byte offsets in 32
     * bits. */
    if (size > cache->size || align_up(size, cache_granule(cache)) > UINT32_MAX) {
        debug_log("alloc: %zu bytes is larger than the whole cache (%zu): ENOSPC", size,
                  cache->size);
        errno = ENOSPC;
        return NULL;
    }
    const size_t n = align_up(size, cache_granule(cache)) >> cache->granule_shift;

    cache_lock(cache);
    struct code_chunk *chunk = chunks_record(cache);
    if (chunk == NULL) {
        debug_log("alloc: no memory for a chunk record: ENOMEM");
        goto fail;
    }
    for (;;) {
        /* Never-used space first, to keep freed code in quarantine, unless so many freed spans
         * wait that the mappings they cost matter (CACHE_QUARANTINE_HOLES). */
        bool crowded = spans_holes(&cache->spans) >= CACHE_QUARANTINE_HOLES;
        size_t first = crowded ? cache_find_freed(cache, n) : SIZE_MAX;
        if (first == SIZE_MAX && cache->free_granules - cache->cold_granules >=
                                     CACHE_READY_QUARANTINE >> cache->granule_shift)
            first = cache_find_ready(cache, n);
        if (first == SIZE_MAX && n <= cache->ngranules - cache->bump) {
            first = cache->bump;
            if (spans_reserve(&cache->spans, &cache->meta, first + n) != 0 ||
                find_grow(cache, first + n) != 0) {
                debug_log("alloc: no memory for the indexes: ENOMEM");
                goto fail_record;
            }
            bool waited;
            if (cache_take_fresh(cache, first, n, &waited) != 0) {
                debug_log("alloc: committing %zu bytes at %#lx failed: errno %d",
                          n << cache->granule_shift,
                          (unsigned long)(cache->base + (first << cache->granule_shift)), errno);
                goto fail_record;
            }
            if (waited)
                continue; /* another thread committed meanwhile: look again */
        } else {
            if (first == SIZE_MAX)
                first = cache_find_freed(cache, n);
            if (first == SIZE_MAX && (cache->in_flight > 0 || cache->committing)) {
                /* Other threads hold granules out of the index for a moment (a commit, a
                 * free, a release): what they give back may fit. */
                pthread_cond_wait(&cache->idle, &cache->lock);
                continue;
            }
            if (first == SIZE_MAX) {
                debug_log("alloc: no span of %zu bytes left: %zu never used, %zu free in %zu "
                          "freed spans, the largest %zu bytes: ENOSPC",
                          n << cache->granule_shift,
                          (cache->ngranules - cache->bump) << cache->granule_shift,
                          cache->free_granules << cache->granule_shift, spans_holes(&cache->spans),
                          spans_largest_run(&cache->spans) << cache->granule_shift);
                errno = ENOSPC;
                goto fail_record;
            }
            if (cache_take_freed(cache, first, n) != 0) {
                debug_log("alloc: committing the freed span at %#lx again failed: errno %d",
                          (unsigned long)(cache->base + (first << cache->granule_shift)), errno);
                goto fail_record;
            }
        }
        /* Code may have run in a span below the high-water mark (freed, or before a reset), and
         * other cores may still hold it: its seal must tell them (arch_sync_cores). */
        chunk->reused = first < cache->high_water;
        if (first + n > cache->high_water)
            cache->high_water = first + n;
        chunks_open(cache, chunk, first, n);
        break;
    }
    cache->live_granules += n;
    cache->chunks_allocated++;
    __atomic_fetch_add(&cache->open_chunks, 1, __ATOMIC_RELAXED);
    cache_unlock(cache);
    return chunk;

fail_record : {
    int saved = errno;
    chunks_unused(cache, chunk);
    errno = saved;
}
fail:
    cache_unlock(cache);
    return NULL;
}

/* ---- Giving memory back ---- */

/*
 * Whole pages of freed granules that are still committed (the dual backend's trapped spans, the
 * rest of a step committed ahead in a freed span) are given back to the system once more than
 * CACHE_READY_MAX bytes of them wait, all in one pass: taken out of the index, released with the
 * lock dropped (one mapping change and one hole punch per run), and put back cold. A free is
 * thus not a system call in the steady state. Caller holds the lock; returns with it held.
 */
static void cache_release_ready(struct code_cache *cache)
{
    /* Runs are gathered a bounded number at a time (the array is on the stack), pass after pass,
     * each pass resuming where the previous one stopped, until the bump pointer is reached: the
     * lock is dropped while a pass releases, so the index is read afresh each time. */
    enum { MAX_RUNS = 64 };
    struct release_run {
        size_t start, end;
    } runs[MAX_RUNS];
    const size_t pg = cache->page_granules;
    struct spans *s = &cache->spans;
    size_t given_back = 0, passes = 0, resume = 0, a, b;
    cache->in_flight++;
    for (;;) {
        size_t nruns = 0;
        for (; nruns < MAX_RUNS && spans_next_run(s, SPANS_READY, resume, cache->bump, &a, &b);
             resume = b) {
            size_t start = align_up(a, pg), end = align_down(b, pg);
            if (start < end)
                runs[nruns++] = (struct release_run){start, end};
        }
        if (nruns == 0)
            break;
        passes++;
        /* Down to the quarantine, not below: the last megabyte freed stays trapped. */
        size_t keep = CACHE_READY_QUARANTINE >> cache->granule_shift;
        size_t ready = cache->free_granules - cache->cold_granules;
        size_t excess = ready > keep ? ready - keep : 0, taken = 0;
        for (size_t i = 0; i < nruns; i++) {
            if (taken >= excess) {
                nruns = i;
                break;
            }
            size_t len = runs[i].end - runs[i].start;
            if (len > excess - taken)
                runs[i].end = runs[i].start + align_up(excess - taken, pg);
            taken += runs[i].end - runs[i].start;
        }
        if (nruns == 0)
            break;
        for (size_t i = 0; i < nruns; i++) {
            spans_take(s, runs[i].start, runs[i].end - runs[i].start);
            cache->free_granules -= runs[i].end - runs[i].start;
        }
        pthread_mutex_unlock(&cache->lock);
        bool released[MAX_RUNS], discarded[MAX_RUNS];
        for (size_t i = 0; i < nruns; i++)
            released[i] = cache->wx->release(cache, runs[i].start << cache->granule_shift,
                                             (runs[i].end - runs[i].start) << cache->granule_shift,
                                             &discarded[i]) == 0;
        pthread_mutex_lock(&cache->lock);
        for (size_t i = 0; i < nruns; i++) {
            size_t len = runs[i].end - runs[i].start;
            /* A run that could not be released is still committed and trapped: ready as
             * before. */
            spans_put(s, runs[i].start, len, released[i], released[i] && !discarded[i]);
            cache->free_granules += len;
            if (released[i]) {
                cache->cold_granules += len;
                given_back += len;
            }
        }
    }
    /* Fragmented free space may hold few whole pages: do not rescan at every free for them. */
    cache->release_due = cache_release_due(cache, cache->free_granules - cache->cold_granules);
    if (given_back > 0)
        debug_log("free: %zu free bytes given back to the system in %zu pass(es)",
                  given_back << cache->granule_shift, passes);
    cache_end_outside(cache);
}

void cache_reclaim(struct code_cache *cache, struct code_chunk *chunk, bool sealed)
{
    const unsigned shift = cache->granule_shift;
    const uint64_t extent = chunk_load_extent(chunk);
    const size_t first = chunk_first(extent), n = chunk_granules(extent);
    const bool frozen = cache_frozen_by_fork(cache);
    bool discarded = true;
    int rc = 0;
    if (frozen)
        ; /* the parent's code: neither written nor released, and never reused here */
    else if (cache->wx->freed_stays_ready)
        rc = cache->wx->scrub(cache, first << shift, n << shift, sealed);
    else
        rc = cache->wx->release(cache, first << shift, n << shift, &discarded);

    pthread_mutex_lock(&cache->lock);
    if (frozen || rc != 0) {
        /* Still accessible: handing it out again would expose its old content. Only a reset,
         * which retries, brings it back. */
        if (rc != 0)
            debug_log("free: releasing %#lx failed (errno %d): %zu bytes retired until reset",
                      (unsigned long)(cache->base + (first << shift)), errno, n << shift);
        cache->retired_granules += n;
    } else {
        bool cold = !cache->wx->freed_stays_ready;
        spans_put(&cache->spans, first, n, cold, !discarded);
        cache->free_granules += n;
        if (cold)
            cache->cold_granules += n;
    }
    cache->live_granules -= n;
    chunks_retire(cache, chunk);
    cache_end_outside(cache);
    /* Allocations may have taken ready granules since the last batch: the next one is due that
     * much earlier. */
    const size_t ready = cache->free_granules - cache->cold_granules;
    if (cache->release_due > cache_release_due(cache, ready))
        cache->release_due = cache_release_due(cache, ready);
    if (!frozen && ready >= cache->release_due)
        cache_release_ready(cache);
    pthread_mutex_unlock(&cache->lock);
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
    cache_freeze_chunks(cache);

    int rc = 0;
    const size_t committed = cache->ahead > cache->bump ? cache->ahead : cache->bump;
    bool discarded = true;
    if (committed > 0) {
        size_t len = cache_pages_up(cache, committed) << cache->granule_shift;
        rc = cache->wx->release(cache, 0, len, &discarded);
    }
    if (rc != 0) {
        int saved = errno;
        debug_log("reset: releasing the cache failed (errno %d): nothing changed", saved);
        cache_thaw_chunks(cache, false);
        errno = saved;
    } else {
        find_clear(cache, 0, cache->bump); /* before the records are called freed */
        cache_thaw_chunks(cache, true);
        spans_clear(&cache->spans);
        cache->bump = cache->ahead = 0;
        cache->release_due = cache_release_due(cache, 0);
        cache->live_granules = cache->free_granules = cache->cold_granules = 0;
        cache->retired_granules = 0;
        __atomic_store_n(&cache->open_chunks, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&cache->sealed_chunks, 0, __ATOMIC_RELAXED);
        if (!discarded) {
            /* The pages are inaccessible but keep their old content. They stay below the bump
             * pointer as free, cold, dirty spans, discarded again before anyone writes there. */
            size_t pages = cache_pages_up(cache, committed);
            debug_log("reset: the memory could not be discarded: %zu bytes kept as dirty",
                      pages << cache->granule_shift);
            spans_put(&cache->spans, 0, pages, true, true);
            cache->bump = cache->ahead = pages;
            cache->free_granules = cache->cold_granules = pages;
        }
    }
    cache->resetting = false;
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
    size_t ready = c->free_granules - c->cold_granules;
    *out = (struct code_cache_stats){
        .base = c->base,
        .reserved = c->size,
        .granule = cache_granule(c),
        .committed = (c->live_granules + ahead + ready) << shift,
        .in_use = c->live_granules << shift,
        .committed_ahead = ahead << shift,
        .free_ready = ready << shift,
        .free = (c->ngranules - c->bump + c->free_granules) << shift,
        .never_used = (c->ngranules - c->bump) << shift,
        .retired = c->retired_granules << shift,
        .free_spans = spans_holes(&c->spans),
        .open_chunks = __atomic_load_n(&c->open_chunks, __ATOMIC_RELAXED),
        .sealed_chunks = __atomic_load_n(&c->sealed_chunks, __ATOMIC_RELAXED),
        .chunks_allocated = c->chunks_allocated,
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
