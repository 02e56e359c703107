/*
 * find.c: the granule -> chunk index that code_cache_find reads without a lock. Its writers
 * (alloc and free, under the cache's lock or in a thread cache that owns the chunk) are inline:
 * they run twice per chunk.
 */
#ifndef CODE_CACHE_FIND_H
#define CODE_CACHE_FIND_H

#include "internal.h"

/* 1024 words (4 KiB) in the first slab. */
#define FIND_BASE_SHIFT 10

void find_init(struct code_cache *cache);
int find_grow(struct code_cache *cache, size_t granules); /* 0, or -1 + ENOMEM */

/* Words of one slab are contiguous: fill them slab by slab. The table's geometry is passed as
 * constants (table_run_as): this runs twice per chunk, at its alloc and at its free. */
static inline __attribute__((always_inline)) void find_fill(struct code_cache *cache, size_t first,
                                                            size_t n, uint32_t value)
{
    while (n > 0) {
        size_t run = 0;
        uint32_t *word = table_run_as(&cache->find, first, &run, sizeof *word, FIND_BASE_SHIFT);
        if (word == NULL)
            return; /* granules never used have no words, and need none */
        if (run > n)
            run = n;
        for (size_t i = 0; i < run; i++)
            __atomic_store_n(&word[i], value, __ATOMIC_RELEASE);
        first += run;
        n -= run;
    }
}

static inline void find_set(struct code_cache *cache, size_t first, size_t n, uint32_t id)
{
    find_fill(cache, first, n, id + 1);
}

static inline void find_clear(struct code_cache *cache, size_t first, size_t n)
{
    find_fill(cache, first, n, 0);
}

#endif
