/*
 * What the model knows of the library's chunk records after a free: the handles whose records
 * surely still wait (stale handles, on which every call is documented misuse), the FIFO of freed
 * records, and the chunks the model's thread keeps in its thread cache (lib/tcache.c), with the
 * order and the quarantine in which they come back.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

/* ---- Stale handles ---- */

void model_stale_add(struct model *m, struct mcache *c, struct code_chunk *h, size_t off,
                     size_t size, bool kept)
{
    if (m->nstale < MODEL_MAX_STALE)
        m->stale[m->nstale++] = (struct mstale){.h = h,
                                                .cache = c,
                                                .off = off,
                                                .size = size,
                                                .ahead = c->fifo_count,
                                                .pops_at = c->pops,
                                                .kept = kept};
}

void model_stale_drop_cache(struct model *m, const struct mcache *c)
{
    unsigned j = 0;
    for (unsigned i = 0; i < m->nstale; i++)
        if (m->stale[i].cache != c)
            m->stale[j++] = m->stale[i];
    m->nstale = j;
}

/* Drops the handles whose record may have been reused: only those are documented misuse. */
void model_stale_prune(struct model *m)
{
    unsigned j = 0;
    for (unsigned i = 0; i < m->nstale; i++) {
        const struct mstale *s = &m->stale[i];
        if (s->kept || s->cache->pops - s->pops_at <= s->ahead)
            m->stale[j++] = m->stale[i];
    }
    m->nstale = j;
}

/* ---- The thread cache of the model's thread ---- */

/* Whether thread caches work in this process (they are off where instruction fetch does not see
 * the RW view: lib/tcache.c). Asked of the library: a dual cache hands out A, then B above it,
 * and A is freed; in the index A's span is a freed span (stats.free_spans 1), kept by a thread
 * cache it is not (0). */
bool model_tcache_works(void)
{
    static int works = -1;
    if (works >= 0)
        return works != 0;
    struct code_cache_options o = {.size = 65536, .flags = CODE_CACHE_DUAL_MAP};
    struct code_cache *c = code_cache_create(&o);
    works = 0;
    if (c != NULL) {
        struct code_chunk *a = code_cache_alloc(c, 64), *b = code_cache_alloc(c, 64);
        code_chunk_free(a);
        struct code_cache_stats st;
        code_cache_get_stats(c, &st);
        works = a != NULL && b != NULL && st.free_spans == 0;
        code_chunk_free(b);
        code_cache_destroy(c);
    }
    return works != 0;
}

static int kept_index(const struct mcache *c, const struct code_chunk *h)
{
    for (unsigned i = 0; i < c->nkept; i++)
        if (c->kept[i].h == h)
            return (int)i;
    return -1;
}

const struct mkept *model_kept_at(const struct mcache *c, size_t off)
{
    for (unsigned i = 0; i < c->nkept; i++)
        if (off - c->kept[i].off < c->kept[i].size)
            return &c->kept[i];
    return NULL;
}

/* The oldest kept chunk of n bytes once its quarantine is over: what code_cache_alloc(n) takes
 * back without the lock. Only the oldest of a size is looked at. */
const struct mkept *model_kept_due(const struct mcache *c, size_t n)
{
    if (!c->tcache || n > MODEL_TCACHE_CHUNK_MAX)
        return NULL;
    for (unsigned i = 0; i < c->nkept; i++)
        if (c->kept[i].size == n)
            return c->kept_frees - c->kept[i].stamp >= MODEL_TCACHE_QUARANTINE ? &c->kept[i] : NULL;
    return NULL;
}

void model_kept_remove(struct mcache *c, unsigned i)
{
    c->kept_bytes -= c->kept[i].size;
    memmove(&c->kept[i], &c->kept[i + 1], (c->nkept - i - 1) * sizeof c->kept[0]);
    c->nkept--;
}

/* A kept chunk back in the cache's index: its record joins the FIFO of freed records. */
static void kept_give_back(struct model *m, struct mcache *c, unsigned i)
{
    for (unsigned s = 0; s < m->nstale; s++)
        if (m->stale[s].kept && m->stale[s].h == c->kept[i].h) {
            m->stale[s].kept = false;
            m->stale[s].ahead = c->fifo_count;
            m->stale[s].pops_at = c->pops;
        }
    c->fifo_count++;
    model_kept_remove(c, i);
}

