/*
 * What the files of lib/ share. Nothing here is exported: the library is built with
 * -fvisibility=hidden and only the CODE_CACHE_API functions of <code_cache.h> are visible.
 *
 * Layers, bottom up (DESIGN.md): os.c (system calls) < arch/ (instruction set) < meta.c (jemalloc
 * arena) < maps.c (address-space map) < place.c (placement) < wx.c (W^X backend) < spans.c (free
 * span index) < cache.c, chunk.c (the public API).
 */
#ifndef CODE_CACHE_INTERNAL_H
#define CODE_CACHE_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "code_cache.h"

#define CACHE_DEFAULT_SIZE ((size_t)64 << 20)
/* The largest cache: its pages, at least 4 KiB each, are numbered with 32 bits. */
#define CACHE_MAX_SIZE ((size_t)1 << 40)
_Static_assert((CACHE_MAX_SIZE >> 12) <= UINT32_MAX, "page indices of a cache fit in 32 bits");

/*
 * How many freed spans (maximal runs of free pages below the bump pointer) may wait in quarantine
 * before code_cache_alloc reuses them ahead of never-used space. Every such hole between
 * accessible chunks costs the process up to two mappings (the hole itself, and the split of the
 * chunks around it), counted against the process-wide vm.max_map_count (65530 by default) that
 * every other mmap of the program shares; unbounded, page-sized churn in a large cache reaches it
 * (bench/churn: within 60,000 random frees), and then mprotect fails with ENOMEM. Under valgrind
 * 3.19 the limit is lower still: it aborts at about 30,000 mappings (VG_N_SEGMENTS, measured).
 * 512 holes cost at most 1024 mappings, small next to either limit and to what the program itself
 * maps, while still keeping hundreds of freed spans inaccessible between reuses.
 */
#define CACHE_QUARANTINE_HOLES 512

/* ---- os.c: every system call that touches the address space, so that tests can interpose
 * on exactly these libc functions (mmap, munmap, mprotect, madvise). ---- */

extern size_t os_page_size; /* set by os_init */
void os_init(void);         /* idempotent, thread-safe */

/* Reserves len bytes of PROT_NONE, MAP_NORESERVE address space at hint. With noreplace the
 * kernel is asked for MAP_FIXED_NOREPLACE; the caller must still compare the returned address
 * (kernels before 4.17, valgrind and emulators treat the flag as a hint). NULL + errno on
 * failure. */
void *os_reserve(void *hint, size_t len, bool noreplace);
int os_release(void *addr, size_t len);           /* munmap: 0 or -1 + errno */
int os_protect(void *addr, size_t len, int prot); /* mprotect: 0 or -1 + errno */
int os_discard(void *addr, size_t len);           /* madvise(MADV_DONTNEED): 0 or -1 + errno */
/* Takes the first-write faults of [addr, addr+len) in one call (MADV_POPULATE_WRITE, Linux 5.14).
 * Returns 0, or -1 + errno; EINVAL means the kernel does not know the advice (harmless). */
int os_populate(void *addr, size_t len);

static inline uintptr_t align_up(uintptr_t x, uintptr_t a)
{
    return (x + a - 1) & ~(a - 1);
}
static inline uintptr_t align_down(uintptr_t x, uintptr_t a)
{
    return x & ~(a - 1);
}

/* ---- debug.c: CODE_CACHE_DEBUG=1 explanations on stderr. ---- */

bool debug_enabled(void);
void debug_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- arch/<arch>.c: the instruction set. ---- */

extern const size_t arch_default_reach;    /* direct call reach: x86-64 rel32 = 2 GiB */
extern const uintptr_t arch_user_top;      /* first address above the user address space */
extern const size_t arch_veneer_size;      /* bytes of one veneer, a multiple of its alignment */
void arch_fill_trap(void *rw, size_t len); /* len bytes of trapping instructions */
/* Writes at rw a veneer that, run at rx, jumps to target from anywhere. */
void arch_write_veneer(void *rw, const void *rx, const void *target);
void arch_flush_icache(void *rx, size_t len);

