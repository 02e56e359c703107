/*
 * libcodecache: executable memory for JIT compilers, placed within direct-branch reach of the
 * runtime's helpers, never writable and executable at once.
 *
 * A cache reserves one region of address space (PROT_NONE, committed only as it is used). A
 * chunk is a piece of it with a state:
 *
 *     OPEN (written) --code_chunk_seal--> SEALED (runs) --code_chunk_free--> FREED
 *
 * Two ways of using it, served by the same calls:
 *   - batches: many functions bumped into one chunk (code_chunk_alloc) and sealed together;
 *   - one function at a time: a chunk per function, its size learnt while it is emitted
 *     (code_chunk_reserve / code_chunk_commit), found again from any address
 *     (code_cache_find), freed by pointer, patched after it ran (code_chunk_patch).
 *
 * Two W^X backends (code_cache_options.flags), chosen at create; the calls do not change:
 *   - mprotect (default): one view, rw == rx. A chunk is whole pages: rw- while OPEN, r-x once
 *     SEALED, --- once FREED. Sealing costs one mprotect, amortised over a batch; a freed chunk's
 *     memory goes back to the system at once. Best for batches and large chunks.
 *   - dual mapping (CODE_CACHE_DUAL_MAP): one shared memory file mapped twice, write through .rw,
 *     run at .rx. Chunks are packed in 64-byte granules; seal and free make no system call and
 *     take no lock beyond a state change; sealed code can be patched. Best for one small
 *     function at a time: 0.1-0.2 us per function of 64 B-1 KiB allocated, written, sealed,
 *     called and freed with 100,000 alive; 1.1-1.4x faster than asmjit's JitAllocator without
 *     W^X at 64 and 256 B, about the same at 1 KiB (1.10x faster to 1.27x slower); against 7-8 us
 *     with mprotect. Writing and running the function is about 60 ns of it at 64 B, with any
 *     allocator or none (bench/README.md has the measured costs).
 *
 * Errors follow mmap(2): functions return NULL, -1 or a span with .rw == NULL, and set errno to one
 * of the values documented above each declaration. A failed call leaves the cache usable.
 * Cache functions are thread-safe. A chunk belongs to one thread at a time until it is sealed.
 * Misuse across threads (a seal or free racing a reset of the same cache) gets a documented
 * error or a deterministic fault, never a corrupted cache or a page left executable after it was
 * freed.
 *
 * Environment: CODE_CACHE_DEBUG=1 makes the library explain its placement and allocation
 * decisions on standard error (errno is never changed by it). CODE_CACHE_NO_RANDOM=1 makes
 * placement pick the fitting base nearest to the target instead of a random one (reproducible
 * layouts for debugging). CODE_CACHE_PERF=map|jitdump|map,jitdump and CODE_CACHE_GDB=1 announce
 * named functions to perf and gdb, as the flags CODE_CACHE_PERF_MAP, CODE_CACHE_PERF_JITDUMP and
 * CODE_CACHE_GDB_JIT do for one cache; JITDUMPDIR says where jit-<pid>.dump goes.
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

/* A piece of code memory: write the code through .rw, run it at .rx; what is written at rw + k
 * runs at rx + k. With the mprotect backend the two are equal. Functions returning a span signal
 * failure with .rw == NULL and errno. */
struct code_span {
    void *rw;
    void *rx;
    size_t size;
};

/* Bytes of one veneer (code_chunk_call_target), on every architecture: x86-64
 * jmp [rip+0]; .quad target, padded; aarch64 ldr x16, #8; br x16; .quad target. */
#define CODE_CACHE_VENEER_SIZE 16

/* Flags for code_cache_options.flags. Unknown bits are rejected with EINVAL. */

/* Make the whole cache reach every loadable segment of the shared object or executable that
 * contains .near (found with dladdr and dl_iterate_phdr), not just the one address, so code can
 * call any function and reach any global of that object directly. */
#define CODE_CACHE_NEAR_OBJECT 0x1u

