/*
 * Chunks: OPEN (rw-) -> SEALED (r-x) -> FREED (---). Inside an OPEN chunk, functions are bumped
 * up from the low end and veneers down from the high end, so the two never need to know each
 * other's sizes in advance; sealing fills the gap between them with traps and changes the
 * protection of the whole chunk once.
 *
 * Function allocation, sealing and veneers touch only the chunk, which belongs to one thread: no
 * lock is taken and, except for the seal itself, no system call is made. Freeing gives the span
 * back to the cache under the cache's lock.
 *
 * A freed record is kept in a FIFO and reused oldest first, and only once more than
 * CHUNK_QUARANTINE records wait there. While it waits its state says FREED, which turns a double
 * free into a deterministic abort and a late seal or allocation into EPERM; once reused, a stale
 * handle is indistinguishable from the new chunk. The quarantine keeps a freed record away from
 * the next chunks, so a double free is caught even when allocations follow the free at once; it
 * costs 16 records (1 KiB) per cache.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

/* 48 bytes is a jemalloc size class; anything from 49 to 64 bytes costs 64. With the bitmaps of
 * the free-span index and the veneer tables, the bookkeeping then stays under 64 bytes a chunk. */
_Static_assert(sizeof(struct code_chunk) <= 48, "a chunk record fits jemalloc's 48-byte class");

#define CHUNK_QUARANTINE 16

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

static size_t chunk_size(const struct code_chunk *chunk)
{
    return (size_t)chunk->pages * os_page_size;
}

static void list_unlink(struct code_chunk **head, struct code_chunk **tail,
                        struct code_chunk *chunk)
{
    if (chunk->prev != NULL)
        chunk->prev->next = chunk->next;
    else
        *head = chunk->next;
    if (chunk->next != NULL)
        chunk->next->prev = chunk->prev;
    else if (tail != NULL)
        *tail = chunk->prev;
    chunk->prev = chunk->next = NULL;
}

struct code_chunk *chunks_record(struct code_cache *cache)
{
    if (cache->recycled_count > CHUNK_QUARANTINE)
        return cache->recycled_head;
    return meta_alloc(&cache->meta, sizeof(struct code_chunk));
}

void chunks_adopt(struct code_cache *cache, struct code_chunk *chunk)
{
    if (chunk->state == CHUNK_FREED) {
        list_unlink(&cache->recycled_head, &cache->recycled_tail, chunk);
        cache->recycled_count--;
    }
    chunk->prev = NULL;
    chunk->next = cache->live;
    if (cache->live != NULL)
        cache->live->prev = chunk;
    cache->live = chunk;
}

void chunks_unused(struct code_cache *cache, struct code_chunk *chunk)
{
    /* A recycled record was only looked at; a new one goes back to the arena. */
    if (chunk->state != CHUNK_FREED)
        meta_free(&cache->meta, chunk, sizeof *chunk);
}

/* Moves a live chunk to the tail of the recycled FIFO. The caller holds the cache's lock. */
static void chunk_retire(struct code_cache *cache, struct code_chunk *chunk)
{
    struct veneers *v = chunk->veneers;
    if (v != NULL)
        meta_free(&cache->meta, v, veneers_bytes(v->cap));
    chunk->veneers = NULL;
    chunk->state = CHUNK_FREED;
    list_unlink(&cache->live, NULL, chunk);
    chunk->prev = cache->recycled_tail;
    if (cache->recycled_tail != NULL)
        cache->recycled_tail->next = chunk;
    else
        cache->recycled_head = chunk;
    cache->recycled_tail = chunk;
    cache->recycled_count++;
}

void chunks_free_all(struct code_cache *cache)
{
    while (cache->live != NULL)
        chunk_retire(cache, cache->live);
    cache->open_chunks = 0;
    cache->sealed_chunks = 0;
}

void chunks_release_all(struct code_cache *cache)
{
    chunks_free_all(cache);
    struct code_chunk *chunk = cache->recycled_head;
    while (chunk != NULL) {
        struct code_chunk *next = chunk->next;
        meta_free(&cache->meta, chunk, sizeof *chunk);
        chunk = next;
    }
    cache->recycled_head = cache->recycled_tail = NULL;
    cache->recycled_count = 0;
}

struct code_span code_chunk_span(const struct code_chunk *chunk)
{
    struct code_span span = {NULL, NULL, 0};
    if (chunk == NULL) {
        errno = EINVAL;
        return span;
    }
    if (chunk->state == CHUNK_FREED)
        return span;
    span.rw = span.rx = (void *)chunk_base(chunk);
    span.size = chunk_size(chunk);
    return span;
}

