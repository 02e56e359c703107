/*
 * The free-span index (see spans.h). A bitmap makes coalescing implicit: two freed neighbours are
 * one run of set bits, with no merge step that could fail. Allocation is address-ordered first
 * fit, the lowest run of free granules that is long enough, which keeps the used part of the
 * cache dense at its low end.
 *
 * The bitmaps cover only the granules the bump pointer has passed and grow with it, so a large,
 * mostly unused reservation costs almost nothing here.
 *
 * The index also counts its holes, the maximal runs of free granules, because each one may cost
 * the process mappings (CACHE_QUARANTINE_HOLES): code_cache_alloc reuses them ahead of never-used
 * space once there are too many. The count is kept as granules change state, by looking at the
 * two neighbours of the run that changes, never by walking the bitmap.
 */
#include <errno.h>
#include <string.h>

#include "meta.h"
#include "spans.h"

#define BITS 64

void spans_init(struct spans *s, size_t granules)
{
    memset(s, 0, sizeof *s);
    s->max_words = (granules + BITS - 1) / BITS;
}

void spans_release(struct spans *s, struct meta *m)
{
    size_t bytes = s->words * sizeof(uint64_t);
    meta_free(m, s->free_bits, bytes);
    meta_free(m, s->cold_bits, bytes);
    meta_free(m, s->dirty_bits, bytes);
    memset(s, 0, sizeof *s);
}

int spans_reserve(struct spans *s, struct meta *m, size_t n)
{
    size_t need = (n + BITS - 1) / BITS;
    if (need <= s->words)
        return 0;
    /* Doubling keeps the number of regrowths logarithmic in the size of the cache. */
    size_t words = s->words * 2 > need ? s->words * 2 : need;
    if (words > s->max_words)
        words = s->max_words;
    size_t old_bytes = s->words * sizeof(uint64_t), bytes = words * sizeof(uint64_t);
    uint64_t *bits[3];
    /* Zeroed lazily: the half ahead of the bump pointer costs no memory until it is reached
     * (bench/dual: 6 bytes per live function of 1 KiB). */
    for (int i = 0; i < 3; i++) {
        bits[i] = meta_alloc_lazy(m, bytes);
        if (bits[i] == NULL) {
            while (i-- > 0)
                meta_free(m, bits[i], bytes);
            errno = ENOMEM;
            return -1;
        }
    }
    uint64_t **old[3] = {&s->free_bits, &s->cold_bits, &s->dirty_bits};
    for (int i = 0; i < 3; i++) {
        if (old_bytes > 0)
            memcpy(bits[i], *old[i], old_bytes);
        meta_free(m, *old[i], old_bytes);
        *old[i] = bits[i];
    }
    s->words = words;
    return 0;
}

/* The first index >= from whose bit equals set, or s->words * BITS when there is none. */
static size_t spans_next(const struct spans *s, enum spans_kind kind, size_t from, bool set)
{
    size_t w = from / BITS;
    if (w >= s->words)
        return s->words * BITS;
    uint64_t x = set ? spans_word(s, kind, w) : ~spans_word(s, kind, w);
    x &= ~(uint64_t)0 << (from % BITS);
    while (x == 0) {
        if (++w == s->words)
            return s->words * BITS;
        x = set ? spans_word(s, kind, w) : ~spans_word(s, kind, w);
    }
    return w * BITS + (size_t)__builtin_ctzll(x);
}

/* Whether the run of granules with the property that starts at i holds n of them; else its end
 * in *end. Looks at the words of [i, i + n) only: a first fit needs to know that a run is long
 * enough, not how long (a 1 MiB run of ready 64-byte granules is 256 words). */
static bool spans_run_fits(const struct spans *s, enum spans_kind kind, size_t i, size_t n,
                           size_t *end)
{
    size_t w = i / BITS, last = (i + n - 1) / BITS;
    if (last >= s->words) {
        *end = spans_next(s, kind, i, false);
        return false;
    }
    uint64_t x = ~spans_word(s, kind, w) & (~(uint64_t)0 << (i % BITS));
    while (x == 0 && w < last)
        x = ~spans_word(s, kind, ++w);
    if (x == 0)
        return true;
    *end = w * BITS + (size_t)__builtin_ctzll(x);
    return *end >= i + n;
}

size_t spans_find(struct spans *s, size_t n)
{
    size_t limit = s->words * BITS;
    size_t i = spans_next(s, SPANS_FREE, s->hint * BITS, true);
    /* Nothing is free below the first set bit, whatever the outcome of the search. */
    s->hint = i / BITS;
    while (i < limit) {
        size_t end;
        if (spans_run_fits(s, SPANS_FREE, i, n, &end))
            return i;
        i = spans_next(s, SPANS_FREE, end, true);
    }
    return SIZE_MAX;
}

