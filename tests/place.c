/*
 * Near placement through the public API: a cache created near a target lies within reach of it,
 * wherever the target is (the test binary, libc, just above vm.mmap_min_addr, just below the top
 * of the user address space), and the errors for impossible requests are the documented ones.
 * Every reach is checked with an independent computation (test_reaches), not the library's.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "place_helpers.h"

/* A function of the test binary itself. noinline and used: its address is the target. */
static __attribute__((noinline, used)) int place_test_helper(int x)
{
    return x + 1;
}

/* Creates a cache near target and checks that every byte of it reaches target, that the library
 * agrees, and that it does not claim to reach an address clearly out of reach. */
static struct code_cache *create_near(const void *target, size_t size, size_t reach)
{
    struct code_cache_options opts = {.near = target, .size = size, .reach = reach};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "create near %p: errno %d (%s)", target, errno, strerror(errno));

    size_t r = reach ? reach : TEST_CALL_REACH;
    struct test_region usable = test_cache_usable(cache);
    struct test_region whole = test_cache_region(cache);
    uintptr_t t = (uintptr_t)target;
    cr_assert(test_reaches(usable.lo, usable.hi, t, r), "[%#lx, %#lx) does not reach %p",
              (unsigned long)usable.lo, (unsigned long)usable.hi, target);
    /* The placement promise covers the guard pages too (the window is for the reservation). */
    cr_assert(test_reaches(whole.lo, whole.hi, t, r));
    cr_assert(whole.lo >= test_mmap_min_addr() && whole.hi <= TEST_USER_TOP);
    cr_assert(mapped_bytes((const void *)whole.lo, whole.hi - whole.lo) == whole.hi - whole.lo,
              "the reservation is not mapped");
    cr_assert(code_cache_reaches(cache, target));

    /* Just out of reach on either side of the cache, when that address exists, and the bytes
     * next to them just in reach: the rule is exact, not one byte off. */
    uintptr_t beyond = test_unreachable_above(usable.lo, r);
    cr_assert(!test_reaches(usable.lo, usable.hi, beyond, r));
    cr_assert(!code_cache_reaches(cache, (const void *)beyond));
    cr_assert(test_reaches(usable.lo, usable.hi, beyond - 1, r));
    cr_assert(code_cache_reaches(cache, (const void *)(beyond - 1)), "%#lx is in reach",
              (unsigned long)(beyond - 1));
    if (usable.hi > r + TEST_BRANCH_SIZE) {
        uintptr_t below = test_unreachable_below(usable.hi, r);
        cr_assert(!test_reaches(usable.lo, usable.hi, below, r));
        cr_assert(!code_cache_reaches(cache, (const void *)below), "%#lx is out of reach",
                  (unsigned long)below);
        cr_assert(test_reaches(usable.lo, usable.hi, below + 1, r));
        cr_assert(code_cache_reaches(cache, (const void *)(below + 1)));
    }
    return cache;
}

Test(place, near_a_function_of_the_test_binary)
{
    struct code_cache *cache = create_near((const void *)place_test_helper, 0, 0);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.reserved, 64 * MiB, "size 0 means 64 MiB, got %zu", st.reserved);
    cr_assert_eq(st.near, (const void *)place_test_helper);
    cr_assert_eq(st.reach, TEST_CALL_REACH);
    code_cache_destroy(cache);
}

Test(place, near_a_function_of_libc)
{
    /* libc's own printf, looked up in libc itself: a sanitizer runtime interposes the global
     * symbol with its own. */
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    cr_assert_not_null(libc, "libc.so.6 is not loaded: %s", dlerror());
    const void *target = dlsym(libc, "printf");
    Dl_info info;
    cr_assert(target != NULL && dladdr(target, &info) != 0 &&
                  strstr(info.dli_fname, "libc") != NULL,
              "printf is not in libc here: %s", target ? info.dli_fname : "(none)");
    code_cache_destroy(create_near(target, 4 * MiB, 0));
    dlclose(libc);
}

Test(place, near_an_address_just_above_mmap_min_addr)
{
    /* Nothing needs to be mapped at the target. Below it there is no room at all: the window
     * is clipped at vm.mmap_min_addr, and "target - reach" must not wrap. */
    uintptr_t target = test_mmap_min_addr() + 0x1234;
    code_cache_destroy(create_near((const void *)target, 16 * MiB, 0));
    code_cache_destroy(create_near((const void *)target, 1 * MiB, 64 * MiB));
}

