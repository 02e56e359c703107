/*
 * What the files of lib/ share: the cache and its chunk records. Nothing here is exported: the
 * library is built with -fvisibility=hidden and only the CODE_CACHE_API functions of
 * <code_cache.h> are visible.
 *
 * Layers, bottom up (DESIGN.md): os.c (system calls) < arch/ (instruction set) < meta.c (jemalloc
 * arena) < maps.c (address-space map) < place.c (placement) < wx*.c (W^X backends) < spans.c,
 * table.c, find.c (indexes) < space.c (free space) < cache.c, chunk.c (the public API).
 */
#ifndef CODE_CACHE_INTERNAL_H
#define CODE_CACHE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arch.h"
#include "code_cache.h"
#include "debug.h"
#include "meta.h"
#include "os.h"
#include "spans.h"
#include "table.h"
#include "wx.h"

#define CACHE_DEFAULT_SIZE ((size_t)64 << 20)

/*
 * How many freed spans (maximal runs of free granules below the bump pointer) may wait in
 * quarantine before code_cache_alloc reuses them ahead of never-used space. Every such hole
 * between accessible chunks costs the process up to two mappings (the hole itself, and the split
 * of the chunks around it), counted against the process-wide vm.max_map_count (65530 by default)
 * that every other mmap of the program shares; unbounded, page-sized churn in a large cache
 * reaches it (bench/churn: within 60,000 random frees), and then mprotect fails with ENOMEM. Under
 * valgrind 3.19 the limit is lower still: it aborts at about 30,000 mappings (VG_N_SEGMENTS,
 * measured). 512 holes cost at most 1024 mappings, small next to either limit and to what the
 * program itself maps, while still keeping hundreds of freed spans inaccessible between reuses.
 */
#define CACHE_QUARANTINE_HOLES 512

/* States of a chunk record. SEALING and FREEING are transient: a thread is between the two halves
 * of a seal or a free; reset and free wait for a SEALING chunk to settle. */
enum chunk_state {
    CHUNK_UNUSED = 0,
    CHUNK_OPEN = 1,
    CHUNK_SEALING = 2,
    CHUNK_SEALED = 3,
    CHUNK_FREEING = 4,
    CHUNK_FREED = 5,
};

struct veneers; /* chunk.c */

/* The record table's first slab holds 1 << CHUNK_RECORDS_BASE records (64). */
#define CHUNK_RECORDS_BASE 6

/*
 * One record per chunk, 56 bytes, in the cache's record table (table.h: records never move, so
 * code_cache_find may read one from a signal handler while the table grows). Offsets are 32-bit:
 * a cache is at most 2 * reach + a few bytes (4 GiB on x86-64).
 */
struct code_chunk {
    struct code_cache *cache;
    uint64_t extent; /* first granule << 32 | granules; atomic (code_cache_find) */
    union {
        uint32_t used;    /* OPEN or SEALED: bytes claimed from the low end */
        uint32_t kept_at; /* FREED, kept by a thread cache: that thread's count of frees then */
    };
    uint32_t veneer_floor; /* veneers occupy [veneer_floor, size) */
    uint32_t reserve;      /* the outstanding reservation's first byte + 1, or 0 */
    uint32_t id;           /* index in cache->records */
    union {
        uint32_t fifo_next; /* FREED, in the recycled FIFO: the next record's id + 1, or 0 */
        uint32_t reused;    /* OPEN or SEALED: the span held code before (freed, or before a
                               reset), so its seal resynchronises other cores (arch_sync_cores) */
    };
    uint8_t state;            /* enum chunk_state; atomic */
    uint8_t frozen_from;      /* code_cache_reset: the state before it froze the chunk */
    uint16_t reserve_veneers; /* veneers placed since the reservation began */
    struct veneers *veneers;
    void *debug_names; /* names for profilers and debuggers, or NULL */
};

struct code_cache {
    pthread_mutex_t lock;
    pthread_cond_t idle; /* broadcast when in_flight drops to 0 or a commit or reset ends */
    struct meta meta;
    const struct wx_ops *wx;
    unsigned flags;
    int exec_prot; /* PROT_READ | PROT_EXEC, | PROT_BTI with CODE_CACHE_BTI */