struct code_span code_chunk_alloc(struct code_chunk *chunk, size_t size, size_t align)
{
    struct code_span span = {NULL, NULL, 0};
    if (align == 0)
        align = 1;
    if (chunk == NULL || size == 0 || (align & (align - 1)) != 0 || align > os_page_size) {
        errno = EINVAL;
        return span;
    }
    if (chunk->state != CHUNK_OPEN) {
        errno = EPERM;
        return span;
    }
    /* used and veneer_floor are at most the chunk's size, below 4 GiB: no overflow in size_t. */
    size_t offset = align_up(chunk->used, align);
    if (offset > chunk->veneer_floor || size > chunk->veneer_floor - offset) {
        errno = ENOSPC;
        return span;
    }
    chunk->used = (uint32_t)(offset + size);
    span.rw = span.rx = (void *)(chunk_base(chunk) + offset);
    span.size = size;
    return span;
}

int code_chunk_seal(struct code_chunk *chunk)
{
    if (chunk == NULL) {
        errno = EINVAL;
        return -1;
    }
    if (chunk->state != CHUNK_OPEN) {
        errno = chunk->state == CHUNK_SEALED ? EBUSY : EPERM;
        return -1;
    }
    /* A jump into space no function was written to traps at once instead of sliding into
     * whatever comes next. If sealing fails the traps are simply overwritten by later code. */
    uintptr_t base = chunk_base(chunk);
    arch_fill_trap((void *)(base + chunk->used), chunk->veneer_floor - chunk->used);
    struct code_cache *cache = chunk->cache;
    if (wx_seal(cache, base, chunk_size(chunk)) != 0) {
        debug_log("seal: mprotect(PROT_READ|PROT_EXEC) of %#lx failed: the chunk stays OPEN",
                  (unsigned long)base);
        return -1;
    }
    pthread_mutex_lock(&cache->lock);
    chunk->state = CHUNK_SEALED;
    cache->open_chunks--;
    cache->sealed_chunks++;
    pthread_mutex_unlock(&cache->lock);
    return 0;
}

void code_chunk_free(struct code_chunk *chunk)
{
    if (chunk == NULL)
        return;
    struct code_cache *cache = chunk->cache;
    pthread_mutex_lock(&cache->lock);
    if (chunk->state == CHUNK_FREED) {
        /* Carrying on would hand the same span out twice; stop while the mistake is visible. */
        fprintf(stderr,
                "libcodecache: code_chunk_free(%p): chunk already freed (twice, or after "
                "code_cache_reset); aborting\n",
                (void *)chunk);
        abort();
    }
    uintptr_t base = chunk_base(chunk);
    bool released;
    if (wx_decommit(cache, base, chunk_size(chunk), &released) != 0) {
        /* Still accessible: handing it out again would expose its old content. Only a reset,
         * which retries, brings it back. */
        debug_log("free: mprotect(PROT_NONE) of %#lx failed: %u pages retired until reset",
                  (unsigned long)base, (unsigned)chunk->pages);
        cache->retired_pages += chunk->pages;
    } else {
        spans_put(&cache->spans, chunk->first, chunk->pages, !released);
        cache->free_pages += chunk->pages;
    }
    if (chunk->state == CHUNK_OPEN)
        cache->open_chunks--;
    else
        cache->sealed_chunks--;
    chunk_retire(cache, chunk);
    pthread_mutex_unlock(&cache->lock);
}

/* The veneer of this chunk that jumps to target, or NULL. */
static const void *veneer_find(const struct code_chunk *chunk, const void *target)
{
    const struct veneers *v = chunk->veneers;
    for (size_t i = 0; v != NULL && i < v->count; i++)
        if (v->entry[i].target == target)
            return (const void *)(chunk_base(chunk) + v->entry[i].offset);
    return NULL;
}

const void *code_chunk_call_target(struct code_chunk *chunk, const void *target)
{
    if (chunk == NULL || target == NULL) {
        errno = EINVAL;
        return NULL;
    }
    uintptr_t t = (uintptr_t)target, base = chunk_base(chunk);
    if (reach_covers(base, base + chunk_size(chunk), t, t + 1, chunk->cache->reach))
        return target;
    const void *found = veneer_find(chunk, target);
    if (found != NULL)
        return found;
    if (chunk->state != CHUNK_OPEN) {
        errno = EPERM;
        return NULL;
    }
    if (chunk->veneer_floor - chunk->used < arch_veneer_size) {
        errno = ENOSPC;
        return NULL;
    }
    /* Room in the table first: once the veneer is written nothing can fail. */
    struct veneers *v = chunk->veneers;
    if (v == NULL || v->count == v->cap) {
        size_t cap = v == NULL ? 4 : v->cap * 2;
        struct meta *meta = &chunk->cache->meta;
        v = meta_grow(meta, v, v == NULL ? 0 : veneers_bytes(v->cap), veneers_bytes(cap));
        if (v == NULL)
            return NULL;
        v->cap = cap;
        chunk->veneers = v;
    }
    /* veneer_floor starts at the chunk's size, a page multiple, and moves by whole veneers, so
     * every veneer keeps the alignment of arch_veneer_size. */
    chunk->veneer_floor -= (uint32_t)arch_veneer_size;
    uintptr_t at = base + chunk->veneer_floor;
    arch_write_veneer((void *)at, (const void *)at, target);
    v->entry[v->count].target = target;
    v->entry[v->count].offset = chunk->veneer_floor;
    v->count++;
    return (const void *)at;
}
