/*
 * Names of JIT functions: names.c (code_chunk_name, the names of a chunk).
 *
 * The core calls this edge through hooks and nothing else: debuginfo_create when a cache
 * exists, debuginfo_retire when a chunk is freed or reset (or destroyed with its cache). The
 * latter costs one load when the chunk has no names; nothing in the allocator knows about them.
 */
#ifndef CODE_CACHE_DEBUGINFO_H
#define CODE_CACHE_DEBUGINFO_H

#include "internal.h"

/* One named function: a node of the chunk's list, newest first. Immutable once published, freed
 * only when the chunk is retired, so that code_chunk_name_at can walk the list without a lock. */
struct debug_name {
    struct debug_name *next; /* older names */
    uintptr_t start;         /* first byte, where it runs */
    size_t size;
    size_t len; /* strlen(name) */
    char name[];
};

/* What chunk->debug_names points to, created with the chunk's first name. */
struct debug_names {
    struct debug_name *head; /* newest first; atomic (release on push, acquire on read) */
};

/* names.c: the hooks' slow halves. */
void names_retire(struct code_cache *cache, struct code_chunk *chunk);

/* cache.c, code_cache_create, once the cache is complete: names the reservation for
 * /proc/PID/maps where the kernel can (prctl PR_SET_VMA_ANON_NAME). */
void debuginfo_create(struct code_cache *cache);

/* chunk.c, chunks_retire and chunks_release_all, under the cache's lock: the names go, and the
 * debugger forgets the chunk. Also chunks_open: a name that raced the chunk's free (a misuse)
 * leaves nothing to the record's next chunk. */
static inline void debuginfo_retire(struct code_cache *cache, struct code_chunk *chunk)
{
    if (chunk->debug_names != NULL)
        names_retire(cache, chunk);
}

#endif
