/*
 * Placement in a crowded address space. Each test stages a scene in a free area: a fake target,
 * a small reach (64 MiB on x86-64, so that crowding the window is cheap; on aarch64 the
 * architecture's own +-128 MiB of bl, asked for with reach 0, which is as cheap), and the window
 * filled with mappings of mixed sizes, some of them only partly inside the window. Placement must
 * find the one gap left, never use a gap that is partly out of reach, never disturb a mapping,
 * and when nothing fits fail with ENOMEM leaving nothing behind.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "place_helpers.h"

#define REACH      (TEST_CALL_REACH <= 128 * MiB ? TEST_CALL_REACH : 64 * MiB)
#define OPTS_REACH (REACH == TEST_CALL_REACH ? 0 : REACH) /* 0: the architecture's */
#define CACHE_SIZE (1 * MiB)

struct scene {
    uintptr_t area;   /* 4 * REACH of staged address space */
    uintptr_t target; /* its middle: the window is [target + 1 - REACH, target + 1 + REACH) */
    struct test_crowd crowd;
    char *before; /* the area's lines of /proc/self/maps once staged */
};

static struct scene scene;

static void scene_setup(void)
{
    scene.area = test_free_area(4 * REACH);
    scene.target = scene.area + 2 * REACH + 0x40;
}

static void scene_teardown(void)
{
    test_crowd_release(&scene.crowd);
    free(scene.before);
}

/* Called once the crowd is in place: what the area must still look like after placement. */
static void scene_staged(void)
{
    scene.before = test_maps_lines(scene.area, scene.area + 4 * REACH);
}

static struct code_cache *scene_create(void)
{
    struct code_cache_options opts = {
        .near = (const void *)scene.target, .size = CACHE_SIZE, .reach = OPTS_REACH};
    return code_cache_create(&opts);
}

/* The reservation reaches the target and overlaps no crowd mapping (scene_unchanged checks
 * that they are all still there, unchanged). */
static struct test_region scene_check(struct code_cache *cache)
{
    cr_assert_not_null(cache, "create: errno %d (%s)", errno, strerror(errno));
    struct test_region r = test_cache_region(cache);
    cr_assert(test_reaches(r.lo, r.hi, scene.target, REACH), "[%#lx, %#lx) out of reach",
              (unsigned long)r.lo, (unsigned long)r.hi);
    cr_assert(code_cache_reaches(cache, (const void *)scene.target));
    for (size_t i = 0; i < scene.crowd.count; i++) {
        const struct test_region *m = &scene.crowd.maps[i];
        cr_assert(r.hi <= m->lo || r.lo >= m->hi, "the cache overlaps a crowd mapping");
    }
    return r;
}

/* After destroy (or a failed create), the area is as it was staged. */
static void scene_unchanged(void)
{
    char *after = test_maps_lines(scene.area, scene.area + 4 * REACH);
    cr_assert_str_eq(after, scene.before, "the staged area changed");
    free(after);
}

TestSuite(place_crowded, .init = scene_setup, .fini = scene_teardown);

Test(place_crowded, only_a_gap_above_the_target_remains)
{
    /* Everything from below the window's low edge (a mapping straddles it) up to and including
     * the target's page is taken. */
    const uintptr_t page_mask = ~(uintptr_t)(test_page_size() - 1);
    test_crowd_fill(&scene.crowd, (scene.target + 1 - REACH - 1 * MiB) & page_mask,
                    (scene.target + test_page_size()) & page_mask);
    scene_staged();
    struct code_cache *caches[4];
    for (int i = 0; i < 4; i++) {
        caches[i] = scene_create();
        struct test_region r = scene_check(caches[i]);
        cr_assert(r.lo > scene.target, "placed below the target at %#lx", (unsigned long)r.lo);
    }
    for (int i = 0; i < 4; i++)
        code_cache_destroy(caches[i]);
    scene_unchanged();
}

