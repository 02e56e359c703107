/*
 * CODE_CACHE_NO_RANDOM=1: placement takes the fitting base nearest to the target (the region
 * centred on it when there is room, else the closest free spot), skips the random probes, and so
 * gives the same layout every time. The library reads the variable once per process, so this
 * program sets it before anything runs.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "place_helpers.h"

#define REACH      (64 * MiB)
#define CACHE_SIZE (1 * MiB)

__attribute__((constructor)) static void disable_random(void)
{
    setenv("CODE_CACHE_NO_RANDOM", "1", 1);
}

static struct test_region create_and_destroy(uintptr_t target)
{
    struct code_cache_options opts = {
        .near = (const void *)target, .size = CACHE_SIZE, .reach = REACH};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "errno %d (%s)", errno, strerror(errno));
    struct test_region r = test_cache_region(cache);
    cr_assert(test_reaches(r.lo, r.hi, target, REACH));
    code_cache_destroy(cache);
    return r;
}

Test(place_norandom, an_empty_window_gives_the_region_centred_on_the_target)
{
    const size_t page = test_page_size(), whole = CACHE_SIZE + 2 * page;
    uintptr_t area = test_free_area(4 * REACH);
    uintptr_t target = area + 2 * REACH + 0x777;
    uintptr_t expected = (target - whole / 2) & ~(uintptr_t)(page - 1);
    for (int i = 0; i < 4; i++) {
        struct test_region r = create_and_destroy(target);
        cr_assert_eq(r.lo, expected, "run %d: at %#lx, expected %#lx", i, (unsigned long)r.lo,
                     (unsigned long)expected);
    }
}

Test(place_norandom, a_crowded_target_gives_the_nearest_free_spot)
{
    /* Taken: 8 MiB below the target to 6 MiB above it. The nearest fitting base is the first one
     * above the crowd, every time. */
    const size_t page = test_page_size();
    uintptr_t area = test_free_area(4 * REACH);
    uintptr_t target = area + 2 * REACH + 0x777;
    uintptr_t lo = (target - 8 * MiB) & ~(uintptr_t)(page - 1);
    uintptr_t hi = (target + 6 * MiB) & ~(uintptr_t)(page - 1);
    struct test_crowd crowd = {0};
    test_crowd_fill(&crowd, lo, hi);
    for (int i = 0; i < 4; i++) {
        struct test_region r = create_and_destroy(target);
        cr_assert_eq(r.lo, hi, "run %d: at %#lx, expected %#lx", i, (unsigned long)r.lo,
                     (unsigned long)hi);
    }
    test_crowd_release(&crowd);
}
