/*
 * code_cache_find: which live chunk holds an address, from any thread, without a lock, from a
 * signal handler. Free-by-pointer allocator interfaces (sljit's SLJIT_FREE_EXEC(ptr), asmjit's
 * JitAllocator::release(rx)), unwinders and crash handlers ask it.
 *
 * One 32-bit word per granule, in a table whose slabs never move (table.h): the id + 1 of the
 * chunk whose span covers the granule, or 0. A lookup is a subtraction, two loads to reach the
 * word, and the record. Memory: 4 bytes per granule ever used, 1/1024 of the mprotect backend's
 * pages, 1/16 of the dual backend's 64-byte granules.
 *
 * Writers (alloc and free, under the cache's lock) fill a chunk's words after its record is
 * complete (release stores) and clear them when it starts to be freed, before its record can be
 * reused. A reader re-checks what a concurrent free or reset could have changed by reading the
 * word again after computing the record's address: a lookup is one cache miss (the word), not two
 * (measured: 199 ns with the record read as well, at 100,000 live chunks).
 *
 * Except where threads keep the chunks they free (tcache.c; the dual backend): a kept chunk's
 * words still hold its id, so that its free and its reuse by the same thread write none (two cold
 * cache lines per function, a third of a 1 KiB function's cost). There a word may name a FREED
 * record, and the reader reads the record's state, between its two reads of the word: FREED is
 * not found, nor FREEING (the thread cache's free claims the chunk, then writes its traps: a
 * chunk found then would be gone by the time its caller looks at it, and the locked free clears
 * the words before it claims). The state is stored (release) after the rest of the record and, when
 * the record is reused, after its old words were cleared (space_put_back, under the lock): a reader
 * that sees the new life's state and then the same id in the word has the chunk that covers the
 * granule now. A second cache miss for a hit (bench/find, 100,000 live chunks: 55-79 ns instead of
 * 27-42), which a free by pointer (find, then code_chunk_free, which reads the record anyway)
 * does not pay twice.
 */
#include "internal.h"

void find_init(struct code_cache *cache)
{
    table_init(&cache->find, sizeof(uint32_t), FIND_BASE_SHIFT);
}

int find_grow(struct code_cache *cache, size_t granules)
{
    return table_grow(&cache->find, &cache->meta, granules);
}

struct code_chunk *code_cache_find(const struct code_cache *cache, const void *addr)
{
    if (cache == NULL)
        return NULL;
    uintptr_t a = (uintptr_t)addr, off;
    if (a - cache->base < cache->size)
        off = a - cache->base;
    else if (cache->rw_base != cache->base && a - cache->rw_base < cache->size)
        off = a - cache->rw_base;
    else
        return NULL;
    size_t granule = off >> cache->granule_shift;
    const uint32_t *word = table_run_as(&cache->find, granule, NULL, sizeof *word, FIND_BASE_SHIFT);
    if (word == NULL)
        return NULL;
    uint32_t id = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    if (id == 0)
        return NULL;
    /* The record's address is computed, not read: the record itself is not touched, but where
     * thread caches keep chunks (its state). */
    struct code_chunk *chunk =
        table_run_as(&cache->records, id - 1, NULL, sizeof *chunk, CHUNK_RECORDS_BASE);
    if (chunk == NULL)
        return NULL;
    /* Kept by a thread cache, or being freed into one: its words stay. */
    if (cache->tcache_on && chunk_load_state(chunk) >= CHUNK_FREEING)
        return NULL;
    /* A free clears the words of its chunk before the record can be retired and reused, and a
     * reuse writes the words of its new span only once the record is complete: if the word still
     * holds the same id, the record is the live chunk covering this granule now (or one being
     * freed right now, which the contract allows). One cache line, already loaded. */
    if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != id)
        return NULL;
    return chunk;
}
