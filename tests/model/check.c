/*
 * The checks of the whole state after every call of the model (model.h lists them): the chunks
 * against each other and the cache, the veneers, code_cache_find, the statistics, and the kernel's
 * map of both views, page by page.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "model_internal.h"
#include "proc.h"

static uintptr_t overlap(uintptr_t a, uintptr_t b, uintptr_t c, uintptr_t d)
{
    uintptr_t lo = a > c ? a : c, hi = b < d ? b : d;
    return hi > lo ? hi - lo : 0;
}

static int by_offset(const void *a, const void *b)
{
    const struct mchunk *x = *(const struct mchunk *const *)a,
                        *y = *(const struct mchunk *const *)b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* ---- Content ---- */

void check_chunk_content(struct model *m, struct mchunk *ch)
{
    const unsigned char *rw = (const unsigned char *)(ch->cache->rw_base + ch->off);
    if (memcmp(rw, ch->shadow, ch->size) != 0) {
        size_t i = 0;
        while (rw[i] == ch->shadow[i])
            i++;
        model_fail(m,
                   "byte %zu of the %s chunk at %#lx is %#x, expected %#x (used %u, veneers from "
                   "%u, %zu bytes)",
                   i, ch->state == MS_SEALED ? "sealed" : "open",
                   (unsigned long)(ch->cache->base + ch->off), rw[i], ch->shadow[i], ch->used,
                   ch->floor, ch->size);
    }
    ch->touched = false;
}

/* Accessible memory that no chunk holds is fresh: zero (mprotect, rw-) or traps (dual). In light
 * mode only the ends of each piece are read. */
static void check_free_content(struct model *m, struct mcache *c, uintptr_t lo, uintptr_t hi)
{
    static unsigned char zeros[4096], traps[4096];
    if (traps[0] != TRAP)
        memset(traps, TRAP, sizeof traps);
    const unsigned char want = c->dual ? TRAP : 0;
    const unsigned char *ref = c->dual ? traps : zeros;
    size_t len = hi - lo;
    /* Through the RW view where there is one (the RX view reads the same bytes). */
    const unsigned char *p = (const unsigned char *)(c->rw_base + (lo - c->base));
    for (size_t i = 0; i < len;) {
        if (m->cfg.light && i == 64 && len > 128)
            i = len - 64;
        size_t n = len - i < sizeof zeros ? len - i : sizeof zeros;
        if (m->cfg.light && n > 64)
            n = 64;
        if (memcmp(p + i, ref, n) != 0) {
            while (p[i] == want)
                i++;
            model_fail(m,
                       "free memory at %#lx (offset %zu, not in any chunk) holds %#x, "
                       "expected %#x",
                       (unsigned long)(lo + i), lo + i - c->base, p[i], want);
        }
        i += n;
    }
}

/* The same over [lo, hi) minus the spans failed frees retired. */
static void check_free_unretired(struct model *m, struct mcache *c, uintptr_t lo, uintptr_t hi)
{
    while (lo < hi) {
        uintptr_t next = hi;
        for (unsigned i = 0; i < c->nretired; i++) {
            uintptr_t rlo = c->base + c->retired[i].off, rhi = rlo + c->retired[i].size;
            if (lo >= rlo && lo < rhi) {
                lo = rhi; /* inside a retired span: skip it */
                next = 0;
                break;
            }
            if (rlo > lo && rlo < next)
                next = rlo;
        }
        if (next == 0)
            continue;
        check_free_content(m, c, lo, next);
        lo = next;
    }
}

/* ---- The map ---- */

/* Every mapping piece of [lo, hi), in order; fails on a hole. */
struct pieces {
    const struct proc_maps *maps;
    uintptr_t lo, hi, at;
    size_t index;
};

