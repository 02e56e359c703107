/*
 * Placement without /proc (a chroot or a container that does not mount it), simulated by
 * interposing open: every /proc file the library tries to open fails with ENOENT. The map cannot
 * be read, so placement falls back to random probes (more of them), with vm.mmap_min_addr taken
 * as the usual 64 KiB. It must still return a cache in reach, or ENOMEM leaving nothing behind.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "helpers.h"
#include "place_helpers.h"
#include "open_hook.h"

#define REACH      (64 * MiB)
#define CACHE_SIZE (1 * MiB)

static atomic_uint proc_opens_refused;

/* The library's opens of /proc files are refused (open_hook.h). */
int open_hook(const void *caller, const char *path, int flags, mode_t mode)
{
    if (strncmp(path, "/proc/", 6) == 0 && test_called_from_library(caller)) {
        atomic_fetch_add(&proc_opens_refused, 1);
        errno = ENOENT;
        return -1;
    }
    return open_hook_syscall(path, flags, mode);
}

static uintptr_t area, target;
static struct test_crowd crowd;

static void scene_setup(void)
{
    area = test_free_area(4 * REACH);
    target = area + 2 * REACH + 0x40;
}

static void scene_teardown(void)
{
    test_crowd_release(&crowd);
}

static struct code_cache *scene_create(void)
{
    struct code_cache_options opts = {
        .near = (const void *)target, .size = CACHE_SIZE, .reach = REACH};
    return code_cache_create(&opts);
}

TestSuite(place_no_proc, .init = scene_setup, .fini = scene_teardown);

Test(place_no_proc, a_half_full_window_is_placed_by_blind_probes)
{
    /* Below the target everything is taken: about half of the random probes fail, and only the
     * ones above can succeed. */
    const uintptr_t page_mask = ~(uintptr_t)(test_page_size() - 1);
    test_crowd_fill(&crowd, area + REACH / 2, (target + test_page_size()) & page_mask);
    for (int i = 0; i < 4; i++) {
        struct code_cache *cache = scene_create();
        cr_assert_not_null(cache, "errno %d (%s)", errno, strerror(errno));
        struct test_region r = test_cache_region(cache);
        cr_assert(test_reaches(r.lo, r.hi, target, REACH));
        cr_assert(r.lo > target);
        code_cache_destroy(cache);
    }
    cr_assert(proc_opens_refused >= 1, "the library opened no /proc file");
}

Test(place_no_proc, blind_probes_reach_the_middle_of_a_narrow_window)
{
    /* Both ends of the window taken, well past 1/16 of it, the middle free: in a narrow window
     * the first probes go near its ends (lib/place.c), and if the blind ones did too, nothing
     * would ever be found. */
    const uintptr_t page_mask = ~(uintptr_t)(test_page_size() - 1);
    const uintptr_t lo = target + 1 - REACH, hi = target + 1 + REACH;
    test_crowd_fill(&crowd, area + REACH / 2, (lo + 2 * REACH / 16 + 2 * CACHE_SIZE) & page_mask);
    test_crowd_fill(&crowd, (hi - 2 * REACH / 16 - 3 * CACHE_SIZE) & page_mask,
                    area + 4 * REACH - REACH / 2);
    for (int i = 0; i < 4; i++) {
        struct code_cache *cache = scene_create();
        cr_assert_not_null(cache, "errno %d (%s)", errno, strerror(errno));
        struct test_region r = test_cache_region(cache);
        cr_assert(test_reaches(r.lo, r.hi, target, REACH));
        code_cache_destroy(cache);
    }
    cr_assert(proc_opens_refused >= 1, "the library opened no /proc file");
}

Test(place_no_proc, a_full_window_fails_with_enomem_and_leaves_nothing)
{
    code_cache_destroy(scene_create()); /* the metadata arena exists before counting */
    test_crowd_fill(&crowd, area + REACH / 2, area + 4 * REACH - REACH / 2);
    char *before = test_maps_reservations(CACHE_SIZE + 2 * test_page_size());
    errno = 0;
    cr_assert_null(scene_create());
    cr_assert_eq(errno, ENOMEM, "errno %d (%s)", errno, strerror(errno));
    char *after = test_maps_reservations(CACHE_SIZE + 2 * test_page_size());
    cr_assert_str_eq(after, before, "a PROT_NONE mapping appeared or vanished");
    free(after);
    free(before);
}