Test(place_crowded, only_a_gap_below_the_target_remains)
{
    test_crowd_fill(&scene.crowd, scene.target & ~(uintptr_t)(test_page_size() - 1),
                    scene.target + 1 + REACH + 1 * MiB);
    scene_staged();
    for (int i = 0; i < 4; i++) {
        struct code_cache *cache = scene_create();
        struct test_region r = scene_check(cache);
        cr_assert(r.hi <= scene.target, "placed above the target at %#lx", (unsigned long)r.lo);
        code_cache_destroy(cache);
    }
    scene_unchanged();
}

Test(place_crowded, only_a_gap_far_inside_the_reach_remains)
{
    /* The window is full but for two holes big enough for the reservation: one across the
     * window's low edge (half of any region there would be out of reach) and one near the far
     * end of the reach, entirely inside. Only the second may be used. */
    const size_t page = test_page_size(), need = CACHE_SIZE + 2 * page;
    uintptr_t edge = (scene.target + 1 - REACH + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t decoy = edge - need / 2 - page, decoy_end = decoy + need + page;
    uintptr_t hole = edge + 2 * MiB, hole_end = hole + need;
    uintptr_t top = scene.target + 1 + REACH + 1 * MiB;
    test_crowd_fill(&scene.crowd, scene.area + REACH / 2, decoy);
    test_crowd_fill(&scene.crowd, decoy_end, hole);
    test_crowd_fill(&scene.crowd, hole_end, top);
    scene_staged();
    for (int i = 0; i < 3; i++) {
        struct code_cache *cache = scene_create();
        struct test_region r = scene_check(cache);
        cr_assert_eq(r.lo, hole, "placed at %#lx, the only hole in reach is %#lx",
                     (unsigned long)r.lo, (unsigned long)hole);
        code_cache_destroy(cache);
    }
    scene_unchanged();
}

Test(place_crowded, the_scan_picks_among_fitting_gaps_at_random)
{
    /* Two holes of the same size, one on each side of the target: the probes almost never hit
     * them, so the scan decides, and it must not always decide the same (twenty runs on one
     * side happen once in half a million). */
    const size_t page = test_page_size(), need = CACHE_SIZE + 2 * page;
    uintptr_t lo = (scene.target + 1 - REACH - 1 * MiB) & ~(uintptr_t)(page - 1);
    uintptr_t hi = (scene.target + 1 + REACH + 1 * MiB) & ~(uintptr_t)(page - 1);
    uintptr_t below = lo + 16 * MiB, above = hi - 16 * MiB;
    test_crowd_fill(&scene.crowd, lo, below);
    test_crowd_fill(&scene.crowd, below + need, above);
    test_crowd_fill(&scene.crowd, above + need, hi);
    unsigned in_below = 0, in_above = 0;
    for (int i = 0; i < 20; i++) {
        struct code_cache *cache = scene_create();
        struct test_region r = scene_check(cache);
        in_below += r.lo == below;
        in_above += r.lo == above;
        code_cache_destroy(cache);
    }
    cr_assert_eq(in_below + in_above, 20);
    cr_assert(in_below > 0 && in_above > 0, "below %u, above %u", in_below, in_above);
}

Test(place_crowded, the_scan_weighs_gaps_by_their_room)
{
    /* A hole with room for one base and one with room for 64: a gap is picked in proportion to
     * the bases it offers (each base equally likely), not one gap out of two. */
    const size_t page = test_page_size(), need = CACHE_SIZE + 2 * page;
    uintptr_t lo = (scene.target + 1 - REACH - 1 * MiB) & ~(uintptr_t)(page - 1);
    uintptr_t hi = (scene.target + 1 + REACH + 1 * MiB) & ~(uintptr_t)(page - 1);
    uintptr_t small = lo + 16 * MiB, large = hi - 16 * MiB, large_room = need + 63 * page;
    test_crowd_fill(&scene.crowd, lo, small);
    test_crowd_fill(&scene.crowd, small + need, large);
    test_crowd_fill(&scene.crowd, large + large_room, hi);
    unsigned in_small = 0, in_large = 0;
    for (int i = 0; i < 20; i++) {
        struct code_cache *cache = scene_create();
        struct test_region r = scene_check(cache);
        in_small += r.lo == small;
        in_large += r.lo >= large && r.hi <= large + large_room;
        code_cache_destroy(cache);
    }
    cr_assert_eq(in_small + in_large, 20);
    /* Expected: 64 of 65 in the large hole. Picking one gap of two would put about ten in each. */
    cr_assert(in_large >= 16, "small %u, large %u", in_small, in_large);
}

Test(place_crowded, no_gap_left_fails_with_enomem_and_leaves_nothing)
{
    /* Warm up: the metadata arena exists before the reservations are counted. */
    code_cache_destroy(scene_create());
    test_crowd_fill(&scene.crowd, scene.area + REACH / 2, scene.area + 4 * REACH - REACH / 2);
    scene_staged();
    char *reservations = test_maps_reservations(CACHE_SIZE + 2 * test_page_size());
    errno = 0;
    struct code_cache *cache = scene_create();
    cr_assert_null(cache);
    cr_assert_eq(errno, ENOMEM, "errno %d (%s)", errno, strerror(errno));
    scene_unchanged();
    /* No reservation of the cache's size was left anywhere (a miss returned far away included). */
    char *after = test_maps_reservations(CACHE_SIZE + 2 * test_page_size());
    cr_assert_str_eq(after, reservations, "a PROT_NONE mapping appeared or vanished");
    free(after);
    free(reservations);
}

Test(place_crowded, a_window_of_single_pages_is_searched_to_its_far_end)
{
    /* One page mapped, one page free, across the whole window: a map of a thousand lines more,
     * read in many read(2) calls through a buffer refilled many times, and no gap of more than a
     * page. A cache of two pages plus its guard pages needs four: ENOMEM. Then a five-page gap is
     * opened near the far end of the window, and the scan must find it among all the lines.
     * The reach is 4 MiB here: valgrind 3.19 cannot track many more mappings (VG_N_SEGMENTS). */
    const size_t page = test_page_size(), reach = 4 * MiB;
    uintptr_t lo = (scene.target + 1 - reach - page) & ~(uintptr_t)(page - 1);
    uintptr_t hi = scene.target + 1 + reach + page;
    for (uintptr_t at = lo; at < hi; at += 2 * page)
        test_crowd_fill(&scene.crowd, at, at + page);
    scene_staged();
    struct code_cache_options opts = {
        .near = (const void *)scene.target, .size = 2 * page, .reach = reach};
    errno = 0;
    cr_assert_null(code_cache_create(&opts));
    cr_assert_eq(errno, ENOMEM, "errno %d", errno);
    scene_unchanged();

    /* Unmap two neighbouring crowd pages 64 pages below the window's end. */
    size_t k = scene.crowd.count - 40;
    struct test_region *m = &scene.crowd.maps[k];
    uintptr_t gap_lo = m[0].lo - page, gap_hi = m[1].hi + page;
    cr_assert(gap_hi <= scene.target + 1 + reach && m[1].lo == m[0].lo + 2 * page);
    munmap((void *)m[0].lo, page);
    munmap((void *)m[1].lo, page);
    m[0] = m[1] = (struct test_region){0, 0};
    struct code_cache *cache = code_cache_create(&opts);
    struct test_region r = scene_check(cache);
    cr_assert(test_reaches(r.lo, r.hi, scene.target, reach));
    cr_assert(r.lo >= gap_lo && r.hi <= gap_hi, "placed at [%#lx, %#lx), the gap is [%#lx, %#lx)",
              (unsigned long)r.lo, (unsigned long)r.hi, (unsigned long)gap_lo,
              (unsigned long)gap_hi);
    code_cache_destroy(cache);
}