static bool next_piece(struct model *m, struct pieces *it, uintptr_t *a, uintptr_t *b,
                       const struct proc_mapping **map, const char *what)
{
    if (it->at >= it->hi)
        return false;
    if (it->index == SIZE_MAX) {
        const struct proc_mapping *first = proc_maps_at(it->maps, it->at);
        it->index = first != NULL ? (size_t)(first - it->maps->v) : it->maps->n;
    }
    if (it->index >= it->maps->n || it->maps->v[it->index].lo > it->at)
        model_fail(m, "%s has a hole at %#lx: something unmapped it", what, (unsigned long)it->at);
    *map = &it->maps->v[it->index++];
    *a = it->at;
    *b = (*map)->hi < it->hi ? (*map)->hi : it->hi;
    it->at = *b;
    return true;
}

static bool prot_is(const struct proc_mapping *map, const char *prot)
{
    return strncmp(map->prot, prot, 3) == 0;
}

/* Bytes of [a, b) (absolute) that live chunks hold, and that sealed ones hold. */
static void held(struct mcache *c, struct mchunk **sorted, uintptr_t a, uintptr_t b, size_t *live,
                 size_t *sealed, size_t *retired)
{
    *live = *sealed = *retired = 0;
    for (unsigned i = 0; i < c->nchunks; i++) {
        const struct mchunk *ch = sorted[i];
        uintptr_t lo = c->base + ch->off;
        if (lo >= b)
            break;
        size_t o = overlap(a, b, lo, lo + ch->size);
        *live += o;
        if (ch->state == MS_SEALED)
            *sealed += o;
    }
    for (unsigned i = 0; i < c->nretired; i++)
        *retired += overlap(a, b, c->base + c->retired[i].off,
                            c->base + c->retired[i].off + c->retired[i].size);
}

