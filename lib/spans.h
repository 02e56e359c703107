/*
 * spans.c: the free-span index of a cache, one bit per granule below the bump pointer (a page
 * with the mprotect backend, 64 bytes with the dual-mapped one), grown as the bump pointer
 * advances. Three bitmaps:
 *   free  - the granule can be handed out;
 *   cold  - free, but its page is not ready: inaccessible and discarded (mprotect: every freed
 *           page; dual: pages given back to the system), so it must be committed first;
 *   dirty - cold, but its memory could not be discarded: it may still hold old code, so it is
 *           discarded before it is ever made writable.
 * The caller holds the cache's lock.
 */
#ifndef CODE_CACHE_SPANS_H
#define CODE_CACHE_SPANS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct meta;

struct spans {
    uint64_t *free_bits, *cold_bits, *dirty_bits;
    size_t words;      /* length of the bitmaps */
    size_t max_words;  /* enough words for every granule of the cache */
    size_t hint;       /* no free bit below word hint */
    size_t ready_hint; /* no ready (free, not cold) bit below word ready_hint */
    size_t holes;      /* maximal runs of free granules: the freed spans */
};

enum spans_kind { SPANS_FREE, SPANS_COLD, SPANS_DIRTY, SPANS_READY /* free and not cold */ };

void spans_init(struct spans *s, size_t granules);
void spans_release(struct spans *s, struct meta *m);
/* Makes room for granules [0, n), before the bump pointer passes them: 0, or -1 + ENOMEM. */
int spans_reserve(struct spans *s, struct meta *m, size_t n);
/* The first granule of the lowest run of n free granules (address-ordered first fit), or
 * SIZE_MAX. */
size_t spans_find(struct spans *s, size_t n);
/* The first granule of the lowest run of n ready granules, looking at no more than max_runs runs
 * of ready granules (a bounded search: the caller falls back to spans_find), or SIZE_MAX. */
size_t spans_find_ready(struct spans *s, size_t n, size_t max_runs);
/* Marks [first, first + n), in use until now, free; cold and dirty as told. */
void spans_put(struct spans *s, size_t first, size_t n, bool cold, bool dirty);
/* Marks [first, first + n), free until now, in use (and neither cold nor dirty: the caller
 * commits what was cold). */
void spans_take(struct spans *s, size_t first, size_t n);
/* Marks free granules [first, first + n) cold (their pages were given back), dirty as told. */
void spans_make_cold(struct spans *s, size_t first, size_t n, bool dirty);
/* spans_any across words. */
bool spans_any_words(const struct spans *s, enum spans_kind kind, size_t first, size_t n);
/* The next maximal run [*start, *end) of granules with the property, beginning at or after from
 * and cut at limit; false when there is none. */
bool spans_next_run(const struct spans *s, enum spans_kind kind, size_t from, size_t limit,
                    size_t *start, size_t *end);
/* The length of the longest run of free granules (for error messages: a full scan). */
size_t spans_largest_run(const struct spans *s);
void spans_clear(struct spans *s); /* nothing free, cold or dirty */

/* Word w of the bitmap of a property. */
static inline __attribute__((always_inline)) uint64_t spans_word(const struct spans *s,
                                                                 enum spans_kind kind, size_t w)
{
    switch (kind) {
    case SPANS_FREE:
        return s->free_bits[w];
    case SPANS_COLD:
        return s->cold_bits[w];
    case SPANS_DIRTY:
        return s->dirty_bits[w];
    case SPANS_READY:
        return s->free_bits[w] & ~s->cold_bits[w];
    }
    return 0;
}

/* True when any granule of [first, first + n) has the property. Inline for a range inside one word
 * of the bitmaps, which is what an allocation asks (a chunk of up to 4 KiB of 64-byte granules,
 * or of 256 KiB of pages). */
static inline bool spans_any(const struct spans *s, enum spans_kind kind, size_t first, size_t n)
{
    const size_t shift = first % 64;
    if (shift + n < 64 && first / 64 < s->words)
        return (spans_word(s, kind, first / 64) >> shift & (((uint64_t)1 << n) - 1)) != 0;
    return spans_any_words(s, kind, first, n);
}

/* No granule below this one is ready: where a search for ready granules starts. */
static inline size_t spans_ready_floor(const struct spans *s)
{
    return s->ready_hint * 64; /* granules per word of the bitmaps */
}

/* The number of freed spans: maximal runs of free granules below the bump pointer. Kept up to date
 * by spans_put, spans_take and spans_clear at no extra search. */
static inline size_t spans_holes(const struct spans *s)
{
    return s->holes;
}

#endif
