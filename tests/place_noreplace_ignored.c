/*
 * A kernel that ignores MAP_FIXED_NOREPLACE (Linux before 4.17; valgrind and emulators on an
 * occupied spot), simulated by interposing mmap: for calls from the library the flag is dropped,
 * so an occupied spot yields a mapping somewhere else instead of EEXIST. Placement must notice,
 * unmap what landed out of reach, go on with plain hints, and still return a cache in reach, or
 * ENOMEM with every stray mapping unmapped. The interposer counts the library's calls (so the
 * tests prove the fallback really ran) and tracks its live mappings (so they prove nothing
 * leaked, wherever the kernel put it).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "helpers.h"
#include "place_helpers.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define REACH      (64 * MiB)
#define CACHE_SIZE (1 * MiB)

static atomic_uint noreplace_calls;  /* the library asked for NOREPLACE (and did not get it) */
static atomic_uint hint_calls;       /* the library passed a plain, non-NULL hint */
static atomic_uint moved;            /* a mapping landed elsewhere than asked */
static atomic_int live_reservations; /* library mappings not unmapped yet */

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t offset)
{
    bool ours = test_called_from_library(__builtin_return_address(0));
    if (ours) {
        if (flags & MAP_FIXED_NOREPLACE)
            atomic_fetch_add(&noreplace_calls, 1);
        else if (addr != NULL)
            atomic_fetch_add(&hint_calls, 1);
        /* The old kernel: the unknown flag means nothing, the address is a hint. */
        flags &= ~MAP_FIXED_NOREPLACE;
    }
    long p = syscall(SYS_mmap, addr, len, prot, flags, fd, offset);
    if (p == -1)
        return MAP_FAILED;
    if (ours && prot == PROT_NONE) {
        atomic_fetch_add(&live_reservations, 1);
        if (addr != NULL && (void *)p != addr)
            atomic_fetch_add(&moved, 1);
    }
    return (void *)p;
}

int munmap(void *addr, size_t len)
{
    bool ours = test_called_from_library(__builtin_return_address(0));
    long r = syscall(SYS_munmap, addr, len);
    /* The library unmaps only whole reservations of its own (placement misses and destroy). */
    if (r == 0 && ours)
        atomic_fetch_sub(&live_reservations, 1);
    return r == 0 ? 0 : -1;
}

struct scene {
    uintptr_t area, target;
    struct test_crowd crowd;
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
}

static struct code_cache *scene_create_sized(size_t size)
{
    struct code_cache_options opts = {
        .near = (const void *)scene.target, .size = size, .reach = REACH};
    return code_cache_create(&opts);
}

static struct code_cache *scene_create(void)
{
    return scene_create_sized(CACHE_SIZE);
}

TestSuite(place_noreplace_ignored, .init = scene_setup, .fini = scene_teardown);

Test(place_noreplace_ignored, an_empty_window_works_as_before)
{
    struct code_cache *cache = scene_create();
    cr_assert_not_null(cache, "errno %d", errno);
    struct test_region r = test_cache_region(cache);
    cr_assert(test_reaches(r.lo, r.hi, scene.target, REACH));
    cr_assert(noreplace_calls >= 1, "the interposer saw no call from the library");
    cr_assert_eq(live_reservations, 1);
    code_cache_destroy(cache);
    cr_assert_eq(live_reservations, 0);
}

Test(place_noreplace_ignored, a_crowded_window_falls_back_to_verified_hints)
{
    /* The window is full but for one hole far from the target, so the random probes all hit
     * occupied spots: each comes back somewhere else, and only the fallback finds the hole. The
     * cache is large (16 MiB of a 128 MiB window) so that many probes overlap the hole in part:
     * a refused probe must not make the hole itself look taken. */
    const size_t page = test_page_size(), size = 16 * MiB, need = size + 2 * page;
    uintptr_t hole = ((scene.target + 1 - REACH) & ~(uintptr_t)(page - 1)) + 4 * MiB;
    test_crowd_fill(&scene.crowd, scene.area + REACH / 2, hole);
    test_crowd_fill(&scene.crowd, hole + need, scene.area + 4 * REACH - REACH / 2);
    char *before = test_maps_lines(scene.area, scene.area + 4 * REACH);

    for (int i = 0; i < 6; i++) {
        struct code_cache *cache = scene_create_sized(size);
        cr_assert_not_null(cache, "run %d: errno %d (%s)", i, errno, strerror(errno));
        struct test_region r = test_cache_region(cache);
        cr_assert(test_reaches(r.lo, r.hi, scene.target, REACH));
        cr_assert(code_cache_reaches(cache, (const void *)scene.target));
        cr_assert_eq(r.lo, hole, "placed at %#lx, the hole is at %#lx", (unsigned long)r.lo,
                     (unsigned long)hole);
        cr_assert_eq(live_reservations, 1, "%d library mappings alive", live_reservations);
        code_cache_destroy(cache);
        cr_assert_eq(live_reservations, 0);
    }
    /* The flag was tried, seen ignored (a probe came back elsewhere), and then given up for
     * plain hints. */
    cr_assert(noreplace_calls >= 1 && moved >= 1 && hint_calls >= 1,
              "noreplace %u, moved %u, hints %u", noreplace_calls, moved, hint_calls);

    char *after = test_maps_lines(scene.area, scene.area + 4 * REACH);
    cr_assert_str_eq(after, before, "a crowd mapping was disturbed");
    free(after);
    free(before);
}

Test(place_noreplace_ignored, a_full_window_fails_with_enomem_and_unmaps_every_miss)
{
    test_crowd_fill(&scene.crowd, scene.area + REACH / 2, scene.area + 4 * REACH - REACH / 2);
    errno = 0;
    cr_assert_null(scene_create());
    cr_assert_eq(errno, ENOMEM, "errno %d (%s)", errno, strerror(errno));
    cr_assert(moved >= 1, "no probe came back elsewhere");
    cr_assert_eq(live_reservations, 0, "%d library mappings leaked", live_reservations);
}