static void check_region(struct model *m, struct mcache *c, struct mchunk **sorted,
                         const struct proc_maps *maps, const struct code_cache_stats *st,
                         bool exact)
{
    const uintptr_t page = c->page, lo = c->base, hi = c->base + c->reserved;
    const uintptr_t bump = c->base + c->bump;
    struct pieces it = {
        .maps = maps, .lo = lo - page, .hi = hi + page, .at = lo - page, .index = SIZE_MAX};
    uintptr_t a, b;
    const struct proc_mapping *map;
    size_t accessible = 0, ready = 0, ahead = 0;
    while (next_piece(m, &it, &a, &b, &map, "the region")) {
        if (proc_prot_wx(map->prot))
            model_fail(m, "W^X broken: %#lx-%#lx of the cache is %s", (unsigned long)a,
                       (unsigned long)b, map->prot);
        if (a < lo || b > hi) {
            if (!prot_is(map, "---"))
                model_fail(m, "a guard page of the cache is %s", map->prot);
            continue;
        }
        size_t live, sealed, retired;
        held(c, sorted, a, b, &live, &sealed, &retired);
        if (prot_is(map, "---")) {
            if (live != 0)
                model_fail(m, "%#lx-%#lx holds a live chunk but is ---", (unsigned long)a,
                           (unsigned long)b);
            if (c->dual && (map->inode != 0 || map->prot[3] != 'p'))
                model_fail(m, "an inaccessible page of the RX view is a mapping of a file");
            continue;
        }
        accessible += b - a;
        if (c->dual) {
            /* The RX view: the shared file, r-x, each page at its own offset. */
            if (!prot_is(map, "r-x") || map->prot[3] != 's' || map->inode != c->inode ||
                map->offset + (a - map->lo) != a - lo)
                model_fail(m,
                           "the RX view at %#lx is %s inode %llu offset %#llx: expected r-xs of "
                           "inode %llu at offset %#lx",
                           (unsigned long)a, map->prot, (unsigned long long)map->inode,
                           (unsigned long long)(map->offset + (a - map->lo)),
                           (unsigned long long)c->inode, (unsigned long)(a - lo));
        } else if (prot_is(map, "r-x")) {
            /* Only sealed code runs (and a span a failed free left as it was). */
            if (sealed + retired < b - a && !c->tainted)
                model_fail(m, "%#lx-%#lx is r-x but holds no sealed chunk", (unsigned long)a,
                           (unsigned long)b);
        } else if (prot_is(map, "rw-")) {
            if (sealed != 0)
                model_fail(m, "a sealed chunk in %#lx-%#lx is writable", (unsigned long)a,
                           (unsigned long)b);
        } else if (!c->tainted && retired == 0) {
            model_fail(m, "%#lx-%#lx of the cache is %s", (unsigned long)a, (unsigned long)b,
                       map->prot);
        }
        /* What no chunk holds: ready below the bump pointer, committed ahead above it. */
        uintptr_t mid = bump < a ? a : bump > b ? b : bump;
        size_t below_live, below_sealed, below_retired;
        held(c, sorted, a, mid, &below_live, &below_sealed, &below_retired);
        ready += (mid - a) - below_live - below_retired;
        ahead += b - mid;
        if (c->content_due && !c->tainted) {
            /* Free pieces between the chunks (retired spans keep what they held). */
            uintptr_t at = a;
            for (unsigned i = 0; i <= c->nchunks && at < b; i++) {
                uintptr_t clo = i < c->nchunks ? c->base + sorted[i]->off : b;
                uintptr_t chi = i < c->nchunks ? clo + sorted[i]->size : b;
                if (chi <= at)
                    continue;
                if (clo > b)
                    clo = b;
                if (clo > at)
                    check_free_unretired(m, c, at, clo);
                at = chi;
            }
        }
    }
    if (accessible != st->committed + st->retired)
        model_fail(m, "%zu bytes of the region are accessible; committed %zu + retired %zu",
                   accessible, st->committed, st->retired);
    if (exact && (ready != st->free_ready || ahead != st->committed_ahead))
        model_fail(m,
                   "accessible free memory: %zu bytes below the bump pointer and %zu above; the "
                   "statistics say free_ready %zu, committed_ahead %zu",
                   ready, ahead, st->free_ready, st->committed_ahead);
    /* Each chunk, whole: rw- while OPEN, r-x once SEALED (mprotect); r-x (dual RX view). */
    for (unsigned i = 0; i < c->nchunks; i++) {
        const struct mchunk *ch = sorted[i];
        const char *want = c->dual || ch->state == MS_SEALED ? "r-x" : "rw-";
        struct pieces cit = {.maps = maps,
                             .lo = lo + ch->off,
                             .hi = lo + ch->off + ch->size,
                             .at = lo + ch->off,
                             .index = SIZE_MAX};
        while (next_piece(m, &cit, &a, &b, &map, "a chunk"))
            if (!prot_is(map, want))
                model_fail(m, "the %s chunk at %#lx is %s, expected %s",
                           ch->state == MS_SEALED ? "sealed" : "open", (unsigned long)a, map->prot,
                           want);
    }
}

/* The RW view of a dual-mapped cache: one rw- shared mapping of the file (r-- where hardened
 * pages are full of sealed code), never executable, a guard page on each side. */
