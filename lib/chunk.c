/*
 * Chunks: OPEN (written) -> SEALED (runs) -> FREED. Inside an OPEN chunk, functions are claimed
 * from the low end (code_chunk_alloc, or code_chunk_reserve + code_chunk_commit) and veneers from
 * the high end, so the two never need to know each other's sizes in advance; sealing fills every
 * byte neither claimed with traps.
 *
 * Claiming functions and veneers touches only the chunk, which belongs to one thread: no lock,
 * no system call. The state changes with compare-and-swap, never with a plain store that could
 * overwrite another thread's change: a seal goes OPEN -> SEALING -> SEALED without the cache's
 * lock, and a free or a reset that meets a SEALING chunk waits for it to settle, so a seal racing
 * a reset either completes before the reset releases the memory, or finds the chunk FREEING or
 * FREED and fails with EPERM. Never a page made executable after it was released, never a record
 * in two lists.
 *
 * Records. A freed record waits in a FIFO and is reused oldest first, only once more than
 * CHUNK_QUARANTINE records wait there. While it waits its state says FREED, which turns a double
 * free into a deterministic abort and a late seal or allocation into EPERM; once reused, a stale
 * handle is indistinguishable from the new chunk. Records live in a table whose slabs never move
 * (code_cache_find reads them without a lock): their memory is that of the most chunks ever
 * alive at once, plus the quarantine, until the cache is destroyed.
 *
 * Veneers. code_chunk_call_target answers a target in reach without a lock; the veneer table is
 * looked up and grown under the cache's lock, because a free or a reset in another thread frees
 * it, and so that a veneer is never written into a chunk that is no longer OPEN.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "debuginfo.h"
#include "internal.h"
#include "tcache.h"

_Static_assert(sizeof(struct code_chunk) == 56, "a chunk record is 56 bytes (documented)");

#define CHUNK_QUARANTINE 64

struct veneer {
    const void *target;
    uint32_t offset; /* from the chunk's base */
};

/* The veneers of one chunk: few per chunk, so a linear search beats any index. */
struct veneers {
    size_t count, cap;
    struct veneer entry[];
};

static size_t veneers_bytes(size_t cap)
{
    return sizeof(struct veneers) + cap * sizeof(struct veneer);
}

/* ---- Records (the caller holds the cache's lock) ---- */

static struct code_chunk *chunks_by_link(const struct code_cache *cache, uint32_t link)
{
    return link == 0 ? NULL : chunks_at(cache, link - 1);
}

struct code_chunk *chunks_record(struct code_cache *cache)
{
    if (cache->fifo_count > CHUNK_QUARANTINE) {
        struct code_chunk *chunk = chunks_at(cache, cache->fifo_head - 1);
        cache->fifo_head = chunk->fifo_next;
        if (cache->fifo_head == 0)
            cache->fifo_tail = 0;
        cache->fifo_count--;
        chunk->fifo_next = 0;
        return chunk;
    }
    size_t id = cache->records_used;
    if (id >= UINT32_MAX - 1 || table_grow(&cache->records, &cache->meta, id + 1) != 0) {
        errno = ENOMEM;
        return NULL;
    }
    struct code_chunk *chunk = chunks_at(cache, id);
    chunk->cache = cache;
    chunk->id = (uint32_t)id;
    cache->records_used = id + 1;
    return chunk;
}

void chunks_unused(struct code_cache *cache, struct code_chunk *chunk)
{
    /* Back to the head of the FIFO: it is (or, never used, may as well be) the oldest. */
    chunk->fifo_next = cache->fifo_head;
    cache->fifo_head = chunk->id + 1;
    if (cache->fifo_tail == 0)
        cache->fifo_tail = cache->fifo_head;
    cache->fifo_count++;
}

static void chunks_drop_veneers(struct code_cache *cache, struct code_chunk *chunk)
{
    struct veneers *v = chunk->veneers;
    if (v != NULL)
        meta_free(&cache->meta, v, veneers_bytes(v->cap));
    chunk->veneers = NULL;
}

/* An empty OPEN chunk of granules, its extent already set; the state last (release): from there
 * on code_cache_find, which reads it, sees a complete record. */
