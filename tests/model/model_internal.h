/*
 * What model.c (the operations and their predicted results) and check.c (the checks of the whole
 * state after every call) share: the model's picture of each cache, chunk and stale handle.
 */
#ifndef CODE_CACHE_TEST_MODEL_INTERNAL_H
#define CODE_CACHE_TEST_MODEL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "code_cache.h"
#include "model.h"

#define MODEL_SLOTS       2
#define MODEL_MAX_CHUNKS  192 /* live chunks per cache */
#define MODEL_MAX_FNS     24  /* functions per chunk */
#define MODEL_MAX_VEN     12  /* veneers per chunk */
#define MODEL_MAX_STALE   96
#define MODEL_MAX_RETIRED 64
/* Records of freed chunks are reused oldest first once more than this many wait (code_cache.h,
 * code_chunk_free): a stale handle is only used while its record surely still waits. */
#define MODEL_QUARANTINE 64
/* Freed spans waiting before code_cache_alloc reuses them first (code_cache.h). */
#define MODEL_QUARANTINE_HOLES 512
/* Freed bytes still committed from which allocations are served first (CACHE_READY_QUARANTINE). */
#define MODEL_READY_QUARANTINE ((size_t)1 << 20)
/* Thread caches (lib/tcache.c): chunks of up to 2 KiB are kept by the thread that frees them,
 * handed out again to it once 1,024 more of its frees followed, and given back to the index
 * beyond 2 MiB kept (the oldest past their quarantine, down to 1 MiB; where the quarantine holds
 * more, the next flush waits for 1 MiB more kept). */
#define MODEL_TCACHE_CHUNK_MAX  ((size_t)2048)
#define MODEL_TCACHE_QUARANTINE 1024u
#define MODEL_TCACHE_MAX        ((size_t)2 << 20)

#define TRAP 0xcc /* x86-64 int3 */

enum mfn_kind { FN_RETURN, FN_CALL };

/* A function the model wrote: it must return value (FN_RETURN) or callee(arg) (FN_CALL). */
struct mfn {
    uint32_t off, len;
    enum mfn_kind kind;
    int value;
    int arg;
    int (*callee)(int);
};

struct mveneer {
    const void *target;
    uint32_t off;
};

enum mstate { MS_OPEN, MS_SEALED };

#define MODEL_MAX_NAMES 8 /* names per chunk */

/* A name given with code_chunk_name (the newest covering an address wins). */
struct mname {
    uint32_t off, size;
    char text[40];  /* the name, or its start for the longest one */
    bool long_name; /* CODE_CACHE_NAME_MAX - 1 bytes of 'n' */
};

struct mcache;

struct mchunk {
    struct code_chunk *h;
    struct mcache *cache;
    enum mstate state;
    size_t off, size;      /* from the cache's base, bytes */
    uint32_t used;         /* claimed from the low end */
    uint32_t floor;        /* veneers occupy [floor, size) */
    bool reserving;        /* a reservation is outstanding */
    uint32_t res_off;      /* its first byte */
    uint32_t res_size;     /* its size when it was made */
    unsigned char *shadow; /* what every byte of the chunk must hold */
    bool touched;          /* compare with the shadow at the next check */
    struct mfn fn[MODEL_MAX_FNS];
    unsigned nfn;
    struct mveneer ven[MODEL_MAX_VEN];
    unsigned nven;
    struct mname names[MODEL_MAX_NAMES];
    unsigned nnames;
    bool named; /* code_chunk_name got past its checks (the chunk has a name table) */
};

/* A handle of a freed (or reset) chunk whose record still waits in the library's quarantine. */
struct mstale {
    struct code_chunk *h;
    struct mcache *cache;
    size_t off, size;
    size_t ahead;     /* records surely ahead of it in the FIFO when it joined */
    uint64_t pops_at; /* the cache's pops then */
    bool kept;        /* kept by the thread cache: its record is in no FIFO of the cache */
};

/* A chunk the model's thread freed into its thread cache: its record and span wait there. */
struct mkept {
    struct code_chunk *h;
    size_t off, size;
    uint32_t stamp; /* the thread's kept frees before it */
};

struct mspan {
    size_t off, size;
};

struct mcache {
    struct code_cache *h;
    bool dual, harden;
    size_t reserved, granule, page;
    uintptr_t base;
    uintptr_t rw_base; /* dual: the RW view's first usable byte, once known */
    bool rw_known;
    uint64_t inode; /* dual: the shared file, once known */
    size_t reach;
    const void *near;
    uintptr_t tlo, thi; /* what every byte must reach: [near, near + 1), or the object */
    bool has_target;