static void check_rw_view(struct model *m, struct mcache *c, struct mchunk **sorted,
                          const struct proc_maps *maps, bool exact)
{
    const uintptr_t page = c->page, lo = c->rw_base, hi = c->rw_base + c->reserved;
    struct pieces it = {
        .maps = maps, .lo = lo - page, .hi = hi + page, .at = lo - page, .index = SIZE_MAX};
    uintptr_t a, b;
    const struct proc_mapping *map;
    while (next_piece(m, &it, &a, &b, &map, "the RW view")) {
        if (map->prot[2] == 'x')
            model_fail(m, "the RW view at %#lx is executable: %s", (unsigned long)a, map->prot);
        if (a < lo || b > hi) {
            if (!prot_is(map, "---"))
                model_fail(m, "a guard page of the RW view is %s", map->prot);
            continue;
        }
        if (map->prot[3] != 's' || map->inode != c->inode || map->offset + (a - map->lo) != a - lo)
            model_fail(m, "the RW view at %#lx is not the file at its offset", (unsigned long)a);
        for (uintptr_t p = a; p < b; p += page) {
            /* Full: every granule of the page is sealed code (or a span a failed free retired,
             * still counted as sealed by the library). Only full pages may be read-only; they
             * are, unless an injected failure of that mprotect left one writable (the library
             * keeps going: hardening lost, never correctness). */
            bool full = false;
            if (c->harden) {
                size_t live, sealed, retired;
                held(c, sorted, c->base + (p - lo), c->base + (p - lo) + page, &live, &sealed,
                     &retired);
                full = sealed + retired == page;
            }
            bool ok =
                full ? prot_is(map, "r--") || ((!exact || c->harden_lost) && prot_is(map, "rw-"))
                     : prot_is(map, "rw-") || (!exact && prot_is(map, "r--"));
            if (!ok)
                model_fail(m, "the RW view's page %#lx is %s, expected %s", (unsigned long)p,
                           map->prot, full ? "r--" : "rw-");
            if (!c->harden)
                break;
        }
    }
    /* The file is mapped nowhere else. */
    const struct proc_mapping *view = proc_maps_at(maps, lo);
    for (size_t i = 0; i < maps->n; i++) {
        const struct proc_mapping *x = &maps->v[i];
        if (x->inode != c->inode || strcmp(x->path, view->path) != 0)
            continue;
        if ((x->lo >= lo && x->hi <= hi) || (x->lo >= c->base && x->hi <= c->base + c->reserved))
            continue;
        if (!m->cfg.munmap_faults)
            model_fail(m, "the cache's file is also mapped at %#lx-%#lx", (unsigned long)x->lo,
                       (unsigned long)x->hi);
        /* A trial mapping whose munmap was refused: the library cannot undo that. */
        munmap((void *)x->lo, x->hi - x->lo);
    }
}

void check_find_rw_view(struct model *m, struct mcache *c)
{
    struct proc_maps maps;
    if (proc_maps_read(&maps) != 0)
        model_fail(m, "cannot read /proc/self/maps: %s", strerror(errno));
    const struct proc_mapping *found = NULL;
    unsigned n = 0;
    for (size_t i = 0; i < maps.n; i++) {
        const struct proc_mapping *x = &maps.v[i];
        /* The view: the whole file, shared, between two inaccessible guard pages, of a file
         * that is deleted (memfd, O_TMPFILE). */
        if (x->hi - x->lo != c->reserved || x->prot[3] != 's' || x->offset != 0 ||
            x->prot[2] == 'x' || strstr(x->path, "(deleted)") == NULL || i == 0 ||
            i + 1 == maps.n || maps.v[i - 1].hi != x->lo || maps.v[i + 1].lo != x->hi ||
            strncmp(maps.v[i - 1].prot, "---", 3) != 0 ||
            strncmp(maps.v[i + 1].prot, "---", 3) != 0)
            continue;
        bool other = false;
        for (unsigned s = 0; s < MODEL_SLOTS; s++)
            other |= m->live[s] && &m->cache[s] != c && m->cache[s].dual && m->cache[s].rw_known &&
                     m->cache[s].rw_base == x->lo;
        if (!other) {
            found = x;
            n++;
        }
    }
    if (n == 1) {
        c->rw_base = found->lo;
        c->inode = found->inode;
        c->rw_known = true;
    } else {
        model_fail(m, "%u mappings could be the RW view of the new cache", n);
    }
    proc_maps_free(&maps);
}

/* ---- Names ---- */