static void chunk_make_open(struct code_cache *cache, struct code_chunk *chunk, size_t granules)
{
    debuginfo_retire(cache, chunk);
    chunk->used = 0;
    chunk->veneer_floor = (uint32_t)(granules << cache->granule_shift);
    chunk->reserve = 0;
    chunk_store_state(chunk, CHUNK_OPEN);
}

void chunks_open(struct code_cache *cache, struct code_chunk *chunk, size_t first, size_t granules)
{
    __atomic_store_n(&chunk->extent, (uint64_t)first << 32 | granules, __ATOMIC_RELAXED);
    chunk_make_open(cache, chunk, granules);
    /* Last: from here on code_cache_find sees a complete record. */
    find_set(cache, first, granules, chunk->id);
}

void chunks_reopen(struct code_cache *cache, struct code_chunk *chunk)
{
    chunk_make_open(cache, chunk, chunk_granules(chunk_load_extent(chunk)));
}

void chunks_retire(struct code_cache *cache, struct code_chunk *chunk)
{
    chunks_drop_veneers(cache, chunk);
    debuginfo_retire(cache, chunk);
    chunk_store_state(chunk, CHUNK_FREED);
    chunk->fifo_next = 0;
    struct code_chunk *tail = chunks_by_link(cache, cache->fifo_tail);
    if (tail != NULL)
        tail->fifo_next = chunk->id + 1;
    else
        cache->fifo_head = chunk->id + 1;
    cache->fifo_tail = chunk->id + 1;
    cache->fifo_count++;
}

void chunks_after_fork_child(struct code_cache *cache)
{
    /* The thread that was sealing is not in the child: the chunk is OPEN there, as if the seal
     * had not begun, so that a free or a destroy in the child does not wait for the seal to
     * settle. The seal may have counted it already: the count is made again. */
    size_t sealed = 0;
    for (size_t id = 0; id < cache->records_used; id++) {
        uint8_t state = chunk_load_state(chunks_at(cache, id));
        if (state == CHUNK_SEALING)
            chunk_store_state(chunks_at(cache, id), CHUNK_OPEN);
        sealed += state == CHUNK_SEALED;
    }
    __atomic_store_n(&cache->sealed_chunks, sealed, __ATOMIC_RELAXED);
}

void chunks_release_all(struct code_cache *cache)
{
    for (size_t id = 0; id < cache->records_used; id++) {
        chunks_drop_veneers(cache, chunks_at(cache, id));
        debuginfo_retire(cache, chunks_at(cache, id));
    }
    table_release(&cache->records, &cache->meta);
    cache->records_used = 0;
    cache->fifo_head = cache->fifo_tail = 0;
    cache->fifo_count = 0;
}

/* ---- The public calls ---- */

static bool chunk_live(uint8_t state)
{
    return state == CHUNK_OPEN || state == CHUNK_SEALING || state == CHUNK_SEALED;
}

/* The chunk's span: where it is written and where it runs. */
static inline __attribute__((always_inline)) struct code_span
chunk_whole(const struct code_chunk *chunk)
{
    const struct code_cache *cache = chunk->cache;
    size_t off = chunk_offset(chunk);
    return (struct code_span){(void *)(cache->rw_base + off), (void *)(cache->base + off),
                              chunk_size(chunk)};
}

struct code_span code_chunk_span(const struct code_chunk *chunk)
{
    struct code_span span = {NULL, NULL, 0};
    if (chunk == NULL) {
        errno = EINVAL;
        return span;
    }
    if (!chunk_live(chunk_load_state(chunk)))
        return span;
    return chunk_whole(chunk);
}

/* Traps into the unclaimed bytes [from, to) of an OPEN chunk, written through its RW view. */
static void chunk_trap(const struct code_chunk *chunk, uint32_t from, uint32_t to)
{
    if (from >= to)
        return;
    struct code_span whole = chunk_whole(chunk);
    arch_fill_trap((char *)whole.rw + from, (uintptr_t)whole.rx + from, to - from);
}

/* Common checks of the calls that claim bytes: 0, or -1 + errno. */
static int chunk_check_open(const struct code_chunk *chunk)
{
    if (chunk_load_state(chunk) != CHUNK_OPEN || cache_frozen_by_fork(chunk->cache)) {
        errno = EPERM;
        return -1;
    }
    if (chunk->reserve != 0) {
        errno = EBUSY;
        return -1;
    }
    return 0;
}