    /* The region: the reservation with a guard page at each end, and its usable part as code
     * runs there. rw_base is where that part is written (== base with the mprotect backend). */
    uintptr_t map_base;
    size_t map_size;
    uintptr_t base;
    size_t size;
    uintptr_t rw_base;
    unsigned granule_shift;
    size_t ngranules;
    size_t page_granules; /* granules per page */

    /* Placement. */
    uintptr_t target_lo, target_hi;
    size_t reach;
    const void *near;

    /* The dual-mapped backend's file and RW view (with its own guard pages). */
    int fd;
    const char *dual_file;
    /* The file refused fallocate once (EOPNOTSUPP, seccomp): commits do not ask again. */
    bool no_fallocate;
    uintptr_t rw_map_base;
    size_t rw_map_size;
    unsigned fork_generation;
    /* CODE_CACHE_DUAL_HARDEN: sealed granules per page (uint16_t), and the lock that keeps a
     * page's count and its protection in the RW view in step. */
    bool harden;
    pthread_mutex_t harden_lock;
    struct table sealed_per_page;

    /* Allocation state, under the lock. */
    size_t bump;        /* granules handed out from the low end at least once */
    size_t high_water;  /* granules ever handed out, resets included: below it, code may have run */
    size_t ahead;       /* [bump, ahead) is committed ahead; ahead is page aligned */
    size_t ahead_step;  /* bytes of the next commit-ahead step */
    bool committing;    /* a thread commits ahead of the bump pointer, outside the lock */
    bool resetting;     /* code_cache_reset is waiting or working */
    unsigned in_flight; /* allocs, frees and releases working outside the lock */
    size_t release_due; /* dual: free_granules at which the next batch release runs */
    struct spans spans;
    struct table records;          /* struct code_chunk, by id */
    size_t records_used;           /* ids [0, records_used) have been handed out */
    uint32_t fifo_head, fifo_tail; /* recycled records, oldest first: id + 1, or 0 */
    size_t fifo_count;
    struct table find; /* uint32_t per granule: id + 1 of the live chunk there, or 0 */
    size_t live_granules, free_granules, cold_granules, retired_granules;
    size_t chunks_allocated;

    /* Live chunks (under the lock), and of them the SEALED ones: a seal runs without the lock,
     * and one atomic add is all it pays for the count. OPEN = live - sealed. */
    size_t live_chunks, sealed_chunks;
    /* Updated atomically, from outside the lock. */
    size_t protection_changes, system_calls;

    /* The process's caches (cache.c: fork, and thread exits), under caches_lock_list. */
    struct code_cache *next_cache;

    /* Thread caches of freed small chunks (tcache.c). */
    uint64_t serial;         /* unique in the process, never 0 */
    bool tcache_on;          /* the backend's free is stores alone */
    unsigned tcache_stopped; /* atomic: fast paths take the lock instead */
    struct tcache *tcaches;  /* under the lock */
};

static inline size_t cache_granule(const struct code_cache *cache)
{
    return (size_t)1 << cache->granule_shift;
}

static inline uint32_t chunk_first(uint64_t extent)
{
    return (uint32_t)(extent >> 32);
}
static inline uint32_t chunk_granules(uint64_t extent)
{
    return (uint32_t)extent;
}
static inline uint64_t chunk_load_extent(const struct code_chunk *chunk)
{
    return __atomic_load_n(&chunk->extent, __ATOMIC_RELAXED);
}
static inline uint8_t chunk_load_state(const struct code_chunk *chunk)
{
    return __atomic_load_n(&chunk->state, __ATOMIC_ACQUIRE);
}
static inline void chunk_store_state(struct code_chunk *chunk, enum chunk_state state)
{
    __atomic_store_n(&chunk->state, (uint8_t)state, __ATOMIC_RELEASE);
}
/* Bytes from the start of the usable region to the chunk's first byte, and its size. */
static inline size_t chunk_offset(const struct code_chunk *chunk)
{
    return (size_t)chunk_first(chunk_load_extent(chunk)) << chunk->cache->granule_shift;
}
static inline size_t chunk_size(const struct code_chunk *chunk)
{
    return (size_t)chunk_granules(chunk_load_extent(chunk)) << chunk->cache->granule_shift;
}

