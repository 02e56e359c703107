/* meta.c: the private jemalloc arena of a cache. */
#ifndef CODE_CACHE_META_H
#define CODE_CACHE_META_H

#include <stddef.h>

struct meta {
    unsigned arena; /* jemalloc arena index, from the process-wide pool */
    size_t bytes;   /* usable bytes currently allocated through this meta */
};

int meta_open(struct meta *m); /* 0, or -1 + errno (ENOMEM) */
void meta_close(struct meta *m);
/* cache.c, around fork(): the pool's lock is held across it, so that the child finds it free.
 * meta_init_allocator first, once, before the handlers are registered: jemalloc registers its own
 * at its first call, and they must run after ours (see meta.c). */
void meta_init_allocator(void);
void meta_prefork(void);
void meta_postfork(void);
void *meta_alloc(struct meta *m, size_t size); /* zeroed; NULL + ENOMEM */
/* The same for a large block that is touched gradually (the slabs of a table): pages never
 * touched stay unbacked where jemalloc knows them to be zero already. */
void *meta_alloc_lazy(struct meta *m, size_t size);
/* NULL + ENOMEM, p kept. */
void *meta_grow(struct meta *m, void *p, size_t old_size, size_t new_size);
void meta_free(struct meta *m, void *p, size_t size);
/* Bytes jemalloc reports allocated in the arena (small + large), read through mallctl. */
size_t meta_arena_allocated(const struct meta *m);
/* Bytes of memory the arena occupies (stats.arenas.<i>.resident), read through mallctl. */
size_t meta_arena_resident(const struct meta *m);

#endif