static bool chunk_bad_align(size_t align)
{
    return (align & (align - 1)) != 0 || align > os_page_size;
}

struct code_span code_chunk_alloc(struct code_chunk *chunk, size_t size, size_t align)
{
    struct code_span span = {NULL, NULL, 0};
    if (align == 0)
        align = 1;
    if (chunk == NULL || size == 0 || chunk_bad_align(align)) {
        errno = EINVAL;
        return span;
    }
    if (chunk_check_open(chunk) != 0)
        return span;
    /* used and veneer_floor are at most the chunk's size, below 4 GiB: no overflow in size_t. */
    size_t offset = align_up(chunk->used, align);
    if (offset > chunk->veneer_floor || size > chunk->veneer_floor - offset) {
        errno = ENOSPC;
        return span;
    }
    /* The alignment padding is claimed by nobody: a trap, now, like every unclaimed byte. */
    chunk_trap(chunk, chunk->used, (uint32_t)offset);
    chunk->used = (uint32_t)(offset + size);
    struct code_span whole = chunk_whole(chunk);
    return (struct code_span){(char *)whole.rw + offset, (char *)whole.rx + offset, size};
}

struct code_span code_chunk_reserve(struct code_chunk *chunk, size_t align)
{
    struct code_span span = {NULL, NULL, 0};
    if (align == 0)
        align = 1;
    if (chunk == NULL || chunk_bad_align(align)) {
        errno = EINVAL;
        return span;
    }
    if (chunk_load_state(chunk) != CHUNK_OPEN || cache_frozen_by_fork(chunk->cache)) {
        errno = EPERM;
        return span;
    }
    size_t offset = align_up(chunk->used, align);
    if (offset >= chunk->veneer_floor) {
        errno = ENOSPC;
        return span;
    }
    chunk->reserve = (uint32_t)offset + 1;
    chunk->reserve_veneers = 0;
    struct code_span whole = chunk_whole(chunk);
    return (struct code_span){(char *)whole.rw + offset, (char *)whole.rx + offset,
                              chunk->veneer_floor - offset};
}

int code_chunk_commit(struct code_chunk *chunk, size_t used)
{
    if (chunk == NULL) {
        errno = EINVAL;
        return -1;
    }
    if (chunk_load_state(chunk) != CHUNK_OPEN || chunk->reserve == 0 ||
        cache_frozen_by_fork(chunk->cache)) {
        errno = EPERM;
        return -1;
    }
    uint32_t offset = chunk->reserve - 1;
    size_t reserved =
        chunk->veneer_floor - offset + (size_t)chunk->reserve_veneers * arch_veneer_size;
    if (used > reserved) {
        errno = EINVAL;
        return -1;
    }
    /* Veneers placed during the reservation took its top: code reaching into them overwrote
     * them. */
    if (used > chunk->veneer_floor - offset) {
        errno = ENOSPC;
        return -1;
    }
    chunk_trap(chunk, chunk->used, offset);
    chunk->used = offset + (uint32_t)used;
    chunk->reserve = 0;
    return 0;
}