/* In a fork()ed child a dual-mapped cache shares its file with the parent, and its RW view is not
 * there (MADV_DONTFORK): nothing may be written to it or released from it. No system call. */
/* The RW view of a dual-mapped cache is not inherited by fork(): true in a child. Costs a load. */
static inline bool wx_forked(const struct code_cache *cache)
{
    return __atomic_load_n(&wx_generation, __ATOMIC_RELAXED) != cache->fork_generation;
}

static inline bool cache_frozen_by_fork(const struct code_cache *cache)
{
    return cache->wx->freed_stays_ready && wx_forked(cache);
}

/* A record that exists: every id below records_used, every link in the FIFO and in the thread
 * caches. The table's geometry as constants (table_run_as): no load but the slab's. */
static inline struct code_chunk *chunks_at(const struct code_cache *cache, size_t id)
{
    struct code_chunk *chunk =
        table_run_as(&cache->records, id, NULL, sizeof *chunk, CHUNK_RECORDS_BASE);
    if (chunk == NULL)
        __builtin_unreachable();
    return chunk;
}

/* chunk.c: chunk records. The caller holds the cache's lock. */
/* A record for a new chunk: the oldest recycled one once more than CHUNK_QUARANTINE wait, else a
 * new id. NULL + ENOMEM. The record is not live until chunks_open. */
struct code_chunk *chunks_record(struct code_cache *cache);
void chunks_unused(struct code_cache *cache, struct code_chunk *chunk); /* undo chunks_record */
/* Fills a record for [first, first + granules) and makes it OPEN. */
void chunks_open(struct code_cache *cache, struct code_chunk *chunk, size_t first, size_t granules);
/* A chunk kept by a thread cache, OPEN again on its own span: its lookup words still name it
 * (tcache.c). No lock needed: the thread cache owns it. */
void chunks_reopen(struct code_cache *cache, struct code_chunk *chunk);
void chunks_retire(struct code_cache *cache, struct code_chunk *chunk); /* -> FREED, FIFO */
void chunks_release_all(struct code_cache *cache); /* destroy: every record's memory */
/* A fork()ed child: seals that other threads had in progress never finish there. */
void chunks_after_fork_child(struct code_cache *cache);

/* cache.c: the lock. */
/* Takes the lock once no reset is in progress. */
void cache_lock(struct code_cache *cache);
void cache_unlock(struct code_cache *cache);
/* A thread that worked outside the lock (in_flight) is done; caller holds the lock. */
void cache_end_outside(struct code_cache *cache);
/* The process's caches: the list's lock, and the cache with a serial number while it is held
 * (NULL once destroyed). fork() takes it, then every cache's lock. */
void caches_lock_list(void);
void caches_unlock_list(void);
struct code_cache *caches_find(uint64_t serial);

/* space.c: the free space, from which code_cache_alloc takes chunks. */
/* A FREED chunk whose span is scrubbed (kept by a thread cache until now): its lookup words
 * cleared, the span back to the index as free and ready, the record to the FIFO. No system call: a
 * batch release due is left to space_release_if_due. Caller holds the lock. */
void space_put_back(struct code_cache *cache, struct code_chunk *chunk);
void space_release_if_due(struct code_cache *cache);
void space_init(struct code_cache *cache);
/* The second half of code_chunk_free, called with the chunk FREEING and in_flight counted:
 * releases or scrubs its span outside the lock, then gives it back and retires the record.
 * sealed: the chunk was SEALED. */
void space_reclaim(struct code_cache *cache, struct code_chunk *chunk, bool sealed);
/* The whole of it without dropping the lock, where that is cheap (a small span that stays ready):
 * true when done, false when the caller must go the way of space_reclaim. Caller holds the lock,
 * the chunk FREEING. */
bool space_reclaim_in_lock(struct code_cache *cache, struct code_chunk *chunk, bool sealed);
/* Bytes from the start of the region that may be committed: what a reset releases. */
size_t space_committed_bytes(const struct code_cache *cache);
/* After a reset released those bytes: everything is never-used again, or, when the memory could
 * not be discarded, free, cold and dirty. Caller holds the lock. */
void space_forget_all(struct code_cache *cache, size_t released, bool discarded);

#include "find.h"

#endif /* CODE_CACHE_INTERNAL_H */
