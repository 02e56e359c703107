/*
 * The cache: one reservation near the targets, handed out in page-granular chunks. Chunks are
 * bumped from the low end while never-used space remains and only then taken from the free span
 * index: bumping first keeps freed code in quarantine (inaccessible, so a stale call faults) for
 * as long as possible.
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
     * fit in the 2 * reach window around the target, and its page count in a uint32_t-indexed
     * bitmap comfortably. */
    if (size > 2 * reach || size > (size_t)1 << 40) {
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
fail_meta: {
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