/* The dual-mapped backend: a memory file (memfd_create, else an unlinked file in /dev/shm, else
 * in $TMPDIR) mapped twice. The RX view is the placed region (same placement, reach and guard
 * pages); the RW view lands at a random address, never next to it. The RX view is never
 * writable and the RW view never executable. Granule 64 bytes. The RW view is not inherited by
 * fork(): in a child, sealed code still runs and every call that would write fails with EPERM.
 * (With either backend, fork() waits for every cache's lock, and the child forgets what other
 * threads had under way: stats, free and destroy work there.)
 * Create fails (ENOSYS, EACCES, EMFILE...) when no file yields an executable mapping; it never
 * falls back to rwx or to the other backend. */
#define CODE_CACHE_DUAL_MAP 0x2u

/* With CODE_CACHE_DUAL_MAP: a page of the RW view is made read-only once every granule on it
 * belongs to a SEALED chunk, and writable again before anything is written there (a free's traps,
 * a patch). A stray write through the RW view to finished code then faults instead of changing
 * it. The cost: an mprotect per page filled with sealed code and per page written again (two per
 * patch), each a TLB shootdown in a multi-threaded process, and a mapping per read-only run of
 * pages. Off by default, because it brings back system calls the dual backend exists to avoid;
 * bench/README.md ("Hardening the RW view") has the measured cost. Without it, the RW view's
 * address is kept only in the cache's bookkeeping and in the spans the calls return: never in the
 * code region or in the chunk records, and it is not derived from the code's address. */
#define CODE_CACHE_DUAL_HARDEN 0x4u

/* No thread caches. By default a dual-mapped cache (not with CODE_CACHE_DUAL_HARDEN) lets each
 * thread keep the chunks of up to 2 KiB it frees, trapped, and hand them out again to its own
 * allocations of the same size once 1,024 later frees followed them (the quarantine), without the
 * cache's lock: one function of 64 or 256 B allocated, sealed and freed then costs 1.1-1.4x
 * less than with asmjit's JitAllocator, which keeps no W^X at all, about the same at 1 KiB and
 * 1.0-1.5x less at 1,216 B, a regex JIT's pattern (bench/README.md). code_cache_find reads a
 * chunk's record in such a cache (a kept chunk's lookup words still name it), a second memory
 * access per lookup. A thread keeps 2 MiB per cache (up to 3 MiB where its functions average
 * over 1 KiB); the rest, what it keeps when it exits, and everything when an allocation would
 * fail with ENOSPC or the cache is reset, goes back to the cache. Meanwhile stats count those
 * chunks as free and ready, not as free spans, and their records are reused only by their
 * thread. With this flag every free goes back to the cache at once: the placement, record and
 * quarantine rules of code_cache_alloc and code_chunk_free hold exactly, for every thread. The
 * mprotect backend has no thread caches (its free is a system call anyway). */
#define CODE_CACHE_NO_THREAD_CACHE 0x100u

/* aarch64 with Branch Target Identification (Armv8.5 BTI): the code pages are guarded
 * (PROT_BTI), as a BTI-enabled program's own text is. An indirect branch into the cache must then
 * land on a landing pad: "bti c" (or paciasp/pacibsp) at every entry called through a pointer
 * (blr) or reached with br x16/x17, "bti j" at targets of other br; direct branches (b, bl,
 * b.cond) and returns need none, and the library's veneers are entered with bl. Without this flag
 * the cache's pages are not guarded, so entries need no landing pads even in a BTI process.
 * EINVAL on other architectures, and where the kernel or the CPU has no BTI: the guard is never
 * silently dropped. */
#define CODE_CACHE_BTI 0x8u

/* Tooling (code_chunk_name): the names of a cache's functions are announced to profilers and
 * debuggers as each chunk is sealed (and as functions are named after the seal). The environment
 * can turn the same on for every cache: CODE_CACHE_PERF=map, jitdump or map,jitdump, and
 * CODE_CACHE_GDB=1. A cache without named functions announces nothing and costs nothing. */