    struct mchunk *chunk[MODEL_MAX_CHUNKS];
    unsigned nchunks;
    size_t bump;      /* bytes ever handed out from the low end since create or reset */
    size_t allocated; /* chunks_allocated */
    size_t fifo_count;
    uint64_t pops;
    struct mspan retired[MODEL_MAX_RETIRED];
    unsigned nretired;
    /* Some retired bytes lie where the model cannot tell (an injected failure while a freed span
     * was being committed again): exact placement and accounting are off until a reset. */
    bool tainted;
    bool content_due; /* check ready and ahead memory at the next check */
    /* CODE_CACHE_DUAL_HARDEN: an injected mprotect failure may have left a full page writable. */
    bool harden_lost;

    /* The thread cache of the model's one thread, when the cache has thread caches: kept
     * chunks in the order they were freed (each size's FIFO is its entries in that order). */
    bool tcache;
    struct mkept *kept;
    unsigned nkept, kept_cap;
    size_t kept_bytes;
    size_t kept_flush_above; /* 0: MODEL_TCACHE_MAX */
    uint32_t kept_frees;
};

struct model {
    struct model_config cfg;
    struct mcache cache[MODEL_SLOTS];
    bool live[MODEL_SLOTS];
    struct mstale stale[MODEL_MAX_STALE];
    unsigned nstale;
    uint64_t calls;
    size_t fds_at_start, jemalloc_at_start;
    int (*far)(int); /* a function of ours out of every cache's reach */
    bool valgrind;
    bool fault_now; /* an injected failure happened during the current operation */
    struct model_tcache_counts tcache;
    char trace[16][160];
    unsigned ntrace;
};

/* model.c */
void model_fail(struct model *m, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
void model_trace(struct model *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The direct-branch reach rule, from the instruction: a call rel32 anywhere in [lo, hi) (5 bytes,
 * displacement counted from its end) reaches t with reach r. */
bool model_reaches(uintptr_t lo, uintptr_t hi, uintptr_t t, size_t r);
/* The newest name of ch covering the chunk offset off, or NULL. */
const struct mname *model_name_at(const struct mchunk *ch, size_t off);
/* Calls every function of a sealed chunk and compares what it returns. */
void model_run_chunk(struct model *m, struct mchunk *ch);
/* The live chunk holding the cache offset off, or NULL. */
struct mchunk *model_owner(struct mcache *c, size_t off);

/* The number of freed spans the library should count (stats.free_spans). */
size_t model_holes(struct mcache *c);
/* True when the cache offset off lies in a span a failed free retired. */
bool model_retired_span(const struct mcache *c, size_t off);

/* records.c */
/* A handle whose record now waits: in the FIFO of freed records, or kept by the thread cache. */
void model_stale_add(struct model *m, struct mcache *c, struct code_chunk *h, size_t off,
                     size_t size, bool kept);
void model_stale_drop_cache(struct model *m, const struct mcache *c);
/* Drops the handles whose record may have been reused: only those are documented misuse. */
void model_stale_prune(struct model *m);
/* Whether thread caches work in this process (asked of the library once). */
bool model_tcache_works(void);
/* The kept chunk holding the cache offset off, or NULL. */
const struct mkept *model_kept_at(const struct mcache *c, size_t off);
/* The kept chunk code_cache_alloc of n bytes takes back without the lock, or NULL. */
const struct mkept *model_kept_due(const struct mcache *c, size_t n);
void model_kept_remove(struct mcache *c, unsigned i);
/* Every kept chunk back to the index (no room for an allocation; a reset), counted. */
void model_kept_give_back_all(struct model *m, struct mcache *c, uint64_t *counted);
/* The chunk h at [off, +size) was freed: kept by the thread cache when it may be (keepable: no
 * veneers, no names), else its record joins the FIFO of freed records. */
void model_freed_record(struct model *m, struct mcache *c, struct code_chunk *h, size_t off,
                        size_t size, bool keepable);
/* code_cache_alloc returned h at off: true when it was a kept chunk (see records.c). */
bool model_alloc_record(struct model *m, struct mcache *c, struct code_chunk *h, size_t off,
                        bool from_fifo);
void model_kept_forget(struct mcache *c); /* the cache is destroyed */

/* check.c */
void check_all(struct model *m);
void check_chunk_content(struct model *m, struct mchunk *ch);
void check_destroyed(struct model *m, uintptr_t lo, uintptr_t hi, const char *what);
/* dual: finds the RW view of a cache just created, in the map. */
void check_find_rw_view(struct model *m, struct mcache *c);

#endif
