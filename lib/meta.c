/*
 * The bookkeeping of a cache lives in a jemalloc arena of its own, never inside the code region,
 * and only jemalloc's non-standard API is used, so a program linking the library keeps its own
 * malloc.
 *
 * Arenas come from a small process-wide pool. Destroying an arena (arena.<i>.destroy) leaves about
 * 2 MiB of address space mapped with Debian's jemalloc (opt.retain is on; FACTS.md), and that
 * space lands in the very windows near placement needs. So a closed cache empties its arena in
 * one call (arena.<i>.reset) and returns it to the pool; arenas.create runs only when the pool is
 * empty, which bounds the number of arenas by the largest number of caches alive at once.
 *
 * memcheck does not see mallocx, so every block is announced to it as if it came from malloc: a
 * record that is leaked, read uninitialised or used after free is then reported like any heap
 * block. The announcements cost nothing outside valgrind.
 */
#include <errno.h>
#include <jemalloc/jemalloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <valgrind/valgrind.h>

#include "debug.h"
#include "meta.h"

/* MALLOCX_ARENA encodes indexes below 4095, so no process can have more arenas than this: the
 * pool array never overflows and needs no allocation of its own. */
#define META_MAX_ARENAS 4096

static pthread_mutex_t meta_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned meta_pool[META_MAX_ARENAS];
static size_t meta_pool_count;

/* No thread cache: a cached block would outlive arena.<i>.reset, and jemalloc's statistics would
 * not count blocks sitting in a cache, which would blur the leak check built on them. */
static int meta_flags(const struct meta *m)
{
    return MALLOCX_ARENA(m->arena) | MALLOCX_TCACHE_NONE;
}

int meta_open(struct meta *m)
{
    unsigned arena;
    pthread_mutex_lock(&meta_pool_lock);
    if (meta_pool_count > 0) {
        arena = meta_pool[--meta_pool_count];
    } else {
        size_t len = sizeof arena;
        if (mallctl("arenas.create", &arena, &len, NULL, 0) != 0 || arena >= META_MAX_ARENAS) {
            pthread_mutex_unlock(&meta_pool_lock);
            debug_log("meta: jemalloc could not create an arena");
            errno = ENOMEM;
            return -1;
        }
    }
    pthread_mutex_unlock(&meta_pool_lock);
    m->arena = arena;
    m->bytes = 0;
    return 0;
}

/* The pool's lock is taken last before fork() (no other lock of ours is taken under it), and
 * jemalloc's own handlers must run after ours: meta_open takes jemalloc's locks under this one, and
 * a fork that took them first would wait for it forever. Prepare handlers run in the reverse order
 * of their registration, and jemalloc registers its at its first call, which the jemalloc that
 * replaces malloc has made long before, but a private one (--with-private-jemalloc) makes only
 * when asked: so ask it something. */
void meta_init_allocator(void)
{
    unsigned narenas;
    size_t len = sizeof narenas;
    (void)mallctl("arenas.narenas", &narenas, &len, NULL, 0);
}

void meta_prefork(void)
{
    pthread_mutex_lock(&meta_pool_lock);
}

void meta_postfork(void)
{
    pthread_mutex_unlock(&meta_pool_lock);
}

void meta_close(struct meta *m)
{
    char name[64];
    snprintf(name, sizeof name, "arena.%u.reset", m->arena);
    /* Reset discards whatever is still allocated, so a cache that forgot a record does not leak
     * it into the next user of the arena (memcheck still reports the forgotten record). */
    if (mallctl(name, NULL, NULL, NULL, 0) != 0) {
        /* An arena that cannot be emptied must not be handed to another cache: keep it out of the
         * pool. This costs one arena, never correctness. */
        debug_log("meta: %s failed; arena %u is not reused", name, m->arena);
        return;
    }
    pthread_mutex_lock(&meta_pool_lock);
    meta_pool[meta_pool_count++] = m->arena;
    pthread_mutex_unlock(&meta_pool_lock);
    m->bytes = 0;
}