/* Append "START SIZE name" lines to /tmp/perf-<pid>.map, the file perf report reads for code in
 * anonymous memory (so not for the dual backend's file mapping: use jitdump there). A line cannot
 * be taken back: once a freed span is reused, perf may give its new code an old name. */
#define CODE_CACHE_PERF_MAP 0x10u

/* Write jit-<pid>.dump ($JITDUMPDIR, else the current directory) for perf inject --jit: a
 * JIT_CODE_LOAD record with the code bytes per function, timestamped with CLOCK_MONOTONIC (record
 * with perf record -k 1). Reused addresses are told apart by time, and perf inject drops the
 * kernel's own records of the cache's mappings: this works with both backends. */
#define CODE_CACHE_PERF_JITDUMP 0x20u

/* Register an in-memory ELF object per sealed chunk with named functions through the GDB JIT
 * interface (__jit_debug_register_code, __jit_debug_descriptor), and unregister it when the chunk
 * is freed or reset, so that gdb's backtraces and `info symbol` name JIT functions. */
#define CODE_CACHE_GDB_JIT 0x40u

/* Options for code_cache_create. All zero means: a 64 MiB cache anywhere, mprotect backend. */
struct code_cache_options {
    size_t size;      /* address space to reserve, rounded up to pages; 0 = 64 MiB */
    const void *near; /* every byte of the cache must reach this address, or NULL */
    size_t reach;     /* 0 = the architecture's direct-branch reach (x86-64 rel32: 2 GiB,
                         aarch64 bl/b imm26: 128 MiB) */
    unsigned flags;   /* CODE_CACHE_NEAR_OBJECT, CODE_CACHE_DUAL_MAP, CODE_CACHE_DUAL_HARDEN,
                         CODE_CACHE_BTI, CODE_CACHE_PERF_MAP, CODE_CACHE_PERF_JITDUMP,
                         CODE_CACHE_GDB_JIT */
};

/* Counters of one cache; a consistent snapshot taken under the cache's lock. */
struct code_cache_stats {
    uintptr_t base;            /* first usable byte of the region, as code runs there (after the
                                  low guard page) */
    size_t reserved;           /* usable bytes of address space (guard pages excluded) */
    size_t granule;            /* allocation unit: the page size (mprotect) or 64 (dual) */
    size_t committed;          /* bytes backed by memory: in_use + committed_ahead + free
                                  granules the dual backend keeps ready (free_ready) */
    size_t in_use;             /* bytes of OPEN and SEALED chunks */
    size_t committed_ahead;    /* never-used bytes above the bump pointer already committed
                                  (mprotect: rw-, zero; dual: r-x, traps), so that allocating
                                  them makes no system call. Grows in steps of 64 KiB to 1 MiB */
    size_t free_ready;         /* dual: freed bytes still committed and filled with traps, handed
                                  out again without a system call; their whole pages are given
                                  back to the system in batches. mprotect: 0 */
    size_t free;               /* bytes that can still be handed out (never used + freed spans) */
    size_t never_used;         /* bytes above the bump pointer, never handed out yet */
    size_t retired;            /* bytes of freed chunks that could not be released (a system call
                                  failed): not reused until the next reset */
    size_t free_spans;         /* freed spans waiting to be reused: maximal runs of free granules
                                  below the bump pointer (chunks kept by thread caches count in
                                  free_ready and free, not here) */
    size_t open_chunks;        /* chunks in state OPEN */
    size_t sealed_chunks;      /* chunks in state SEALED */
    size_t chunks_allocated;   /* total code_cache_alloc successes since creation */
    size_t protection_changes; /* successful mprotect calls made for this cache since creation */
    size_t system_calls;       /* every system call made for this cache since creation
                                  (mmap, mprotect, madvise, fallocate...), placement excluded */
    size_t meta_bytes;         /* bytes of bookkeeping the cache holds in its jemalloc arena */
    size_t meta_resident;      /* bytes of memory the arena really occupies (jemalloc's
                                  stats.arenas.<i>.resident): the fixed cost of a cache, about
                                  100 KiB, is here, not in meta_bytes */
    size_t reach;              /* the reach the cache was placed with, in bytes */
    const void *near;          /* the target the cache was placed near, or NULL */
    const char *backend;       /* "mprotect" or "dual" */
    const char *dual_file;     /* dual: where the shared file came from: "memfd", "/dev/shm" or
                                  "$TMPDIR"; NULL with the mprotect backend */
};

