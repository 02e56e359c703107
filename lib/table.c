/*
 * Stable arrays (see table.h). Growing allocates the next slabs; nothing is ever copied, so a
 * pointer to an element stays valid until table_release, and a lock-free reader that loads a slab
 * pointer sees either NULL or a fully zeroed slab.
 */
#include <errno.h>

#include "meta.h"
#include "table.h"

void table_init(struct table *t, size_t elem_size, unsigned base_shift)
{
    *t = (struct table){.elem_size = elem_size, .base_shift = base_shift};
}

static size_t table_slab_elems(const struct table *t, unsigned k)
{
    return (size_t)1 << (k + t->base_shift);
}

int table_grow(struct table *t, struct meta *m, size_t n)
{
    while (t->capacity < n) {
        if (t->slabs == TABLE_SLABS) {
            errno = ENOMEM;
            return -1;
        }
        size_t elems = table_slab_elems(t, t->slabs);
        void *slab = meta_alloc_lazy(m, elems * t->elem_size);
        if (slab == NULL)
            return -1;
        __atomic_store_n(&t->slab[t->slabs], slab, __ATOMIC_RELEASE);
        t->slabs++;
        t->capacity += elems;
    }
    return 0;
}

void table_release(struct table *t, struct meta *m)
{
    for (unsigned k = 0; k < t->slabs; k++)
        meta_free(m, t->slab[k], table_slab_elems(t, k) * t->elem_size);
    table_init(t, t->elem_size, t->base_shift);
}
