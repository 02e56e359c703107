/*
 * table.c: an array that grows without ever moving its elements, so that a reader may index it
 * with no lock while the owner (under the cache's lock) grows it: the chunk records, and the
 * granule -> chunk index that code_cache_find reads from signal handlers.
 *
 * Slab k holds base << k elements, so 40 slab pointers, fixed in the table itself, cover any
 * size, the number of slabs stays logarithmic, and at most half of the memory is ahead of use.
 */
#ifndef CODE_CACHE_TABLE_H
#define CODE_CACHE_TABLE_H

#include <stddef.h>
#include <stdint.h>

struct meta;

#define TABLE_SLABS 40

struct table {
    void *slab[TABLE_SLABS]; /* published with release stores, read with acquire loads */
    size_t elem_size;
    unsigned base_shift; /* slab 0 holds 1 << base_shift elements */
    unsigned slabs;      /* slabs allocated: [0, slabs) */
    size_t capacity;     /* elements covered by them */
};

void table_init(struct table *t, size_t elem_size, unsigned base_shift);
/* Makes elements [0, n) exist (zeroed). 0, or -1 + ENOMEM. Caller holds the owner's lock. */
int table_grow(struct table *t, struct meta *m, size_t n);
void table_release(struct table *t, struct meta *m);

/* Element i of a table made with elem_size and base_shift (table_init), or NULL when it does not
 * exist (yet); *run (when not NULL) is set to the number of elements from i on that follow it
 * contiguously in memory. Lock-free and async-signal-safe. Where the caller passes constants, the
 * arithmetic needs no load and no multiplication by a variable: code_cache_find's lookups, whose
 * length bounds how many of them overlap in the processor. */
static inline __attribute__((always_inline)) void *
table_run_as(const struct table *t, size_t i, size_t *run, size_t elem_size, unsigned base_shift)
{
    size_t q = (i >> base_shift) + 1;
    unsigned k = 63u - (unsigned)__builtin_clzll((unsigned long long)q);
    if (k >= TABLE_SLABS)
        return NULL;
    char *slab = __atomic_load_n(&t->slab[k], __ATOMIC_ACQUIRE);
    if (slab == NULL)
        return NULL;
    size_t first = (((size_t)1 << k) - 1) << base_shift;
    if (run != NULL)
        *run = first + ((size_t)1 << (k + base_shift)) - i;
    return slab + (i - first) * elem_size;
}

static inline void *table_run(const struct table *t, size_t i, size_t *run)
{
    return table_run_as(t, i, run, t->elem_size, t->base_shift);
}

static inline void *table_at(const struct table *t, size_t i)
{
    return table_run(t, i, NULL);
}

#endif