/* Reserves a cache within reach of opts->near (NULL opts: all defaults) and checks, with one
 * cheap probe, that the system allows executable memory. Returns NULL and sets errno: EINVAL
 * (unknown flag, DUAL_HARDEN without DUAL_MAP, BTI where there is no BTI, reach larger than the
 * architecture's, size that cannot fit in the reach window, NEAR_OBJECT without near or with an
 * address in no loaded object), ERANGE (the window, clipped to the user address space, is smaller
 * than size), ENOMEM (no free gap within reach, or no memory for bookkeeping), EACCES (executable
 * memory is denied: SELinux execmem, PaX, seccomp, systemd MemoryDenyWriteExecute; choose an
 * interpreter), or the errno of a failing system call (EPERM, EAGAIN, EMFILE...). */
CODE_CACHE_API struct code_cache *code_cache_create(const struct code_cache_options *opts);

/* Releases the whole region and every chunk, sealed or not. NULL is a no-op. Handles of the
 * cache's chunks are invalid afterwards. The cache's arena goes back to a process-wide pool, so
 * a cache costs its arena's pages (stats.meta_resident) once, not once per create. */
CODE_CACHE_API void code_cache_destroy(struct code_cache *cache);

/* Frees every chunk at once (the "flush the code cache" of LuaJIT and QEMU): their memory becomes
 * inaccessible and is given back; the whole region is reused from its start. Waits for seals,
 * frees and allocations in flight in other threads; a chunk sealed by another thread during the
 * reset gets EPERM. Handles from before are invalid afterwards. Returns 0, or -1 and errno:
 * EINVAL (NULL cache), EPERM (dual-mapped cache in a forked child), or the errno of a failing
 * system call (the cache is unchanged). */
CODE_CACHE_API int code_cache_reset(struct code_cache *cache);

/* True when a direct branch placed anywhere in the cache reaches target, counted the way the
 * instruction counts it (x86-64 rel32: from the end of the instruction; aarch64 bl/b: from the
 * instruction itself), within the reach the cache was created with. False for a NULL cache. */
CODE_CACHE_API bool code_cache_reaches(const struct code_cache *cache, const void *target);

/* Fills *out with a snapshot of the cache's counters. Does nothing when either is NULL. */
CODE_CACHE_API void code_cache_get_stats(const struct code_cache *cache,
                                         struct code_cache_stats *out);

/* The live (OPEN or SEALED) chunk holding addr, which may be an address of either view, or NULL.
 * Lock-free and async-signal-safe: no lock, no allocation, no system call, a constant number of
 * loads. It may be called from a SIGSEGV or SIGILL handler, an unwinder or a profiler while
 * other threads allocate and free; a chunk freed concurrently may or may not be returned, one
 * freed before the call started never is. NULL for a NULL cache. */
CODE_CACHE_API struct code_chunk *code_cache_find(const struct code_cache *cache, const void *addr);

/* Hands out an OPEN chunk of at least size bytes (rounded up to the granule: a page, or 64 bytes
 * with CODE_CACHE_DUAL_MAP). Its content is zero (mprotect) or trap instructions (dual). Never-used
 * space is taken first, so that freed code stays inaccessible or trapped for as long as possible;
 * freed spans (the lowest one that fits) when it runs out, or as soon as 512 freed spans are
 * waiting (each costs mappings, and the mappings of a process are limited: vm.max_map_count).
 * No system call is made while the cache's lock is held. Returns NULL and errno: EINVAL (NULL
 * cache, size 0), ENOSPC (no span of that size left: free or reset), ENOMEM (no memory to commit,
 * or for bookkeeping), EPERM (dual-mapped cache in a forked child), or the errno of a failing
 * system call. */
