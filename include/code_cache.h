/*
 * libcodecache: executable memory for JIT compilers, placed within direct-branch reach of the
 * runtime's helpers, never writable and executable at once.
 *
 * A cache reserves one region of address space (PROT_NONE, committed only when chunks are handed
 * out). A chunk is a page-granular piece of it with a state:
 *
 *     OPEN (read+write) --code_chunk_seal--> SEALED (read+exec) --code_chunk_free--> FREED
 *
 * Functions are bump-allocated inside an OPEN chunk and sealed together with one protection change.
 *
 * Errors follow mmap(2): functions return NULL, -1 or a span with .rw == NULL, and set errno to one
 * of the values documented above each declaration. A failed call leaves the cache usable.
 * Cache functions are thread-safe. A chunk belongs to one thread at a time until it is sealed.
 *
 * Setting CODE_CACHE_DEBUG=1 in the environment makes the library explain its placement decisions
 * on standard error. CODE_CACHE_NO_RANDOM=1 makes placement pick the fitting base nearest to the
 * target instead of a random one (reproducible layouts for debugging).
 *
 * See code_cache(3) for the full manual.
 */
#ifndef CODE_CACHE_H
#define CODE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && __GNUC__ >= 4
#define CODE_CACHE_API __attribute__((visibility("default")))
#else
#define CODE_CACHE_API
#endif

/* Opaque handles. */
struct code_cache;
struct code_chunk;

/* A piece of code memory: write the code through .rw, run it at .rx. With the mprotect backend
 * the two are equal. Functions returning a span signal failure with .rw == NULL and errno. */
struct code_span {
    void *rw;
    void *rx;
    size_t size;
};

/* Flags for code_cache_options.flags. Unknown bits are rejected with EINVAL. */

/* Make the whole cache reach every loadable segment of the shared object or executable that
 * contains .near (found with dladdr and dl_iterate_phdr), not just the one address, so code can
 * call any function and reach any global of that object directly. */
#define CODE_CACHE_NEAR_OBJECT 0x1u

/* Options for code_cache_create. All zero means: a 64 MiB cache anywhere. */
struct code_cache_options {
    size_t size;      /* address space to reserve, rounded up to pages; 0 = 64 MiB */
    const void *near; /* every byte of the cache must reach this address, or NULL */
    size_t reach;     /* 0 = the architecture's direct-call reach (x86-64: 2 GiB) */
    unsigned flags;   /* CODE_CACHE_NEAR_OBJECT */
};

/* Counters of one cache; a consistent snapshot taken under the cache's lock. */
struct code_cache_stats {
    uintptr_t base;            /* first usable byte of the region (after the low guard page) */
    size_t reserved;           /* usable bytes of address space (guard pages excluded) */
    size_t committed;          /* bytes backed by memory: OPEN and SEALED chunks */
    size_t in_use;             /* bytes of OPEN and SEALED chunks, same as committed */
    size_t free;               /* bytes that can still be handed out (never used + freed spans) */
    size_t never_used;         /* bytes above the bump pointer, never handed out yet */
    size_t retired;            /* bytes of freed chunks that could not be released (a system call
                                  failed): not reused until the next reset */
    size_t free_spans;         /* freed spans waiting to be reused: maximal runs of free pages
                                  below the bump pointer (each one a mapping of its own) */
    size_t open_chunks;        /* chunks in state OPEN */
    size_t sealed_chunks;      /* chunks in state SEALED */
    size_t chunks_allocated;   /* total code_cache_alloc successes since creation */
    size_t protection_changes; /* successful mprotect calls made for this cache since
                                  creation (one per alloc, seal, free and reset) */
    size_t meta_bytes;         /* bytes of bookkeeping held in the cache's jemalloc arena */
    size_t reach;              /* the reach the cache was placed with, in bytes */
    const void *near;          /* the target the cache was placed near, or NULL */
};

/* Reserves a cache within reach of opts->near (NULL opts: all defaults). Returns NULL and sets
 * errno: EINVAL (unknown flag, reach larger than the architecture's, size that cannot fit in the
 * reach window, NEAR_OBJECT without near or with an address in no loaded object), ERANGE (the
 * window, clipped to the user address space, is smaller than size), ENOMEM (no free gap within
 * reach, or no memory for bookkeeping), or the errno of a failing mmap (EPERM, EAGAIN...). */
