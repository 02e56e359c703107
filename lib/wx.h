/*
 * The W^X backends: how the memory of a cache becomes writable, runnable and inaccessible again.
 * A backend is a table of functions chosen once, at create (jemalloc's extent_hooks); the cache
 * and chunk code call cache->wx->seal(...) and never ask which backend they have.
 *
 * Offsets and lengths are bytes from the start of the usable region. "Pages" arguments are whole
 * pages; "span" arguments are whole granules.
 */
#ifndef CODE_CACHE_WX_H
#define CODE_CACHE_WX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct code_cache;

struct wx_ops {
    const char *name;       /* "mprotect" or "dual": stats.backend */
    unsigned granule_shift; /* log2 of the allocation granule; 0 = the page size */
    bool freed_stays_ready; /* dual: a freed span keeps its memory (traps) until released in a
                               batch; mprotect: freeing releases the pages at once */
    bool can_patch;         /* code_chunk_patch is possible (a second, writable view) */
    unsigned flags;         /* the CODE_CACHE_* flags that only this backend accepts */

    /* After placement: the views over the reservation [cache->base, + cache->size). */
    int (*open)(struct code_cache *cache);
    void (*close)(struct code_cache *cache);
    /* Never-used or released pages [off, off + len) -> ready to hand out: mprotect rw-, zeroes;
     * dual r-x, traps. dirty: the memory may hold old code and must be discarded first. */
    int (*commit)(struct code_cache *cache, size_t off, size_t len, bool dirty);
    /* The span of a chunk whose traps are in place -> runnable (mprotect: r-x). */
    int (*seal)(struct code_cache *cache, size_t off, size_t len);
    /* Pages [off, off + len) -> inaccessible, memory given back. *discarded false when the memory
     * could not be given back (the pages are inaccessible all the same). */
    int (*release)(struct code_cache *cache, size_t off, size_t len, bool *discarded);
    /* A freed span that stays ready (freed_stays_ready): its bytes become traps. sealed: the
     * chunk was SEALED when it was freed. 0, or -1 + errno when the span cannot be written. */
    int (*scrub)(struct code_cache *cache, size_t off, size_t len, bool sealed);
    /* Whether scrub is only stores (no system call, no other lock), so that a free may make it
     * with the cache's lock held; NULL: never. */
    bool (*scrub_in_lock)(const struct code_cache *cache);
    /* Around a write into sealed code (code_chunk_patch), for backends that can: the span is
     * writable between begin (0, or -1 + errno) and end. */
    int (*patch_begin)(struct code_cache *cache, size_t off, size_t len);
    void (*patch_end)(struct code_cache *cache, size_t off, size_t len);
};

extern const struct wx_ops wx_mprotect;
extern const struct wx_ops wx_dual;

/* wx.c: what both backends share. */
int wx_protect(struct code_cache *cache, uintptr_t addr, size_t len, int prot); /* counted */
void wx_count_syscall(struct code_cache *cache);
/* After code was written at [rx, rx + len): instruction cache and valgrind's translations, and,
 * when other threads may already have run code at those addresses (ran_before: a reused span, a
 * patch), the other cores' instruction streams (arch_sync_cores). */
void wx_publish(uintptr_t rx, size_t len, bool ran_before);
/* Bumped in every child of fork() (wx.c); a cache remembers the value it was created with. Hidden
 * like every symbol of the library; read through wx_forked (internal.h), inlined into the hot
 * paths (code_chunk_alloc). */
extern unsigned wx_generation;
unsigned wx_fork_generation(void);

#endif