CODE_CACHE_API struct code_chunk *code_cache_alloc(struct code_cache *cache, size_t size);

/* The whole span of a chunk: every byte of it, whether claimed by a function or not. Only what is
 * claimed (code_chunk_alloc, code_chunk_commit) or holds a veneer survives code_chunk_seal, which
 * fills every other byte with traps: write code through a span of code_chunk_alloc or
 * code_chunk_reserve, not through this one. .rw is NULL after free and for a NULL chunk. */
CODE_CACHE_API struct code_span code_chunk_span(const struct code_chunk *chunk);

/* Allocates size bytes aligned to align (a power of two, at most a page; 0 means 1) inside an
 * OPEN chunk, by bumping a pointer: no system call, no lock. The alignment padding is unclaimed
 * (trapped at seal). Returns a span, or one with .rw NULL and errno: EINVAL (NULL chunk, size 0,
 * bad align), EPERM (chunk not OPEN), EBUSY (a reservation is outstanding), ENOSPC (full). */
CODE_CACHE_API struct code_span code_chunk_alloc(struct code_chunk *chunk, size_t size,
                                                 size_t align);

/* Reserves all the room left in an OPEN chunk, from the next byte aligned to align (as in
 * code_chunk_alloc) up to the lowest veneer, for code whose size is known only once written (the
 * final addresses are known from the start). Nothing is claimed until code_chunk_commit; calling
 * reserve again replaces the reservation. Veneers grow down from the chunk's top: a
 * code_chunk_call_target made during the reservation may take CODE_CACHE_VENEER_SIZE bytes off its
 * end, and says where it did; the order that always works is to ask for every veneer first, then
 * reserve. Returns the span, or one with .rw NULL and errno: EINVAL (NULL chunk, bad align), EPERM
 * (chunk not OPEN), ENOSPC (no byte left). */
CODE_CACHE_API struct code_span code_chunk_reserve(struct code_chunk *chunk, size_t align);

/* Claims the first used bytes of the outstanding reservation (0 claims nothing) and ends it; the
 * rest stays available to code_chunk_alloc, the next reservation and veneers. Returns 0, or -1 and
 * errno: EINVAL (NULL chunk, used larger than the reservation), EPERM (chunk not OPEN, or no
 * reservation), ENOSPC (the used bytes reach into a veneer placed during the reservation: the
 * code overwrote it; the reservation stays outstanding). */
CODE_CACHE_API int code_chunk_commit(struct code_chunk *chunk, size_t used);

/* Makes an OPEN chunk runnable: fills every byte no function or veneer claimed with trap
 * instructions (alignment padding included), then (mprotect) makes the chunk read+exec with one
 * mprotect, or (dual) makes no system call; flushes the instruction cache and valgrind's
 * translations. Returns 0, or -1 and errno: EINVAL (NULL chunk), EBUSY (already sealed, or a
 * reservation is outstanding), EPERM (freed, by code_chunk_free or a reset; or a dual-mapped cache
 * in a forked child), EACCES (the system refused executable memory, as SELinux execmem does: the
 * chunk stays OPEN), or the errno of a failing mprotect (the chunk stays OPEN). */
CODE_CACHE_API int code_chunk_seal(struct code_chunk *chunk);

/* Rewrites len bytes of a SEALED chunk at rx (its run address) with bytes, through the RW view,
 * and flushes the instruction cache: the way JITs patch call targets and inline caches. When
 * [rx, rx + len) lies inside one aligned 8-byte word, the write is a single atomic store: a
 * thread running that code sees the old or the new bytes, never a mix. Longer patches are not
 * atomic: the caller makes sure no thread runs them meanwhile (or patches a jump to new code last).
 * Returns 0, or -1 and errno: EINVAL (NULL chunk or bytes, len 0, range outside the chunk),
 * EPERM (chunk not SEALED; or a dual-mapped cache in a forked child), ENOTSUP (mprotect backend:
 * a page that other threads may be running cannot be made writable without stopping them). */