/*
 * The block is zeroed here rather than with MALLOCX_ZERO: jemalloc zeroes a recycled block with
 * memset before returning it, and memcheck, which was told the old block was freed, would report
 * that memset as an invalid write. Announcing first and then zeroing keeps memcheck exact.
 */
void *meta_alloc(struct meta *m, size_t size)
{
    if (size == 0)
        size = 1;
    void *p = mallocx(size, meta_flags(m));
    if (p == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    VALGRIND_MALLOCLIKE_BLOCK(p, size, 0, 0);
    memset(p, 0, size);
    __atomic_fetch_add(&m->bytes, sallocx(p, 0), __ATOMIC_RELAXED);
    return p;
}

/*
 * jemalloc zeroes with MALLOCX_ZERO only what it does not know to be zero (fresh pages from the
 * system are), so a large table's untouched pages cost no memory: with 100,000 live functions the
 * record and granule tables, allocated in doubling slabs, would otherwise hold up to twice the
 * memory they use. Under valgrind the memset of meta_alloc is kept (see there).
 */
void *meta_alloc_lazy(struct meta *m, size_t size)
{
    if (RUNNING_ON_VALGRIND)
        return meta_alloc(m, size);
    void *p = mallocx(size, meta_flags(m) | MALLOCX_ZERO);
    if (p == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    __atomic_fetch_add(&m->bytes, sallocx(p, 0), __ATOMIC_RELAXED);
    return p;
}

/*
 * Grows in place when jemalloc can (xallocx), else allocates, copies and frees. rallocx is not
 * used: its copy writes into memory that memcheck knows as freed (see meta_alloc). The bytes
 * between old_size and new_size are zeroed, like meta_alloc's.
 */
void *meta_grow(struct meta *m, void *p, size_t old_size, size_t new_size)
{
    if (p == NULL)
        return meta_alloc(m, new_size);
    if (new_size <= old_size)
        return p;
    size_t old_usable = sallocx(p, 0);
    size_t usable = xallocx(p, new_size, 0, meta_flags(m));
    if (usable >= new_size) {
        VALGRIND_RESIZEINPLACE_BLOCK(p, old_size, new_size, 0);
        memset((char *)p + old_size, 0, new_size - old_size);
        __atomic_fetch_add(&m->bytes, usable - old_usable, __ATOMIC_RELAXED);
        return p;
    }
    void *q = meta_alloc(m, new_size);
    if (q == NULL)
        return NULL;
    memcpy(q, p, old_size);
    meta_free(m, p, old_size);
    return q;
}

void meta_free(struct meta *m, void *p, size_t size)
{
    (void)size;
    if (p == NULL)
        return;
    __atomic_fetch_sub(&m->bytes, sallocx(p, 0), __ATOMIC_RELAXED);
    dallocx(p, MALLOCX_TCACHE_NONE);
    VALGRIND_FREELIKE_BLOCK(p, 0);
}

/* jemalloc's statistics are a snapshot refreshed by writing the epoch. */
static bool meta_refresh_stats(void)
{
    uint64_t epoch = 1;
    size_t len = sizeof epoch;
    return mallctl("epoch", &epoch, &len, &epoch, len) == 0;
}

size_t meta_arena_allocated(const struct meta *m)
{
    if (!meta_refresh_stats())
        return 0;
    size_t len, total = 0;
    static const char *const kinds[] = {"small", "large"};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        char name[64];
        size_t value = 0;
        len = sizeof value;
        snprintf(name, sizeof name, "stats.arenas.%u.%s.allocated", m->arena, kinds[i]);
        if (mallctl(name, &value, &len, NULL, 0) == 0)
            total += value;
    }
    return total;
}

size_t meta_arena_resident(const struct meta *m)
{
    if (!meta_refresh_stats())
        return 0;
    char name[64];
    size_t value = 0, len = sizeof value;
    snprintf(name, sizeof name, "stats.arenas.%u.resident", m->arena);
    return mallctl(name, &value, &len, NULL, 0) == 0 ? value : 0;
}