/* code_chunk_name_at at the chunk offset off, through the view at base, against the model. */
static void check_name_at(struct model *m, struct mchunk *ch, uintptr_t base, size_t off)
{
    const struct mname *want = model_name_at(ch, off);
    const void *start = NULL;
    size_t size = 0;
    m->calls++;
    const char *got =
        code_chunk_name_at(ch->h, (const void *)(base + ch->off + off), &start, &size);
    const uintptr_t rx = ch->cache->base + ch->off;
    if (want == NULL) {
        if (got != NULL)
            model_fail(m, "code_chunk_name_at(%#lx) = \"%.40s\", expected no name",
                       (unsigned long)(base + ch->off + off), got);
        return;
    }
    bool same = got != NULL && (want->long_name ? strlen(got) == CODE_CACHE_NAME_MAX - 1 &&
                                                      strspn(got, "n") == CODE_CACHE_NAME_MAX - 1
                                                : strcmp(got, want->text) == 0);
    if (!same || (uintptr_t)start != rx + want->off || size != want->size)
        model_fail(m,
                   "code_chunk_name_at(%#lx) = \"%.40s\" at %p size %zu, expected \"%.40s\" at "
                   "%#lx size %u",
                   (unsigned long)(base + ch->off + off), got ? got : "(null)", start, size,
                   want->text, (unsigned long)(rx + want->off), want->size);
}

static void check_names(struct model *m, struct mchunk *ch)
{
    const struct mcache *c = ch->cache;
    for (unsigned i = 0; i < ch->nnames; i++) {
        check_name_at(m, ch, c->base, ch->names[i].off);
        check_name_at(m, ch, c->base, ch->names[i].off + ch->names[i].size - 1);
        if (c->dual)
            check_name_at(m, ch, c->rw_base, ch->names[i].off);
    }
    check_name_at(m, ch, c->base, 0);
    check_name_at(m, ch, c->base, ch->size - 1);
}

/* ---- Everything ---- */

static void check_find(struct model *m, struct mcache *c, const void *addr,
                       const struct mchunk *want)
{
    m->calls++;
    struct code_chunk *got = code_cache_find(c->h, addr);
    if (got != (want != NULL ? want->h : NULL))
        model_fail(m, "code_cache_find(%p) = %p, expected %p", addr, (void *)got,
                   want != NULL ? (void *)want->h : NULL);
}

