/*
 * The free space of a cache: where a chunk comes from, and where a freed one goes.
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
 * filling traps, and gives whole free pages back in batches (space_release_ready).
 *
 * Locking: as described in cache.c. The functions here run with the cache's lock held and drop
 * it around system calls, counted in cache->in_flight.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/mman.h>

#include "debuginfo.h"
#include "internal.h"
#include "tcache.h"

/* Commit-ahead steps: the first, and the largest (FACTS.md). */
#define CACHE_AHEAD_MIN ((size_t)64 << 10)
#define CACHE_AHEAD_MAX ((size_t)1 << 20)

/*
 * Freed spans that are still committed ("ready": the dual backend's trapped spans, the rest of a
 * step committed into a freed span) cost no system call to hand out again, but reusing them at
 * once would end the quarantine of freed code. So they are reused first only once
 * CACHE_READY_QUARANTINE bytes of them wait (the lowest first, which is roughly the oldest): a
 * stale call into the last megabyte freed still traps. Beyond CACHE_READY_MAX, their whole pages
 * are given back to the system in a batch, down to the quarantine (space_release_ready). The gap
 * between the two is larger than a commit-ahead step, so that a step committed into a freed span
 * is never given back before it is used.
 */
#define CACHE_READY_QUARANTINE ((size_t)1 << 20)
#define CACHE_READY_MAX        ((size_t)4 << 20)

/* The ready granules at which the next batch release runs, ready being what is ready now: at
 * least CACHE_READY_MAX, and far enough above what a pass could not give back (scattered, not
 * whole pages) that frees do not rescan for it every time. */
static size_t space_release_due(const struct code_cache *cache, size_t ready)
{
    const size_t floor = CACHE_READY_MAX >> cache->granule_shift;
    const size_t slack = (CACHE_READY_MAX - CACHE_READY_QUARANTINE) >> cache->granule_shift;
    return ready + slack > floor ? ready + slack : floor;
}

void space_init(struct code_cache *cache)
{
    cache->ahead_step = CACHE_AHEAD_MIN;
    cache->release_due = space_release_due(cache, 0);
}

/* ---- Committing ---- */

static size_t space_pages_up(const struct code_cache *cache, size_t granule)
{
    return align_up(granule, cache->page_granules);
}

/* The next commit-ahead step, in granules, and let the one after it grow. */
static size_t space_next_step(struct code_cache *cache)
{
    size_t step = cache->ahead_step >> cache->granule_shift;
    if (cache->ahead_step < CACHE_AHEAD_MAX)
        cache->ahead_step *= 2;
    return step;
}

/* Commits granules [from, to) (whole pages) outside the lock, trying first the larger range
 * [from, wish); returns the end committed, or 0 + errno. The caller holds the lock and has taken
 * [from, wish) out of every index; the lock is dropped meanwhile. */