Test(place, near_the_top_of_the_user_address_space)
{
    uintptr_t target = TEST_USER_TOP - 1 * MiB;
    code_cache_destroy(create_near((const void *)target, 16 * MiB, 0));
    code_cache_destroy(create_near((const void *)target, 1 * MiB, 64 * MiB));
}

Test(place, with_a_small_reach)
{
    code_cache_destroy(create_near((const void *)place_test_helper, 256 * 1024, 32 * MiB));
}

Test(place, lands_on_both_sides_of_the_target_at_random)
{
    /* In an empty area either end of the window (narrow: 128 MiB) is equally likely, so 16
     * placements that all land on the same side would happen once in 32768 runs. */
    const size_t reach = 64 * MiB;
    uintptr_t area = test_free_area(4 * reach);
    uintptr_t target = area + 2 * reach + 0x123;
    unsigned below = 0, above = 0;
    uintptr_t first = 0;
    bool moved = false;
    for (int i = 0; i < 16; i++) {
        struct code_cache *cache = create_near((const void *)target, 1 * MiB, reach);
        struct test_region r = test_cache_region(cache);
        if (r.hi <= target)
            below++;
        else if (r.lo > target)
            above++;
        if (i == 0)
            first = r.lo;
        else if (r.lo != first)
            moved = true;
        code_cache_destroy(cache);
    }
    cr_assert(below > 0 && above > 0, "below %u, above %u", below, above);
    cr_assert(moved, "every placement chose %#lx", (unsigned long)first);
}

Test(place, a_narrow_window_keeps_room_for_a_larger_cache)
{
    /* A 128 MiB window, empty: a 4 MiB cache, then a 100 MiB one. At a uniformly random base,
     * the small one would leave less than 100 MiB on both sides of itself whenever it landed
     * between 24 and 100 MiB from the window's bottom, 61% of the time, so the large one would
     * fail in nearly every run of 8. Near an end of its gap (within 1/16 of the window), it
     * never does. */
    const size_t reach = 64 * MiB;
    uintptr_t area = test_free_area(4 * reach);
    const void *target = (const void *)(area + 2 * reach);
    unsigned low_end = 0, high_end = 0;
    for (int i = 0; i < 8; i++) {
        struct code_cache *small = create_near(target, 4 * MiB, reach);
        struct code_cache *large = create_near(target, 100 * MiB, reach);
        struct test_region r = test_cache_region(small);
        if (r.lo < area + 2 * reach)
            low_end++;
        else
            high_end++;
        code_cache_destroy(large);
        code_cache_destroy(small);
    }
    /* Still random: both ends are taken (all 8 at one end: once in 128 runs, so the test asks
     * for both only over the 8 runs and a second round when it misses). */
    for (int i = 0; i < 8 && (low_end == 0 || high_end == 0); i++) {
        struct code_cache *small = create_near(target, 4 * MiB, reach);
        if (test_cache_region(small).lo < area + 2 * reach)
            low_end++;
        else
            high_end++;
        code_cache_destroy(small);
    }
    cr_assert(low_end > 0 && high_end > 0, "low end %u, high end %u", low_end, high_end);
}

Test(place, fills_an_exact_window_to_the_byte)
{
    /* A target t is reached from every branch of the reservation [lo, hi) when the first branch
     * reaches forward and the last one backward. x86-64 (rel32 counts from the end of the 5-byte
     * call): t - (lo + 5) <= R - 1 and t - hi >= -R, so the reservation lies in [t - R - 4,
     * t + R). aarch64 (bl counts from itself, 4 bytes): t - lo <= R - 1 and t - (hi - 4) >= -R,
     * so it lies in [t - R + 1, t + R + 4). With t chosen so that the top of that window is
     * page aligned (t = area + 2 R, or area + 2 R - 4), a cache of 2 R minus its two guard pages
     * fits only at [area + R, area + 3 R). */
    const size_t reach = 16 * MiB, page = test_page_size();
    uintptr_t area = test_free_area(4 * reach);
    uintptr_t target = area + 2 * reach - (TEST_ORIGIN_IS_THE_END ? 0 : TEST_BRANCH_SIZE);
    struct code_cache *cache = create_near((const void *)target, 2 * reach - 2 * page, reach);
    struct test_region r = test_cache_region(cache);
    cr_assert_eq(r.lo, area + reach);
    cr_assert_eq(r.hi, area + 3 * reach);
    code_cache_destroy(cache);

    /* One byte lower and the window's top loses a page to alignment: ERANGE. */
    struct code_cache_options opts = {
        .near = (const void *)(target - 1), .size = 2 * reach - 2 * page, .reach = reach};
    errno = 0;
    cr_assert_null(code_cache_create(&opts));
    cr_assert_eq(errno, ERANGE, "errno %d", errno);
}