static void check_cache(struct model *m, struct mcache *c, const struct proc_maps *maps)
{
    struct code_cache_stats st;
    m->calls++;
    code_cache_get_stats(c->h, &st);
    const bool exact = !c->tainted && !m->fault_now;

    /* What never changes. */
    if (st.base != c->base || st.reserved != c->reserved || st.granule != c->granule ||
        st.reach != c->reach || st.near != c->near ||
        strcmp(st.backend, c->dual ? "dual" : "mprotect") != 0 ||
        (c->dual ? st.dual_file == NULL : st.dual_file != NULL))
        model_fail(m, "the cache's fixed statistics changed or are wrong (backend %s)", st.backend);
    if (c->has_target && (!model_reaches(c->base, c->base + c->reserved, c->tlo, c->reach) ||
                          !model_reaches(c->base, c->base + c->reserved, c->thi - 1, c->reach)))
        model_fail(m, "the cache [%#lx, +%zu) does not reach [%#lx, %#lx)", (unsigned long)c->base,
                   c->reserved, (unsigned long)c->tlo, (unsigned long)c->thi);

    /* The chunks, in address order: apart, aligned, inside, within reach. */
    struct mchunk *sorted[MODEL_MAX_CHUNKS];
    memcpy(sorted, c->chunk, c->nchunks * sizeof sorted[0]);
    qsort(sorted, c->nchunks, sizeof sorted[0], by_offset);
    size_t in_use = 0, open = 0, sealed = 0;
    for (unsigned i = 0; i < c->nchunks; i++) {
        struct mchunk *ch = sorted[i];
        const uintptr_t lo = c->base + ch->off, hi = lo + ch->size;
        if (ch->off % c->granule || ch->size % c->granule || ch->off + ch->size > c->reserved ||
            ch->off + ch->size > c->bump)
            model_fail(m, "chunk at offset %zu size %zu: misaligned or outside", ch->off, ch->size);
        if (i > 0 && sorted[i - 1]->off + sorted[i - 1]->size > ch->off)
            model_fail(m, "chunks at offsets %zu and %zu overlap", sorted[i - 1]->off, ch->off);
        if (c->has_target && (!model_reaches(lo, hi, c->tlo, c->reach) ||
                              !model_reaches(lo, hi, c->thi - 1, c->reach)))
            model_fail(m, "the chunk at %#lx does not reach its cache's target", (unsigned long)lo);
        m->calls++;
        struct code_span span = code_chunk_span(ch->h);
        if ((uintptr_t)span.rx != lo || (uintptr_t)span.rw != c->rw_base + ch->off ||
            span.size != ch->size)
            model_fail(m, "code_chunk_span of the chunk at %#lx: %p/%p size %zu", (unsigned long)lo,
                       span.rw, span.rx, span.size);
        if (c->dual ? span.rw == span.rx : span.rw != span.rx)
            model_fail(m, "the views of a %s chunk: rw %p rx %p", c->dual ? "dual" : "mprotect",
                       span.rw, span.rx);
        /* Veneers: jmp [rip+0]; .quad target, reachable from every byte of the chunk. */
        for (unsigned v = 0; v < ch->nven; v++) {
            const uintptr_t at = lo + ch->ven[v].off;
            const unsigned char *code =
                (const unsigned char *)(c->rw_base + ch->off + ch->ven[v].off);
            uint64_t target;
            memcpy(&target, code + 6, 8);
            if (at % 16 != 0 || code[0] != 0xff || code[1] != 0x25 ||
                code[2] | code[3] | code[4] | code[5] ||
                target != (uint64_t)(uintptr_t)ch->ven[v].target)
                model_fail(m, "the veneer at %#lx does not jump to %p", (unsigned long)at,
                           ch->ven[v].target);
            if (!model_reaches(lo, hi, at, c->reach))
                model_fail(m, "the veneer at %#lx is out of reach of its chunk [%#lx, %#lx)",
                           (unsigned long)at, (unsigned long)lo, (unsigned long)hi);
        }
        for (unsigned f = 0; f < ch->nfn; f++)
            if (ch->fn[f].off + ch->fn[f].len > ch->used)
                model_fail(m, "the model's function at %u is not claimed", ch->fn[f].off);
        /* code_cache_find, from both views. */
        check_find(m, c, (const void *)lo, ch);
        check_find(m, c, (const void *)(hi - 1), ch);
        if (c->dual) {
            check_find(m, c, (const void *)(c->rw_base + ch->off), ch);
            check_find(m, c, (const void *)(c->rw_base + ch->off + ch->size - 1), ch);
        }
        in_use += ch->size;
        open += ch->state == MS_OPEN;
        sealed += ch->state == MS_SEALED;
        /* The chunk this call touched; and every chunk after a call that changed the cache's
         * memory elsewhere (alloc, free, reset): nothing else may have moved, and sealed code
         * still returns its value. */
        if ((ch->touched || c->content_due) &&
            (!m->cfg.light || ch->size <= 65536 || ch->state == MS_SEALED))
            check_chunk_content(m, ch);
        if (c->content_due && ch->state == MS_SEALED)
            model_run_chunk(m, ch);
        check_names(m, ch);
    }
    /* Freed spans, never-used space, the guard pages and beyond: no chunk. */
    for (size_t off = 0; off < c->reserved; off += c->granule) {
        const struct mchunk *owner = NULL;
        for (unsigned i = 0; i < c->nchunks && owner == NULL; i++)
            if (off - sorted[i]->off < sorted[i]->size)
                owner = sorted[i];
        if (owner != NULL) {
            off = owner->off + owner->size - c->granule;
            continue;
        }
        check_find(m, c, (const void *)(c->base + off), NULL);
        if (c->dual)
            check_find(m, c, (const void *)(c->rw_base + off), NULL);
        /* One free granule per run is enough: skip to the next chunk. */
        size_t next = c->reserved;
        for (unsigned i = 0; i < c->nchunks; i++)
            if (sorted[i]->off > off) {
                next = sorted[i]->off;
                break;
            }
        if (next - c->granule > off)
            check_find(m, c, (const void *)(c->base + next - 1), NULL);
        off = next - c->granule;
    }
    check_find(m, c, (const void *)(c->base - 1), NULL);
    check_find(m, c, (const void *)(c->base + c->reserved), NULL);

    /* The statistics. */
    size_t retired = 0;
    for (unsigned i = 0; i < c->nretired; i++)
        retired += c->retired[i].size;
    if (st.in_use != in_use || st.open_chunks != open || st.sealed_chunks != sealed ||
        st.chunks_allocated != c->allocated)
        model_fail(m,
                   "stats: in_use %zu open %zu sealed %zu allocated %zu; the model: %zu %zu "
                   "%zu %zu",
                   st.in_use, st.open_chunks, st.sealed_chunks, st.chunks_allocated, in_use, open,
                   sealed, c->allocated);
    if (st.committed != st.in_use + st.committed_ahead + st.free_ready ||
        st.committed_ahead > st.never_used || st.never_used > st.free ||
        st.free + st.in_use + st.retired != c->reserved || st.meta_bytes == 0)
        model_fail(m, "inconsistent statistics");
    if (exact && (st.never_used != c->reserved - c->bump || st.retired != retired ||
                  st.free_spans != model_holes(c)))
        model_fail(m, "stats: never_used %zu retired %zu free_spans %zu; the model: %zu %zu %zu",
                   st.never_used, st.retired, st.free_spans, c->reserved - c->bump, retired,
                   model_holes(c));
    if (c->dual && !c->harden && st.protection_changes != 0)
        model_fail(m, "the dual backend changed protections %zu times", st.protection_changes);

    check_region(m, c, sorted, maps, &st, exact);
    if (c->dual)
        check_rw_view(m, c, sorted, maps, exact);
    c->content_due = false;
}

