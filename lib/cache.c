/*
 * The cache: one reservation near the targets, handed out in page-granular chunks. Chunks are
 * bumped from the low end while never-used space remains and only then taken from the free span
 * index: bumping first keeps freed code in quarantine (inaccessible, so a stale call faults) for
 * as long as possible.
 *
 * The quarantine is bounded, though. Every freed span between accessible chunks is a mapping of
 * its own and splits its neighbours, and the mappings of a process are limited (vm.max_map_count):
 * with a large cache and random frees, unbounded quarantine ends in mprotect failing with ENOMEM.
 * So once CACHE_QUARANTINE_HOLES freed spans wait, allocation takes a freed span first (the same
 * address-ordered first fit) and bumps only when none is large enough.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

static const unsigned known_flags = CODE_CACHE_NEAR_OBJECT;

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

struct code_cache *code_cache_create(const struct code_cache_options *opts)
{
    static const struct code_cache_options defaults;
    if (opts == NULL)
        opts = &defaults;
    os_init();
    const size_t page = os_page_size;

    if ((opts->flags & ~known_flags) != 0 || opts->reach > arch_default_reach ||
        ((opts->flags & CODE_CACHE_NEAR_OBJECT) && opts->near == NULL)) {
        errno = EINVAL;
        return NULL;
    }
    size_t size = opts->size ? opts->size : CACHE_DEFAULT_SIZE;
    size_t reach = opts->reach ? opts->reach : arch_default_reach;
    /* A guard page at each end: a run off either end of the code faults. The reservation must
     * fit in the 2 * reach window around the target, and its pages must be numbered with the
     * 32 bits of a chunk record's first page (CACHE_MAX_SIZE). */
    if (size > 2 * reach || size > CACHE_MAX_SIZE) {
        errno = EINVAL;
        return NULL;
    }
    size = align_up(size, page);
    size_t map_size = size + 2 * page;

    uintptr_t tlo = (uintptr_t)opts->near, thi = tlo;
    if (opts->near != NULL) {
        thi = tlo + 1;
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

    struct place_request req = {
        .target_lo = tlo, .target_hi = thi, .reach = reach, .size = map_size};
    void *map = place_reserve(&req, &cache->meta);
    if (map == NULL)
        goto fail_cache;

    cache->map_base = (uintptr_t)map;
    cache->map_size = map_size;
    cache->base = cache->map_base + page;
    cache->npages = size / page;
    cache->target_lo = tlo;
    cache->target_hi = thi;
    cache->reach = reach;
    cache->near = opts->near;
    if (spans_init(&cache->spans, &cache->meta, cache->npages) != 0)
        goto fail_map;
    pthread_mutex_init(&cache->lock, NULL);
    debug_log("create: cache at [%#lx, %#lx), %zu pages usable", (unsigned long)cache->base,
              (unsigned long)(cache->base + size), cache->npages);
    return cache;

fail_map:
    os_release(map, map_size);
fail_cache:
    meta_free(&cache->meta, cache, sizeof *cache);
fail_meta : {
    int saved = errno;
    meta_close(&meta);
    errno = saved;
}
    return NULL;
}

void code_cache_destroy(struct code_cache *cache)
{
    if (cache == NULL)
        return;
    chunks_release_all(cache);
    spans_release(&cache->spans, &cache->meta);
    /* munmap cannot fail on a range we mapped ourselves, except when it would have to split a
     * mapping past the map count limit; the whole reservation is one or more of our own
     * mappings, all removed, so there is nothing to split. */
    os_release((void *)cache->map_base, cache->map_size);
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
    return reach_covers(cache->base, cache->base + cache->npages * os_page_size, t, t + 1,
                        cache->reach);
}

struct code_chunk *code_cache_alloc(struct code_cache *cache, size_t size)
{
    if (cache == NULL || size == 0) {
        errno = EINVAL;
        return NULL;
    }
    const size_t page = os_page_size;
    /* Checked before rounding, which could otherwise wrap. A chunk keeps byte offsets in 32 bits
     * (and so fewer than 2^20 pages in its 28-bit length); a cache can be larger than that. */
    if (size > cache->npages * page || align_up(size, page) > UINT32_MAX) {
        errno = ENOSPC;
        return NULL;
    }
    size_t pages = align_up(size, page) / page;
    size_t len = pages * page;