Test(place, size_larger_than_the_window_is_einval)
{
    struct code_cache_options opts = {.near = (const void *)place_test_helper, .size = 5 * GiB};
    errno = 0;
    cr_assert_null(code_cache_create(&opts));
    cr_assert_eq(errno, EINVAL);

    /* Exactly 2 * reach leaves no room for the guard pages. */
    opts.size = 2 * 64 * MiB;
    opts.reach = 64 * MiB;
    errno = 0;
    cr_assert_null(code_cache_create(&opts));
    cr_assert_eq(errno, EINVAL);

    opts.size = 1 * MiB;
    opts.reach = 2 * TEST_CALL_REACH; /* more than the direct call can do */
    errno = 0;
    cr_assert_null(code_cache_create(&opts));
    cr_assert_eq(errno, EINVAL);
}

Test(place, target_above_the_user_address_space_is_erange)
{
    /* [vsyscall] lives here on x86-64: mapped, but no user mapping can be within reach. */
    struct code_cache_options opts = {.near = (const void *)0xffffffffff600000, .size = 1 * MiB};
    errno = 0;
    cr_assert_null(code_cache_create(&opts));
    cr_assert_eq(errno, ERANGE, "errno %d", errno);

    /* Top of the address space as an address: "target + reach" must not wrap either, and the
     * answer is the one the header promises (before the fix, the target's end wrapped to 0 and
     * gave EINVAL). */
    opts.near = (const void *)UINTPTR_MAX;
    errno = 0;
    cr_assert_null(code_cache_create(&opts));
    cr_assert_eq(errno, ERANGE, "errno %d", errno);
}

Test(place, near_null_places_anywhere)
{
    struct code_cache *cache = code_cache_create(NULL);
    cr_assert_not_null(cache, "errno %d", errno);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.reserved, 64 * MiB);
    cr_assert_null(st.near);
    struct test_region r = test_cache_region(cache);
    cr_assert(mapped_bytes((const void *)r.lo, r.hi - r.lo) == r.hi - r.lo);
    code_cache_destroy(cache);

    struct code_cache_options opts = {.size = 3 * MiB + 1};
    cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "errno %d", errno);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.reserved, 3 * MiB + test_page_size(), "size rounds up to pages");
    code_cache_destroy(cache);
}

Test(place, destroy_unmaps_the_reservation)
{
    struct code_cache *cache = create_near((const void *)place_test_helper, 1 * MiB, 0);
    struct test_region r = test_cache_region(cache);
    code_cache_destroy(cache);
    char *left = test_maps_lines(r.lo, r.hi);
    cr_assert_str_empty(left, "still mapped after destroy:\n%s", left);
    free(left);
}

Test(place, never_in_the_room_the_main_stack_grows_into)
{
    /* The main thread's stack grows down from its [stack] mapping (up to RLIMIT_STACK, and the
     * kernel keeps at least 128 MiB free below it for that) until it meets the mapping below it.
     * A target just below the stack, with a 64 MiB reach, leaves room only above the stack, or
     * below that mapping when it is close (qemu-user gives its guest a stack of a fixed size just
     * above the program). */
    FILE *f = fopen("/proc/self/maps", "r");
    cr_assert_not_null(f);
    char line[512];
    unsigned long stack_lo = 0, stack_hi = 0, below = 0, lo, hi;
    while (fgets(line, sizeof line, f) != NULL) {
        cr_assert_eq(sscanf(line, "%lx-%lx", &lo, &hi), 2);
        if (strstr(line, " [stack]") != NULL) {
            stack_lo = lo;
            stack_hi = hi;
        } else if (stack_hi == 0) {
            below = hi; /* the end of the last mapping below the stack so far */
        }
    }
    fclose(f);
    cr_assert(stack_hi > stack_lo, "no [stack] line");
    for (int i = 0; i < 8; i++) {
        struct code_cache *cache = create_near((const void *)stack_lo, 1 * MiB, 64 * MiB);
        struct test_region r = test_cache_region(cache);
        cr_assert(r.lo >= stack_hi || r.hi <= below,
                  "placed at %#lx, below the stack at %#lx, above the mapping below it (%#lx)",
                  (unsigned long)r.lo, stack_lo, below);
        code_cache_destroy(cache);
    }
}