/* True when a direct branch from every byte of [lo, hi) reaches every byte of [tlo, thi)
 * with the given reach: every displacement d = t - x must satisfy -reach <= d <= reach - 1.
 * No arithmetic here can wrap. */
bool reach_covers(uintptr_t lo, uintptr_t hi, uintptr_t tlo, uintptr_t thi, size_t reach);

/* ---- meta.c: the private jemalloc arena of a cache. ---- */

struct meta {
    unsigned arena; /* jemalloc arena index, from the process-wide pool */
    size_t bytes;   /* usable bytes currently allocated through this meta */
};

int meta_open(struct meta *m); /* 0, or -1 + errno (ENOMEM) */
void meta_close(struct meta *m);
void *meta_alloc(struct meta *m, size_t size); /* zeroed; NULL + ENOMEM */
void *meta_grow(struct meta *m, void *p, size_t old_size, size_t new_size); /* NULL + ENOMEM,
                                                                               p kept */
void meta_free(struct meta *m, void *p, size_t size);
/* Bytes jemalloc reports allocated in the arena (small + large), read through mallctl. */
size_t meta_arena_allocated(const struct meta *m);

/* ---- maps.c: the process address-space map, streamed once through a fixed buffer with bulk
 * read(2)s, gap by gap. ---- */

struct maps {
    struct meta *meta;
    int fd;
    char *buf;          /* MAPS_BUFFER bytes from the cache's arena */
    size_t pos, len;    /* the text not parsed yet: buf[pos, len) */
    bool eof;           /* read(2) returned 0 */
    int error;          /* errno of a failed read, or 0 */
    size_t count;       /* mappings parsed so far */
    uintptr_t prev_end; /* end of the previous mapping */
    bool done;          /* the last gap was returned */
};

int maps_open(struct maps *maps, struct meta *meta); /* 0, or -1 + errno */
/* The next gap, in increasing address order, between mappings: [*start, *end), including the
 * gap below the first mapping (from 0) and above the last one (to arch_user_top). False at the
 * end, or when a read fails (maps->error then holds its errno). A caller may stop early: what
 * the kernel has not printed yet is never read. */
bool maps_next_gap(struct maps *maps, uintptr_t *start, uintptr_t *end);
void maps_close(struct maps *maps);

/* ---- place.c: choosing and claiming the region. ---- */

struct place_request {
    uintptr_t target_lo, target_hi; /* [lo, hi) every byte of the region must reach; hi == lo:
                                       no target (anywhere) */
    size_t reach;
    size_t size; /* whole reservation, guard pages included, page multiple */
};

/* Reserves size bytes of PROT_NONE address space, verified to reach the targets. Returns the
 * base, or NULL + errno (EINVAL, ERANGE, ENOMEM, or mmap's). */
void *place_reserve(const struct place_request *req, struct meta *meta);

/* ---- wx.c: the W^X backend (mprotect: one view, rw == rx). ---- */

int wx_commit(struct code_cache *cache, uintptr_t addr, size_t len, bool dirty);
int wx_seal(struct code_cache *cache, uintptr_t addr, size_t len);
int wx_decommit(struct code_cache *cache, uintptr_t addr, size_t len, bool *released);

/* ---- The cache and its chunks (cache.c, chunk.c, spans.c). ---- */

enum chunk_state { CHUNK_OPEN = 1, CHUNK_SEALED = 2, CHUNK_FREED = 3 };

struct veneers; /* chunk.c */

/*
 * One record per chunk, 48 bytes: jemalloc's 48-byte size class, where 56 bytes would be rounded
 * up to 64. The chunk's place is a page index rather than an address: a cache has at most
 * CACHE_MAX_SIZE / 4 KiB = 2^28 pages. A chunk is smaller than 4 GiB (its byte offsets are 32-bit),
 * hence fewer than 2^20 pages: 28 bits of length leave 4 for the state.
 */