/* Everything, size by size, smallest first, each oldest first (an allocation that found no
 * room, a reset). */
void model_kept_give_back_all(struct model *m, struct mcache *c, uint64_t *counted)
{
    c->kept_flush_above = 0; /* past MODEL_TCACHE_MAX again: nothing is left in quarantine */
    for (size_t n = c->granule; n <= MODEL_TCACHE_CHUNK_MAX; n += c->granule) {
        for (unsigned i = 0; i < c->nkept;) {
            if (c->kept[i].size == n) {
                kept_give_back(m, c, i);
                (*counted)++;
            } else {
                i++;
            }
        }
    }
}

/* Past MODEL_TCACHE_MAX kept (or what the last flush set): the oldest, whatever their sizes, down
 * to half of it, each past its quarantine (the kept array is in the order of the frees). Stopped
 * above half by the quarantine, the next flush waits for half of MODEL_TCACHE_MAX more. */
static void kept_flush(struct model *m, struct mcache *c)
{
    while (c->kept_bytes > MODEL_TCACHE_MAX / 2 &&
           c->kept_frees - c->kept[0].stamp >= MODEL_TCACHE_QUARANTINE) {
        kept_give_back(m, c, 0);
        m->tcache.given_back_full++;
    }
    c->kept_flush_above = c->kept_bytes > MODEL_TCACHE_MAX / 2
                              ? c->kept_bytes + MODEL_TCACHE_MAX / 2
                              : MODEL_TCACHE_MAX;
}

/* The chunk h at [off, +size) was freed: kept by the thread cache when it may be (keepable: no
 * veneers, no names), else its record joins the FIFO of freed records. */
void model_freed_record(struct model *m, struct mcache *c, struct code_chunk *h, size_t off,
                        size_t size, bool keepable)
{
    const bool keep = keepable && c->tcache && size <= MODEL_TCACHE_CHUNK_MAX;
    model_stale_add(m, c, h, off, size, keep);
    if (!keep) {
        c->fifo_count++;
        return;
    }
    /* A failure on the way (the thread cache's memory) sends it the locked way instead. */
    if (m->fault_now)
        c->tainted = true;
    if (c->nkept == c->kept_cap) {
        c->kept_cap = c->kept_cap ? 2 * c->kept_cap : 64;
        c->kept = realloc(c->kept, c->kept_cap * sizeof c->kept[0]);
        if (c->kept == NULL)
            model_fail(m, "out of memory for the model");
    }
    c->kept[c->nkept++] = (struct mkept){h, off, size, c->kept_frees++};
    c->kept_bytes += size;
    m->tcache.kept++;
    if (c->kept_bytes > (c->kept_flush_above ? c->kept_flush_above : MODEL_TCACHE_MAX))
        kept_flush(m, c);
}

/* code_cache_alloc returned h at off. A kept chunk comes back with its own record (the handle is
 * live again); any other allocation took the oldest freed record if more than MODEL_QUARANTINE
 * waited when it began (from_fifo). True for a kept chunk. */
bool model_alloc_record(struct model *m, struct mcache *c, struct code_chunk *h, size_t off,
                        bool from_fifo)
{
    c->allocated++;
    int k = kept_index(c, h);
    if (k < 0) {
        if (from_fifo) {
            c->fifo_count--;
            c->pops++;
            model_stale_prune(m);
        }
        return false;
    }
    if (c->kept[k].off != off)
        model_fail(m, "a kept chunk came back at offset %zu; it was kept at %zu", off,
                   c->kept[k].off);
    model_kept_remove(c, (unsigned)k);
    m->tcache.handed_out++;
    unsigned j = 0;
    for (unsigned i = 0; i < m->nstale; i++)
        if (m->stale[i].h != h)
            m->stale[j++] = m->stale[i];
    m->nstale = j;
    return true;
}

void model_kept_forget(struct mcache *c)
{
    free(c->kept);
    c->kept = NULL;
    c->nkept = c->kept_cap = 0;
    c->kept_bytes = 0;
}
