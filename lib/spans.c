/*
 * The free-span index: one bit per page below the bump pointer, set while the page is free. A
 * bitmap makes coalescing implicit: two freed neighbours are one run of set bits, with no merge
 * step that could fail. Allocation is address-ordered first fit, the lowest run of free pages that
 * is long enough, which keeps the used part of the cache dense at its low end.
 *
 * A second bitmap marks free pages whose memory could not be discarded (madvise failed). They may
 * still hold sealed code, so they are discarded again before they are handed out: a page that
 * held code is never made writable with its old content.
 *
 * The bitmaps cover only the pages the bump pointer has passed and grow with it, so a large,
 * mostly unused reservation costs almost nothing here.
 *
 * The index also counts its holes, the maximal runs of free pages, because each one costs the
 * process mappings (CACHE_QUARANTINE_HOLES): code_cache_alloc reuses them ahead of never-used
 * space once there are too many. The count is kept as pages change state, by looking at the two
 * neighbours of the run that changes, never by walking the bitmap.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

#define BITS 64

int spans_init(struct spans *s, struct meta *m, size_t npages)
{
    (void)m;
    memset(s, 0, sizeof *s);
    s->max_words = (npages + BITS - 1) / BITS;
    return 0;
}

void spans_release(struct spans *s, struct meta *m)
{
    meta_free(m, s->free_bits, s->words * sizeof(uint64_t));
    meta_free(m, s->dirty_bits, s->words * sizeof(uint64_t));
    memset(s, 0, sizeof *s);
}

int spans_reserve(struct spans *s, struct meta *m, size_t npages)
{
    size_t need = (npages + BITS - 1) / BITS;
    if (need <= s->words)
        return 0;
    /* Doubling keeps the number of regrowths logarithmic in the size of the cache. */
    size_t words = s->words * 2 > need ? s->words * 2 : need;
    if (words > s->max_words)
        words = s->max_words;
    size_t old_bytes = s->words * sizeof(uint64_t), bytes = words * sizeof(uint64_t);
    uint64_t *free_bits = meta_alloc(m, bytes);
    uint64_t *dirty_bits = meta_alloc(m, bytes);
    if (free_bits == NULL || dirty_bits == NULL) {
        meta_free(m, free_bits, bytes);
        meta_free(m, dirty_bits, bytes);
        errno = ENOMEM;
        return -1;
    }
    if (old_bytes > 0) {
        memcpy(free_bits, s->free_bits, old_bytes);
        memcpy(dirty_bits, s->dirty_bits, old_bytes);
    }
    meta_free(m, s->free_bits, old_bytes);
    meta_free(m, s->dirty_bits, old_bytes);
    s->free_bits = free_bits;
    s->dirty_bits = dirty_bits;
    s->words = words;
    return 0;
}

/* The first index >= from whose bit equals set, or s->words * BITS when there is none. */
static size_t spans_next(const uint64_t *bits, size_t words, size_t from, bool set)
{
    size_t w = from / BITS;
    if (w >= words)
        return words * BITS;
    uint64_t x = set ? bits[w] : ~bits[w];
    x &= ~(uint64_t)0 << (from % BITS);
    while (x == 0) {
        if (++w == words)
            return words * BITS;
        x = set ? bits[w] : ~bits[w];
    }
    return w * BITS + (size_t)__builtin_ctzll(x);
}

size_t spans_find(struct spans *s, size_t n)
{
    size_t limit = s->words * BITS;
    size_t i = spans_next(s->free_bits, s->words, s->hint * BITS, true);
    /* Nothing is free below the first set bit, whatever the outcome of the search. */
    s->hint = i / BITS;
    while (i < limit) {
        size_t end = spans_next(s->free_bits, s->words, i, false);
        if (end - i >= n)
            return i;
        i = spans_next(s->free_bits, s->words, end, true);
    }
    return SIZE_MAX;
}

/* Sets (value true) or clears bits [first, first + n). */
static void spans_fill(uint64_t *bits, size_t first, size_t n, bool value)
{
    while (n > 0) {
        size_t w = first / BITS, shift = first % BITS;
        size_t take = BITS - shift < n ? BITS - shift : n;
        uint64_t mask = (take == BITS ? ~(uint64_t)0 : (((uint64_t)1 << take) - 1)) << shift;
        if (value)
            bits[w] |= mask;
        else
            bits[w] &= ~mask;
        first += take;
        n -= take;
    }
}

/* True when page i is free; pages beyond the bitmap are not (they are above the bump pointer). */
static bool spans_free_at(const struct spans *s, size_t i)
{
    return i < s->words * BITS && (s->free_bits[i / BITS] >> (i % BITS) & 1) != 0;
}

void spans_put(struct spans *s, size_t first, size_t n, bool dirty)
{
    /* A new run of free pages: a new hole, unless it joins one on either side, or two. */
    bool left = first > 0 && spans_free_at(s, first - 1);
    bool right = spans_free_at(s, first + n);
    s->holes = s->holes + 1 - left - right;
    spans_fill(s->free_bits, first, n, true);
    if (dirty)
        spans_fill(s->dirty_bits, first, n, true);
    if (first / BITS < s->hint)
        s->hint = first / BITS;
}

void spans_take(struct spans *s, size_t first, size_t n)
{
    spans_fill(s->free_bits, first, n, false);
    spans_fill(s->dirty_bits, first, n, false);
    /* [first, first + n) lay inside one hole, which is gone, unless a part of it remains on
     * either side (one hole), or on both (two). */
    bool left = first > 0 && spans_free_at(s, first - 1);
    bool right = spans_free_at(s, first + n);
    s->holes = s->holes + left + right - 1;
}

bool spans_dirty(const struct spans *s, size_t first, size_t n)
{
    size_t hit = spans_next(s->dirty_bits, s->words, first, true);
    return hit < first + n;
}

void spans_clear(struct spans *s)
{
    if (s->words > 0) {
        memset(s->free_bits, 0, s->words * sizeof(uint64_t));
        memset(s->dirty_bits, 0, s->words * sizeof(uint64_t));
    }
    s->hint = 0;
    s->holes = 0;
}