CODE_CACHE_API int code_chunk_patch(struct code_chunk *chunk, void *rx, const void *bytes,
                                    size_t len);

/* Frees a chunk in any state: its memory becomes inaccessible (mprotect: ---, memory given back)
 * or is filled with traps (dual: given back in batches of whole pages), so a stale call faults.
 * The span is reused once never-used space runs out, or earlier when many freed spans are waiting
 * (see code_cache_alloc). NULL is a no-op. Freeing a chunk twice, or after code_cache_reset,
 * aborts the process with a message on standard error. This is detected as long as the chunk's
 * record has not been reused for a new chunk: records of freed chunks are reused oldest first,
 * and only once more than 64 are waiting. The records of a cache (56 bytes each) are kept for
 * reuse until it is destroyed: their memory is that of the most chunks alive at once, plus 64.
 * Dual backend: a chunk of up to 2 KiB with no veneers and no names is kept, trapped and with its
 * record, by the freeing thread, for its own allocations (CODE_CACHE_NO_THREAD_CACHE). */
CODE_CACHE_API void code_chunk_free(struct code_chunk *chunk);

/* Where code in this chunk should branch to reach target: target itself when a direct branch
 * placed anywhere in the chunk reaches it, else a veneer (an indirect jump stub of
 * CODE_CACHE_VENEER_SIZE bytes) placed at the top of the chunk's free room and shared by every
 * call to the same target; whatever is returned is reachable by a direct branch from every byte
 * of the chunk. Veneers are created only while the chunk is OPEN. Returns NULL and errno: EINVAL
 * (NULL chunk or target), EPERM (a veneer is needed but the chunk is not OPEN), ENOSPC (no room
 * for the veneer), ERANGE (the chunk is larger than the reach, so no veneer position is reachable
 * from all of it: use smaller chunks), ENOMEM (no memory for bookkeeping). */
CODE_CACHE_API const void *code_chunk_call_target(struct code_chunk *chunk, const void *target);

/* Longest name code_chunk_name accepts, in bytes, its terminating NUL included. */
#define CODE_CACHE_NAME_MAX 4096

/* Names the function at [rx, rx + size) of an OPEN or SEALED chunk (rx: where it runs). The name
 * is copied into the cache's bookkeeping and freed with the chunk. Profilers and debuggers learn
 * it when the chunk is sealed, or at once for a SEALED chunk (CODE_CACHE_PERF_MAP and friends).
 * Name each function once: overlapping names are kept, the newest wins. Any thread may name a
 * SEALED chunk. Returns 0, or -1 and errno: EINVAL (NULL chunk or name, size 0, range outside the
 * chunk, empty name or one containing a newline), ENAMETOOLONG (CODE_CACHE_NAME_MAX bytes or
 * more), EPERM (chunk not OPEN or SEALED: freed, or being sealed or freed), ENOMEM. */
CODE_CACHE_API int code_chunk_name(struct code_chunk *chunk, const void *rx, size_t size,
                                   const char *name);

/* The name of the function of chunk that holds addr (an address of either view), or NULL; sets
 * *start (its first byte, where it runs) and *size when they are not NULL. For crash reports:
 * lock-free and async-signal-safe (no lock, no allocation, no system call, errno untouched), so it
 * may follow code_cache_find in a signal handler while other threads allocate, seal and name;
 * but not while another thread frees the chunk or resets its cache, which frees its names. */
CODE_CACHE_API const char *code_chunk_name_at(const struct code_chunk *chunk, const void *addr,
                                              const void **start, size_t *size);

#ifdef __cplusplus
}
#endif

#endif /* CODE_CACHE_H */