int code_chunk_seal(struct code_chunk *chunk)
{
    if (chunk == NULL) {
        errno = EINVAL;
        return -1;
    }
    struct code_cache *cache = chunk->cache;
    if (cache_frozen_by_fork(cache)) {
        errno = EPERM;
        return -1;
    }
    uint8_t state = CHUNK_OPEN;
    if (!__atomic_compare_exchange_n(&chunk->state, &state, CHUNK_SEALING, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        errno = state == CHUNK_SEALED || state == CHUNK_SEALING ? EBUSY : EPERM;
        return -1;
    }
    if (chunk->reserve != 0) {
        chunk_store_state(chunk, CHUNK_OPEN);
        errno = EBUSY;
        return -1;
    }
    /* A jump into space no function was written to traps at once instead of sliding into
     * whatever comes next. If sealing fails the traps are simply overwritten by later code. */
    chunk_trap(chunk, chunk->used, chunk->veneer_floor);
    struct code_span whole = chunk_whole(chunk);
    if (cache->wx->seal(cache, chunk_offset(chunk), whole.size) != 0) {
        debug_log("seal: making %p executable failed (errno %d): the chunk stays OPEN", whole.rx,
                  errno);
        chunk_store_state(chunk, CHUNK_OPEN);
        return -1;
    }
    wx_publish((uintptr_t)whole.rx, whole.size, chunk->reused);
    debuginfo_seal(chunk);
    /* Counted while still SEALING, which a free or a reset waits out: counted after the store,
     * a reset could zero the counts in between and the add would land on a count of 0. */
    __atomic_fetch_add(&cache->sealed_chunks, 1, __ATOMIC_RELAXED);
    chunk_store_state(chunk, CHUNK_SEALED);
    return 0;
}

int code_chunk_patch(struct code_chunk *chunk, void *rx, const void *bytes, size_t len)
{
    if (chunk == NULL || bytes == NULL || len == 0) {
        errno = EINVAL;
        return -1;
    }
    struct code_cache *cache = chunk->cache;
    if (!cache->wx->can_patch) {
        errno = ENOTSUP;
        return -1;
    }
    if (cache_frozen_by_fork(cache) || chunk_load_state(chunk) != CHUNK_SEALED) {
        errno = EPERM;
        return -1;
    }
    struct code_span whole = chunk_whole(chunk);
    uintptr_t at = (uintptr_t)rx, lo = (uintptr_t)whole.rx;
    if (at < lo || at - lo > whole.size || len > whole.size - (at - lo)) {
        errno = EINVAL;
        return -1;
    }
    unsigned char *rw = (unsigned char *)whole.rw + (at - lo);
    const size_t off = chunk_offset(chunk) + (at - lo);
    if (cache->wx->patch_begin != NULL && cache->wx->patch_begin(cache, off, len) != 0)
        return -1;
    uintptr_t word = align_down(at, 8);
    if (at + len <= word + 8) {
        /* Inside one aligned 8-byte word: one atomic store of the merged word, so a thread
         * running this code sees the old bytes or the new ones, never a mix. The merge is a
         * compare-and-swap loop, so two threads patching different bytes of one word both
         * win. */
        uint64_t *rw_word = (uint64_t *)(void *)(rw - (at - word));
        uint64_t old = __atomic_load_n(rw_word, __ATOMIC_RELAXED), merged;
        do {
            merged = old;
            memcpy((unsigned char *)&merged + (at - word), bytes, len);
        } while (!__atomic_compare_exchange_n(rw_word, &old, merged, true, __ATOMIC_RELEASE,
                                              __ATOMIC_RELAXED));
    } else {
        memcpy(rw, bytes, len);
    }
    if (cache->wx->patch_end != NULL)
        cache->wx->patch_end(cache, off, len);
    wx_publish(at, len, true);
    return 0;
}

void code_chunk_free(struct code_chunk *chunk)
{
    if (chunk == NULL || tcache_free(chunk))
        return;
    struct code_cache *cache = chunk->cache;
    cache_lock(cache);
    uint8_t state = chunk_load_state(chunk);
    for (;;) {
        if (state == CHUNK_SEALING) {
            /* Another thread is sealing it (the chunk is being misused by two threads): let the
             * seal settle, without holding the lock it does not need. */
            cache_unlock(cache);
            sched_yield();
            cache_lock(cache);
            state = chunk_load_state(chunk);
            continue;
        }
        if (state != CHUNK_OPEN && state != CHUNK_SEALED) {
            /* Carrying on would hand the same span out twice; stop while the mistake is
             * visible. */
            fprintf(stderr,
                    "libcodecache: code_chunk_free(%p): chunk already freed (twice, or after "
                    "code_cache_reset); aborting\n",
                    (void *)chunk);
            abort();
        }
        /* Clear its lookup words while the chunk is still live: a code_cache_find that sees
         * its id has found a chunk that was OPEN or SEALED at that instant, never one that
         * code_chunk_span already calls gone (a thread cache's free claims first and leaves the
         * words, and there find reads the state: find.c). Idempotent if the exchange must be
         * retried. */
        uint64_t extent = chunk_load_extent(chunk);
        find_clear(cache, chunk_first(extent), chunk_granules(extent));
        if (__atomic_compare_exchange_n(&chunk->state, &state, CHUNK_FREEING, false,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            break;
    }
    cache->live_chunks--;
    if (state == CHUNK_SEALED)
        __atomic_fetch_sub(&cache->sealed_chunks, 1, __ATOMIC_RELAXED);
    if (space_reclaim_in_lock(cache, chunk, state == CHUNK_SEALED)) {
        cache_unlock(cache);
        return;
    }
    cache->in_flight++;
    cache_unlock(cache);
    space_reclaim(cache, chunk, state == CHUNK_SEALED);
}

/* The veneer of this chunk that jumps to target, or NULL. */
static const void *veneer_find(const struct code_chunk *chunk, uintptr_t base, const void *target)
{
    const struct veneers *v = chunk->veneers;
    for (size_t i = 0; v != NULL && i < v->count; i++)
        if (v->entry[i].target == target)
            return (const void *)(base + v->entry[i].offset);
    return NULL;
}

static const void *chunk_veneer(struct code_chunk *chunk, uintptr_t lo, uintptr_t hi, void *rw,
                                const void *target);

const void *code_chunk_call_target(struct code_chunk *chunk, const void *target)
{
    if (chunk == NULL || target == NULL) {
        errno = EINVAL;
        return NULL;
    }
    struct code_cache *cache = chunk->cache;
    struct code_span whole = chunk_whole(chunk);
    uintptr_t t = (uintptr_t)target, lo = (uintptr_t)whole.rx, hi = lo + whole.size;
    if (reach_covers(lo, hi, t, t + 1, cache->reach))
        return target;
    cache_lock(cache);
    const void *veneer = chunk_veneer(chunk, lo, hi, whole.rw, target);
    cache_unlock(cache);
    return veneer;
}

/* The veneer to target in the chunk [lo, hi) written at rw, made if needed. Under the lock. */
static const void *chunk_veneer(struct code_chunk *chunk, uintptr_t lo, uintptr_t hi, void *rw,
                                const void *target)
{
    struct code_cache *cache = chunk->cache;
    uint8_t state = chunk_load_state(chunk);
    if (!chunk_live(state)) {
        errno = EPERM;
        return NULL;
    }
    const void *found = veneer_find(chunk, lo, target);
    if (found != NULL)
        return found;
    if (state != CHUNK_OPEN || cache_frozen_by_fork(cache)) {
        errno = EPERM;
        return NULL;
    }
    if (chunk->veneer_floor - chunk->used < arch_veneer_size) {
        errno = ENOSPC;
        return NULL;
    }
    /* The veneer must be reachable from every byte of the chunk, like the target would have to
     * be: a chunk larger than the reach has no such place at its top. */
    uint32_t floor = chunk->veneer_floor - (uint32_t)arch_veneer_size;
    if (!reach_covers(lo, hi, lo + floor, lo + floor + 1, cache->reach)) {
        debug_log("call_target: a veneer at %#lx is out of reach of the chunk [%#lx, %#lx): ERANGE",
                  (unsigned long)(lo + floor), (unsigned long)lo, (unsigned long)hi);
        errno = ERANGE;
        return NULL;
    }
    /* Room in the table first: once the veneer is written nothing can fail. */
    struct veneers *v = chunk->veneers;
    if (v == NULL || v->count == v->cap) {
        size_t cap = v == NULL ? 4 : v->cap * 2;
        v = meta_grow(&cache->meta, v, v == NULL ? 0 : veneers_bytes(v->cap), veneers_bytes(cap));
        if (v == NULL)
            return NULL;
        v->cap = cap;
        chunk->veneers = v;
    }
    /* veneer_floor starts at the chunk's size, a granule multiple, and moves by whole veneers,
     * so every veneer keeps the alignment of arch_veneer_size. */
    chunk->veneer_floor = floor;
    if (chunk->reserve != 0 && chunk->reserve_veneers < UINT16_MAX)
        chunk->reserve_veneers++;
    arch_write_veneer((char *)rw + floor, (const void *)(lo + floor), target);
    v->entry[v->count].target = target;
    v->entry[v->count].offset = floor;
    v->count++;
    return (const void *)(lo + floor);
}
