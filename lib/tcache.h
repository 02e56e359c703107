/*
 * tcache.c: each thread's cache of the small chunks it freed, so that a method JIT's alloc and
 * free of one function take no lock (jemalloc's tcache, for code). Only where a free is stores
 * alone (wx_ops.scrub_in_lock: the dual backend, not hardened).
 */
#ifndef CODE_CACHE_TCACHE_H
#define CODE_CACHE_TCACHE_H

#include <stdbool.h>
#include <stddef.h>

struct code_cache;
struct code_chunk;

/* Chunks of 1 .. TCACHE_CLASSES granules (64 B - 2 KiB with the dual backend's granule): a
 * method JIT's functions, and a regex JIT's patterns (about 1.2 KB each, FACTS.md). */
#define TCACHE_CLASSES 32

/* code_cache_create: whether this cache's small frees may go to thread caches. */
void tcache_init(struct code_cache *cache);
/* code_cache_destroy, once the cache is off the process's list (threads that exit later leave it
 * alone): the thread caches' memory is freed. */
void tcache_forget(struct code_cache *cache);
/* In a fork()ed child, which has one thread: no other thread is inside a fast path. */
void tcache_after_fork_child(struct code_cache *cache);

/* code_cache_alloc without the lock: an OPEN chunk of n granules that this thread freed, once
 * enough wait (the quarantine), or NULL: the caller takes the lock. */
struct code_chunk *tcache_alloc(struct code_cache *cache, size_t n);
/* code_chunk_free without the lock: true when the chunk was scrubbed and kept by this thread;
 * false when the caller must free it the locked way (which may find its bytes trapped already,
 * and writes them again). A kept chunk's lookup words still name it: see tcache.c. */
bool tcache_free(struct code_chunk *chunk);

/* Caller holds the lock. tcache_stop stops every thread's fast paths (they take the lock instead,
 * and wait for it) until tcache_resume; tcache_drain_all stops them and gives every kept chunk
 * back to the cache's index, and returns the granules given back. */
void tcache_stop(struct code_cache *cache);
size_t tcache_drain_all(struct code_cache *cache);
void tcache_resume(struct code_cache *cache);

/* code_cache_get_stats, under the lock, the fast paths stopped: what the thread caches keep, and
 * how many chunks they handed out. */
struct tcache_totals {
    size_t granules, chunks, allocated;
};
void tcache_totals(const struct code_cache *cache, struct tcache_totals *out);

#endif