size_t spans_find_ready(struct spans *s, size_t n, size_t max_runs)
{
    size_t i = spans_next(s, SPANS_READY, s->ready_hint * BITS, true), limit = s->words * BITS;
    s->ready_hint = i / BITS;
    for (size_t runs = 0; i < limit && runs < max_runs; runs++) {
        size_t end;
        if (spans_run_fits(s, SPANS_READY, i, n, &end))
            return i;
        i = spans_next(s, SPANS_READY, end, true);
    }
    return SIZE_MAX;
}

bool spans_next_run(const struct spans *s, enum spans_kind kind, size_t from, size_t limit,
                    size_t *start, size_t *end)
{
    size_t i = spans_next(s, kind, from, true);
    if (i >= limit || i >= s->words * BITS)
        return false;
    size_t j = spans_next(s, kind, i, false);
    *start = i;
    *end = j < limit ? j : limit;
    return true;
}

/* Sets (value true) or clears bits [first, first + n). Inlined: a free and an allocation make six
 * such calls, nearly always inside one word (a chunk of up to 4 KiB of 64-byte granules). */
static inline __attribute__((always_inline)) void spans_fill(uint64_t *bits, size_t first, size_t n,
                                                             bool value)
{
    if (first % BITS + n < BITS) {
        uint64_t mask = (((uint64_t)1 << n) - 1) << (first % BITS);
        if (value)
            bits[first / BITS] |= mask;
        else
            bits[first / BITS] &= ~mask;
        return;
    }
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

/* True when granule i is free; granules beyond the bitmap are not (they are above the bump
 * pointer). */
static bool spans_free_at(const struct spans *s, size_t i)
{
    return i < s->words * BITS && (s->free_bits[i / BITS] >> (i % BITS) & 1) != 0;
}

void spans_put(struct spans *s, size_t first, size_t n, bool cold, bool dirty)
{
    /* A new run of free granules: a new hole, unless it joins one on either side, or two. */
    bool left = first > 0 && spans_free_at(s, first - 1);
    bool right = spans_free_at(s, first + n);
    s->holes = s->holes + 1 - left - right;
    spans_fill(s->free_bits, first, n, true);
    if (cold)
        spans_fill(s->cold_bits, first, n, true);
    if (dirty)
        spans_fill(s->dirty_bits, first, n, true);
    if (first / BITS < s->hint)
        s->hint = first / BITS;
    if (!cold && first / BITS < s->ready_hint)
        s->ready_hint = first / BITS;
}

void spans_take(struct spans *s, size_t first, size_t n)
{
    spans_fill(s->free_bits, first, n, false);
    spans_fill(s->cold_bits, first, n, false);
    spans_fill(s->dirty_bits, first, n, false);
    /* [first, first + n) lay inside one hole, which is gone, unless a part of it remains on
     * either side (one hole), or on both (two). */
    bool left = first > 0 && spans_free_at(s, first - 1);
    bool right = spans_free_at(s, first + n);
    s->holes = s->holes + left + right - 1;
}

void spans_make_cold(struct spans *s, size_t first, size_t n, bool dirty)
{
    spans_fill(s->cold_bits, first, n, true);
    if (dirty)
        spans_fill(s->dirty_bits, first, n, true);
}

bool spans_any_words(const struct spans *s, enum spans_kind kind, size_t first, size_t n)
{
    /* Only the words of the range: spans_next would run on to the next set bit, however far
     * (bench/dual: that scan was 45% of the CPU at 100,000 live functions). */
    const size_t end = first + n, limit = s->words * BITS < end ? s->words * BITS : end;
    for (size_t i = first; i < limit; i = (i / BITS + 1) * BITS) {
        uint64_t x = spans_word(s, kind, i / BITS) >> (i % BITS);
        size_t take = BITS - i % BITS < limit - i ? BITS - i % BITS : limit - i;
        if (take < BITS)
            x &= ((uint64_t)1 << take) - 1;
        if (x != 0)
            return true;
    }
    return false;
}

size_t spans_largest_run(const struct spans *s)
{
    size_t largest = 0, a, b;
    for (size_t i = 0; spans_next_run(s, SPANS_FREE, i, SIZE_MAX, &a, &b); i = b)
        if (b - a > largest)
            largest = b - a;
    return largest;
}

void spans_clear(struct spans *s)
{
    size_t bytes = s->words * sizeof(uint64_t);
    if (bytes > 0) {
        memset(s->free_bits, 0, bytes);
        memset(s->cold_bits, 0, bytes);
        memset(s->dirty_bits, 0, bytes);
    }
    s->hint = s->ready_hint = 0;
    s->holes = 0;
}