CODE_CACHE_API struct code_cache *code_cache_create(const struct code_cache_options *opts);

/* Releases the whole region and every chunk, sealed or not. NULL is a no-op. Handles of the
 * cache's chunks are invalid afterwards. */
CODE_CACHE_API void code_cache_destroy(struct code_cache *cache);

/* Frees every chunk at once (the "flush the code cache" of LuaJIT and QEMU): all their pages
 * become inaccessible and their memory is given back; the whole region is reused from its start.
 * Handles from before are invalid afterwards. Returns 0, or -1 and errno: EINVAL (NULL cache),
 * or the errno of a failing mprotect (the cache is unchanged). */
CODE_CACHE_API int code_cache_reset(struct code_cache *cache);

/* True when a direct branch from anywhere in the cache reaches target, within the reach the cache
 * was created with. False for a NULL cache. */
CODE_CACHE_API bool code_cache_reaches(const struct code_cache *cache, const void *target);

/* Fills *out with a snapshot of the cache's counters. Does nothing when either is NULL. */
CODE_CACHE_API void code_cache_get_stats(const struct code_cache *cache,
                                         struct code_cache_stats *out);

/* Hands out an OPEN chunk of at least size bytes (rounded up to pages), readable and writable,
 * memory committed. Never-used space is taken first, so that freed code stays inaccessible for as
 * long as possible; freed spans (the lowest one that fits) when it runs out, or as soon as 512
 * freed spans are waiting: each is a mapping of its own, and the mappings of a process are
 * limited (vm.max_map_count). From then on a freed span is taken first and never-used space only
 * when none fits, so that while chunks come and go stats.free_spans stays near 512 instead of
 * growing with every free. Returns NULL and errno: EINVAL (NULL cache, size 0), ENOSPC (no span
 * of that size left: free or reset), ENOMEM (no memory to commit, or for bookkeeping), or the
 * errno of a failing mprotect/madvise. */
CODE_CACHE_API struct code_chunk *code_cache_alloc(struct code_cache *cache, size_t size);

/* The whole span of a chunk (its .rw is NULL after free). */
CODE_CACHE_API struct code_span code_chunk_span(const struct code_chunk *chunk);

/* Allocates size bytes aligned to align (a power of two, at most a page; 0 means 1) inside an
 * OPEN chunk, by bumping a pointer: no system call, no lock. Returns a span, or one with .rw NULL
 * and errno: EINVAL (NULL chunk, size 0, bad align), EPERM (chunk not OPEN), ENOSPC (full). */
CODE_CACHE_API struct code_span code_chunk_alloc(struct code_chunk *chunk, size_t size,
                                                 size_t align);

/* Makes an OPEN chunk executable: fills its unused bytes with trap instructions, makes it
 * read+exec with one mprotect, flushes the instruction cache. Returns 0, or -1 and errno: EINVAL
 * (NULL chunk), EBUSY (already sealed), EPERM (freed), EACCES (the system refused executable
 * memory, as SELinux execmem does: the chunk stays OPEN), or the errno of a failing mprotect. */
CODE_CACHE_API int code_chunk_seal(struct code_chunk *chunk);

/* Frees a chunk in any state: its pages become inaccessible (a stale call faults) and their
 * memory is given back; the span is reused once never-used space runs out, or earlier when many
 * freed spans are waiting (see code_cache_alloc). NULL is a no-op.
 * Freeing a chunk twice, or after code_cache_reset, aborts the process with a message on standard
 * error. This is detected as long as the chunk's record has not been reused for a new chunk:
 * records of freed chunks are reused oldest first, and only once more than 16 are waiting. */
CODE_CACHE_API void code_chunk_free(struct code_chunk *chunk);

/* Where code in this chunk should branch to reach target: target itself when a direct branch
 * from anywhere in the chunk reaches it, else a veneer (an indirect jump stub) placed at the end
 * of the chunk, shared by every call to the same target. Veneers are created only while the chunk
 * is OPEN. Returns NULL and errno: EINVAL (NULL chunk or target), EPERM (a veneer is needed but
 * the chunk is not OPEN), ENOSPC (no room for the veneer), ENOMEM (no memory for bookkeeping). */
CODE_CACHE_API const void *code_chunk_call_target(struct code_chunk *chunk, const void *target);

#ifdef __cplusplus
}
#endif

#endif /* CODE_CACHE_H */