static size_t space_commit_unlocked(struct code_cache *cache, size_t from, size_t to, size_t wish,
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
static int space_take_fresh(struct code_cache *cache, size_t first, size_t n, bool *waited)
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
    size_t to = space_pages_up(cache, end);
    size_t wish = to + space_next_step(cache);
    if (wish > cache->ngranules)
        wish = cache->ngranules;
    cache->committing = true;
    cache->bump = end;
    size_t committed = space_commit_unlocked(cache, from, to, wish, false);
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
static int space_take_freed(struct code_cache *cache, size_t first, size_t n)
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
        hi = wish = space_pages_up(cache, end);
        if (spans_next_run(s, SPANS_COLD, hi, SIZE_MAX, &a, &b) && a == hi) {
            size_t step = space_next_step(cache);
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
    size_t committed = space_commit_unlocked(cache, c_lo, c_to, c_wish, dirty);
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

/*
 * The lowest ready freed span of n granules among the lowest SPACE_READY_RUNS runs of ready
 * granules, or SIZE_MAX. Bounded, so that an alloc costs the same with 100 or 100,000 chunks
 * alive (bench/dual: a scan of the whole index from its start took 72-84% of the CPU at 100,000
 * live functions): ready runs too small for anything sit at the bottom of a fragmented cache, and
 * an alloc that finds nothing among the first few takes never-used space, or, when there is
 * none, searches every freed span (spans_find), so that ENOSPC still means that nothing fits.
 */
#define SPACE_READY_RUNS 32

static size_t space_find_ready(struct code_cache *cache, size_t n)
{
    return spans_find_ready(&cache->spans, n, SPACE_READY_RUNS);
}

/* The lowest freed span of n granules, a ready one first. */
static size_t space_find_freed(struct code_cache *cache, size_t n)
{
    size_t first = space_find_ready(cache, n);
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
    struct code_chunk *kept = tcache_alloc(cache, n);
    if (kept != NULL)
        return kept;

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
        size_t first = crowded ? space_find_freed(cache, n) : SIZE_MAX;
        /* Ready freed spans once a megabyte of them waits. Not with CODE_CACHE_DUAL_HARDEN:
         * reusing a granule among sealed code makes its read-only page writable, and the seal
         * read-only again, two mprotect calls per function (bench/dual). Hardened caches take
         * never-used space first, and a page made writable by a free stays so until reused. */
        if (first == SIZE_MAX && !cache->harden &&
            cache->free_granules - cache->cold_granules >= CACHE_READY_QUARANTINE >>
                cache->granule_shift)
            first = space_find_ready(cache, n);
        if (first == SIZE_MAX && n <= cache->ngranules - cache->bump) {
            first = cache->bump;
            if (spans_reserve(&cache->spans, &cache->meta, first + n) != 0 ||
                find_grow(cache, first + n) != 0) {
                debug_log("alloc: no memory for the indexes: ENOMEM");
                goto fail_record;
            }
            bool waited;
            if (space_take_fresh(cache, first, n, &waited) != 0) {
                debug_log("alloc: committing %zu bytes at %#lx failed: errno %d",
                          n << cache->granule_shift,
                          (unsigned long)(cache->base + (first << cache->granule_shift)), errno);
                goto fail_record;
            }
            if (waited)
                continue; /* another thread committed meanwhile: look again */
        } else {
            if (first == SIZE_MAX)
                first = space_find_freed(cache, n);
            if (first == SIZE_MAX && (cache->in_flight > 0 || cache->committing)) {
                /* Other threads hold granules out of the index for a moment (a commit, a
                 * free, a release): what they give back may fit. */
                pthread_cond_wait(&cache->idle, &cache->lock);
                continue;
            }
            if (first == SIZE_MAX) {
                /* What threads keep of their frees may fit. */
                const size_t back = tcache_drain_all(cache);
                tcache_resume(cache);
                if (back > 0) {
                    debug_log("alloc: no span of %zu bytes: %zu bytes kept by threads taken back",
                              n << cache->granule_shift, back << cache->granule_shift);
                    continue;
                }
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
            if (space_take_freed(cache, first, n) != 0) {
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
    cache->live_chunks++;
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
static void space_release_ready(struct code_cache *cache)
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
    size_t given_back = 0, passes = 0, a, b;
    size_t resume = spans_ready_floor(s);
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
    cache->release_due = space_release_due(cache, cache->free_granules - cache->cold_granules);
    if (given_back > 0)
        debug_log("free: %zu free bytes given back to the system in %zu pass(es)",
                  given_back << cache->granule_shift, passes);
    cache_end_outside(cache);
}

/* The end of a free, under the lock: the span [first, first + n), released, scrubbed (rc 0) or not
 * (rc -1, or frozen), goes back to the index or into retirement, and the record into the FIFO. */
static void space_reclaimed(struct code_cache *cache, struct code_chunk *chunk, size_t first,
                            size_t n, int rc, bool frozen, bool discarded)
{
    if (frozen || rc != 0) {
        /* Still accessible: handing it out again would expose its old content. Only a reset,
         * which retries, brings it back. */
        if (rc != 0)
            debug_log("free: releasing %#lx failed (errno %d): %zu bytes retired until reset",
                      (unsigned long)(cache->base + (first << cache->granule_shift)), errno,
                      n << cache->granule_shift);
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
    if (!frozen)
        space_release_if_due(cache);
}

void space_release_if_due(struct code_cache *cache)
{
    /* Allocations may have taken ready granules since the last batch: the next one is due that
     * much earlier. */
    const size_t ready = cache->free_granules - cache->cold_granules;
    const size_t due = space_release_due(cache, ready);
    if (cache->release_due > due)
        cache->release_due = due;
    if (ready >= cache->release_due)
        space_release_ready(cache);
}

void space_put_back(struct code_cache *cache, struct code_chunk *chunk)
{
    const uint64_t extent = chunk_load_extent(chunk);
    const size_t first = chunk_first(extent), n = chunk_granules(extent);
    /* A kept chunk's lookup words still name it (tcache.c): cleared before its record can be
     * reused, which would make them name another chunk. */
    find_clear(cache, first, n);
    spans_put(&cache->spans, first, n, false, false);
    cache->free_granules += n;
    cache->live_granules -= n;
    cache->live_chunks--;
    chunks_retire(cache, chunk);
}

/*
 * A free whose span stays ready (dual backend) writes its traps with the lock held, when the span
 * is small and the backend says its scrub is stores alone: one lock a free instead of two, and
 * none of the bookkeeping of working outside it. A few kilobytes of stores is shorter than what
 * other threads would wait for otherwise. Never a system call under the lock: not in a hardened
 * cache (mprotect), nor where instruction fetch is stale (the RX view mapped again).
 */
#define SPACE_SCRUB_IN_LOCK ((size_t)16 << 10)

bool space_reclaim_in_lock(struct code_cache *cache, struct code_chunk *chunk, bool sealed)
{
    const unsigned shift = cache->granule_shift;
    const uint64_t extent = chunk_load_extent(chunk);
    const size_t first = chunk_first(extent), n = chunk_granules(extent);
    if (cache->wx->scrub_in_lock == NULL || (n << shift) > SPACE_SCRUB_IN_LOCK ||
        cache_frozen_by_fork(cache) || !cache->wx->scrub_in_lock(cache))
        return false;
    int rc = cache->wx->scrub(cache, first << shift, n << shift, sealed);
    space_reclaimed(cache, chunk, first, n, rc, false, true);
    return true;
}

void space_reclaim(struct code_cache *cache, struct code_chunk *chunk, bool sealed)
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
    cache_end_outside(cache);
    space_reclaimed(cache, chunk, first, n, rc, frozen, discarded);
    pthread_mutex_unlock(&cache->lock);
}

/* ---- Reset ---- */

size_t space_committed_bytes(const struct code_cache *cache)
{
    const size_t committed = cache->ahead > cache->bump ? cache->ahead : cache->bump;
    return space_pages_up(cache, committed) << cache->granule_shift;
}

void space_forget_all(struct code_cache *cache, size_t released, bool discarded)
{
    spans_clear(&cache->spans);
    cache->bump = cache->ahead = 0;
    cache->release_due = space_release_due(cache, 0);
    cache->live_granules = cache->free_granules = cache->cold_granules = 0;
    cache->retired_granules = 0;
    if (!discarded) {
        /* The pages are inaccessible but keep their old content. They stay below the bump
         * pointer as free, cold, dirty spans, discarded again before anyone writes there. They
         * may run past where the bump pointer was (what was committed ahead), and so past what
         * the span bitmaps and the granule words cover: those grow first. What they cannot
         * cover (no memory) is retired until the next reset. */
        const size_t pages = released >> cache->granule_shift;
        size_t indexed = pages;
        if (spans_reserve(&cache->spans, &cache->meta, pages) != 0 ||
            find_grow(cache, pages) != 0) {
            const size_t words = cache->spans.words * 64, found = cache->find.capacity;
            indexed = align_down(words < found ? words : found, cache->page_granules);
            if (indexed > pages)
                indexed = pages;
        }
        debug_log("reset: the memory could not be discarded: %zu bytes kept as dirty, %zu retired",
                  released, (pages - indexed) << cache->granule_shift);
        if (indexed > 0)
            spans_put(&cache->spans, 0, indexed, true, true);
        cache->bump = cache->ahead = pages;
        cache->free_granules = cache->cold_granules = indexed;
        cache->retired_granules = pages - indexed;
    }
}
