/*
 * Shared fixtures of the placement tests (place_helpers.h). They call the real mmap: a test that
 * interposes mmap passes calls that do not come from the library straight through.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "place_helpers.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

uintptr_t test_mmap_min_addr(void)
{
    uintptr_t value = 65536;
    FILE *f = fopen("/proc/sys/vm/mmap_min_addr", "r");
    if (f != NULL) {
        unsigned long v;
        if (fscanf(f, "%lu", &v) == 1)
            value = v;
        fclose(f);
    }
    return value;
}

struct test_region test_cache_usable(const struct code_cache *cache)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    return (struct test_region){st.base, st.base + st.reserved};
}

struct test_region test_cache_region(const struct code_cache *cache)
{
    struct test_region r = test_cache_usable(cache);
    return (struct test_region){r.lo - test_page_size(), r.hi + test_page_size()};
}

/* Where a branch starting at a counts its displacement from. */
static __int128 test_origin(uintptr_t a)
{
    return (__int128)a + (TEST_ORIGIN_IS_THE_END ? TEST_BRANCH_SIZE : 0);
}

bool test_reaches(uintptr_t lo, uintptr_t hi, uintptr_t t, size_t reach)
{
    if (hi < lo + TEST_BRANCH_SIZE)
        return false;
    __int128 r = (__int128)reach;
    /* The first branch in the range starts at lo, the last at hi - TEST_BRANCH_SIZE. */
    __int128 farthest_forward = (__int128)t - test_origin(lo);
    __int128 farthest_backward = (__int128)t - test_origin(hi - TEST_BRANCH_SIZE);
    return farthest_forward <= r - 1 && farthest_backward >= -r;
}

uintptr_t test_unreachable_above(uintptr_t lo, size_t reach)
{
    return (uintptr_t)(test_origin(lo) + (__int128)reach);
}

uintptr_t test_unreachable_below(uintptr_t hi, size_t reach)
{
    return (uintptr_t)(test_origin(hi - TEST_BRANCH_SIZE) - (__int128)reach - 1);
}

uintptr_t test_free_area(size_t len)
{
    /* 3/8, 5/16, 13/32 and 17/64 of the way up the user address space: on x86-64 0x300000000000,
     * 0x280000000000, 0x340000000000 and 0x220000000000. */
    static const unsigned sixty_fourths[] = {24, 20, 26, 17};
    const unsigned bits = 64u - (unsigned)__builtin_clzl(TEST_USER_TOP - 1);
    const uintptr_t step = ((uintptr_t)1 << bits) / 64;
    uintptr_t candidates[sizeof sixty_fourths / sizeof sixty_fourths[0]];
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++)
        candidates[i] = sixty_fourths[i] * step;
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        void *p = mmap((void *)candidates[i], len, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
        if (p == MAP_FAILED)
            continue;
        munmap(p, len);
        if ((uintptr_t)p == candidates[i])
            return candidates[i];
    }
    cr_assert_fail("no free area of %zu bytes for the test", len);
    return 0;
}

void test_crowd_fill(struct test_crowd *crowd, uintptr_t lo, uintptr_t hi)
{
    /* Sizes in pages: single pages, odd sizes, and a few large ones, so the walk meets every
     * kind of neighbour and mappings that are only partly inside a window. */
    static const size_t pattern[] = {1, 3, 16, 2, 64, 1, 257, 5, 1024, 7, 129};
    const size_t page = test_page_size();
    size_t i = crowd->count;
    for (uintptr_t at = lo; at < hi; i++) {
        size_t len = pattern[i % (sizeof pattern / sizeof pattern[0])] * page;
        if (len > hi - at)
            len = hi - at;
        int prot = i % 2 ? PROT_READ : PROT_NONE;
        void *p = mmap((void *)at, len, prot,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
        cr_assert(p == (void *)at, "crowd mapping at %#lx: got %p", (unsigned long)at, p);
        if (crowd->count == crowd->cap) {
            crowd->cap = crowd->cap ? 2 * crowd->cap : 256;
            crowd->maps = realloc(crowd->maps, crowd->cap * sizeof *crowd->maps);
            cr_assert_not_null(crowd->maps);
        }
        crowd->maps[crowd->count++] = (struct test_region){at, at + len};
        at += len;
    }
}

void test_crowd_release(struct test_crowd *crowd)
{
    for (size_t i = 0; i < crowd->count; i++)
        munmap((void *)crowd->maps[i].lo, crowd->maps[i].hi - crowd->maps[i].lo);
    free(crowd->maps);
    *crowd = (struct test_crowd){0};
}

/* Appends the lines of /proc/self/maps that pass keep() to one string. */
static char *test_maps_filter(bool (*keep)(const char *line, uintptr_t lo, uintptr_t hi, void *),
                              void *arg)
{
    FILE *f = fopen("/proc/self/maps", "r");
    cr_assert_not_null(f);
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    cr_assert_not_null(out);
    out[0] = '\0';
    char line[512];
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) != 2 || !keep(line, lo, hi, arg))
            continue;
        size_t n = strlen(line);
        while (len + n + 1 > cap) {
            cap *= 2;
            out = realloc(out, cap);
            cr_assert_not_null(out);
        }
        memcpy(out + len, line, n + 1);
        len += n;
    }
    fclose(f);
    return out;
}

static bool test_keep_intersecting(const char *line, uintptr_t lo, uintptr_t hi, void *arg)
{
    (void)line;
    const struct test_region *r = arg;
    return lo < r->hi && hi > r->lo;
}

char *test_maps_lines(uintptr_t lo, uintptr_t hi)
{
    struct test_region r = {lo, hi};
    return test_maps_filter(test_keep_intersecting, &r);
}

static bool test_keep_reservation(const char *line, uintptr_t lo, uintptr_t hi, void *arg)
{
    /* Only reservations of the library's size: the sanitizers' allocators make PROT_NONE
     * mappings of their own at any time. "lo-hi ---p 00000000 00:00 0", nothing after the inode. */
    if (hi - lo != *(const size_t *)arg)
        return false;
    char perms[5], dev[16];
    unsigned long offset, inode;
    int end = 0;
    if (sscanf(line, "%*x-%*x %4s %lx %15s %lu %n", perms, &offset, dev, &inode, &end) < 4)
        return false;
    return strcmp(perms, "---p") == 0 && inode == 0 && line[end] == '\0';
}

char *test_maps_reservations(size_t len)
{
    return test_maps_filter(test_keep_reservation, &len);
}