bool model_retired_span(const struct mcache *c, size_t off)
{
    for (unsigned i = 0; i < c->nretired; i++)
        if (off - c->retired[i].off < c->retired[i].size)
            return true;
    return false;
}

void check_all(struct model *m)
{
    struct proc_maps maps;
    if (proc_maps_read(&maps) != 0)
        model_fail(m, "cannot read /proc/self/maps: %s", strerror(errno));
    for (unsigned s = 0; s < MODEL_SLOTS; s++)
        if (m->live[s])
            check_cache(m, &m->cache[s], &maps);
    /* Two caches never share an address, in either view. */
    if (m->live[0] && m->live[1]) {
        const struct mcache *x = &m->cache[0], *y = &m->cache[1];
        uintptr_t xs[2] = {x->base, x->rw_base}, ys[2] = {y->base, y->rw_base};
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++)
                if (overlap(xs[i] - x->page, xs[i] + x->reserved + x->page, ys[j] - y->page,
                            ys[j] + y->reserved + y->page) &&
                    (i == 0 || x->dual) && (j == 0 || y->dual))
                    model_fail(m, "two caches overlap");
    }
    /* Nothing in the process is writable and executable (valgrind keeps rwx mappings of its own:
     * there only the caches' mappings, checked above, count). */
    if (!m->valgrind)
        for (size_t i = 0; i < maps.n; i++)
            if (proc_prot_wx(maps.v[i].prot))
                model_fail(m, "%#lx-%#lx %s is writable and executable",
                           (unsigned long)maps.v[i].lo, (unsigned long)maps.v[i].hi,
                           maps.v[i].path);
    proc_maps_free(&maps);
}

void check_destroyed(struct model *m, uintptr_t lo, uintptr_t hi, const char *what)
{
    struct proc_maps maps;
    if (proc_maps_read(&maps) != 0)
        model_fail(m, "cannot read /proc/self/maps: %s", strerror(errno));
    const struct proc_mapping *x = proc_maps_at(&maps, lo);
    if (x != NULL && x->lo < hi) {
        if (!m->fault_now)
            model_fail(m, "%s of a destroyed cache is still mapped: %#lx-%#lx %s", what,
                       (unsigned long)x->lo, (unsigned long)x->hi, x->prot);
        /* Only an munmap the sweep refused leaves it: destroy cannot report that. */
        munmap((void *)lo, hi - lo);
    }
    proc_maps_free(&maps);
}