    pthread_mutex_lock(&cache->lock);
    /* Never-used space first, to keep freed code in quarantine, unless so many freed spans wait
     * that the mappings they cost matter (CACHE_QUARANTINE_HOLES): then the lowest freed span
     * that fits, and never-used space only when none does. */
    bool crowded = spans_holes(&cache->spans) >= CACHE_QUARANTINE_HOLES;
    size_t first = crowded ? spans_find(&cache->spans, pages) : SIZE_MAX;
    bool fresh = first == SIZE_MAX && pages <= cache->npages - cache->bump;
    bool dirty = false;
    if (fresh) {
        first = cache->bump;
        if (spans_reserve(&cache->spans, &cache->meta, cache->bump + pages) != 0)
            goto fail;
    } else {
        if (first == SIZE_MAX && !crowded)
            first = spans_find(&cache->spans, pages);
        if (first == SIZE_MAX) {
            debug_log("alloc: no span of %zu pages left (%zu free in freed spans)", pages,
                      cache->free_pages);
            errno = ENOSPC;
            goto fail;
        }
        dirty = spans_dirty(&cache->spans, first, pages);
    }
    struct code_chunk *chunk = chunks_record(cache);
    if (chunk == NULL)
        goto fail;
    uintptr_t addr = cache->base + first * page;
    if (wx_commit(cache, addr, len, dirty) != 0) {
        int saved = errno;
        chunks_unused(cache, chunk);
        errno = saved;
        goto fail;
    }
    if (fresh) {
        cache->bump += pages;
    } else {
        spans_take(&cache->spans, first, pages);
        cache->free_pages -= pages;
    }
    chunks_adopt(cache, chunk);
    chunk->cache = cache;
    chunk->first = (uint32_t)first;
    chunk->pages = (uint32_t)pages;
    chunk->used = 0;
    chunk->veneer_floor = (uint32_t)len;
    chunk->state = CHUNK_OPEN;
    chunk->veneers = NULL;
    cache->open_chunks++;
    cache->chunks_allocated++;
    pthread_mutex_unlock(&cache->lock);
    return chunk;

fail:
    pthread_mutex_unlock(&cache->lock);
    return NULL;
}

/*
 * One protection change and one discard over everything the bump pointer ever passed, however
 * many chunks there are. Retired spans are covered too: reset is where their release is retried.
 */
int code_cache_reset(struct code_cache *cache)
{
    if (cache == NULL) {
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_lock(&cache->lock);
    size_t used = cache->bump;
    if (used > 0) {
        bool released;
        if (wx_decommit(cache, cache->base, used * os_page_size, &released) != 0) {
            pthread_mutex_unlock(&cache->lock);
            return -1;
        }
        spans_clear(&cache->spans);
        cache->retired_pages = 0;
        if (released) {
            cache->bump = 0;
            cache->free_pages = 0;
        } else {
            /* The pages are inaccessible but keep their old code. They stay below the bump
             * pointer as free, dirty spans, discarded again before anyone may write to them. */
            debug_log("reset: madvise(MADV_DONTNEED) failed: %zu pages kept as dirty", used);
            spans_put(&cache->spans, 0, used, true);
            cache->free_pages = used;
        }
    }
    chunks_free_all(cache);
    pthread_mutex_unlock(&cache->lock);
    return 0;
}

void code_cache_get_stats(const struct code_cache *cache, struct code_cache_stats *out)
{
    if (cache == NULL || out == NULL)
        return;
    /* The lock guards the counters, not the cache's identity: taking it does not change what a
     * const cache means to the caller. */
    struct code_cache *c = (struct code_cache *)cache;
    const size_t page = os_page_size;
    pthread_mutex_lock(&c->lock);
    size_t live_pages = c->bump - c->free_pages - c->retired_pages;
    *out = (struct code_cache_stats){
        .base = c->base,
        .reserved = c->npages * page,
        .committed = live_pages * page,
        .in_use = live_pages * page,
        .free = (c->npages - c->bump + c->free_pages) * page,
        .never_used = (c->npages - c->bump) * page,
        .retired = c->retired_pages * page,
        .free_spans = spans_holes(&c->spans),
        .open_chunks = c->open_chunks,
        .sealed_chunks = c->sealed_chunks,
        .chunks_allocated = c->chunks_allocated,
        .protection_changes = __atomic_load_n(&c->protection_changes, __ATOMIC_RELAXED),
        .meta_bytes = __atomic_load_n(&c->meta.bytes, __ATOMIC_RELAXED),
        .reach = c->reach,
        .near = c->near,
    };
    pthread_mutex_unlock(&c->lock);
}