struct code_chunk {
    struct code_cache *cache;
    uint32_t first;        /* first page, numbered from cache->base */
    uint32_t pages : 28;   /* length in pages */
    uint32_t state : 4;    /* enum chunk_state */
    uint32_t used;         /* bytes bumped from the low end */
    uint32_t veneer_floor; /* veneers occupy [veneer_floor, size) */
    struct veneers *veneers;
    struct code_chunk *prev, *next; /* the cache's live list, or its recycled FIFO */
};

struct spans {
    uint64_t *free_bits;  /* one bit per page below the bump pointer: 1 = free */
    uint64_t *dirty_bits; /* 1 = freed page whose memory could not be discarded */
    size_t words;         /* length of both bitmaps */
    size_t max_words;     /* enough words for every page of the cache */
    size_t hint;          /* no free bit below word hint */
    size_t holes;         /* maximal runs of free pages: the freed spans */
};

struct code_cache {
    pthread_mutex_t lock;
    struct meta meta;
    uintptr_t map_base; /* the whole reservation, guard pages included */
    size_t map_size;
    uintptr_t base; /* usable region: [base, base + npages * page) */
    size_t npages;
    size_t bump; /* pages handed out from the low end at least once */
    uintptr_t target_lo, target_hi;
    size_t reach;
    const void *near;
    struct spans spans;
    struct code_chunk *live;          /* OPEN and SEALED chunks */
    struct code_chunk *recycled_head; /* FREED records, reused oldest first */
    struct code_chunk *recycled_tail;
    size_t recycled_count;
    size_t free_pages, retired_pages, open_chunks, sealed_chunks;
    size_t chunks_allocated;
    size_t protection_changes; /* updated atomically: seal runs without the lock */
};

/* The first byte of a chunk (rw == rx in the mprotect backend). */
static inline uintptr_t chunk_base(const struct code_chunk *chunk)
{
    return chunk->cache->base + (uintptr_t)chunk->first * os_page_size;
}

/* spans.c: the free-span index, a bitmap over the pages below the bump pointer, grown as the
 * bump pointer advances (memory proportional to the part of the cache ever used). Pages are
 * numbered from cache->base. The caller holds the cache's lock. */
int spans_init(struct spans *s, struct meta *m, size_t npages); /* 0, or -1 + ENOMEM */
void spans_release(struct spans *s, struct meta *m);
/* Makes room for pages [0, npages), before the bump pointer passes them: 0, or -1 + ENOMEM. */
int spans_reserve(struct spans *s, struct meta *m, size_t npages);
/* The first page of the lowest run of n free pages (address-ordered first fit), or SIZE_MAX. */
size_t spans_find(struct spans *s, size_t n);
/* Marks [first, first + n), in use until now, free; dirty when its memory could not be
 * discarded. */
void spans_put(struct spans *s, size_t first, size_t n, bool dirty);
/* Marks [first, first + n), free until now, in use (and no longer dirty: the caller discarded
 * it). */
void spans_take(struct spans *s, size_t first, size_t n);
bool spans_dirty(const struct spans *s, size_t first, size_t n); /* any page of the run dirty */
void spans_clear(struct spans *s);                               /* nothing free, nothing dirty */
/* The number of freed spans: maximal runs of free pages below the bump pointer. Kept up to date
 * by spans_put, spans_take and spans_clear at no extra search. */
static inline size_t spans_holes(const struct spans *s)
{
    return s->holes;
}

/* chunk.c: chunk records. A record comes from the head of the recycled FIFO (oldest freed
 * first, so a freed handle stays recognisable as long as possible) or from the arena. The caller
 * holds the cache's lock. */
struct code_chunk *chunks_record(struct code_cache *cache); /* not yet linked; NULL + ENOMEM */
void chunks_adopt(struct code_cache *cache, struct code_chunk *chunk);  /* record -> live list */
void chunks_unused(struct code_cache *cache, struct code_chunk *chunk); /* undo chunks_record */
void chunks_free_all(struct code_cache *cache);    /* every live chunk -> FREED (reset) */
void chunks_release_all(struct code_cache *cache); /* frees every record, live and recycled */

#endif /* CODE_CACHE_INTERNAL_H */
