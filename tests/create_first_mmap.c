/*
 * code_cache_create when mmap fails: the very first mmap (near == NULL: the reservation anywhere;
 * near a helper: the first probe), and then each mmap of a create in turn, on both backends.
 * create must return NULL with the injected errno after exactly the calls expected, and never
 * unmap what it did not map: a failed mmap taken for an address ((void *)-1, MAP_FAILED) would
 * be "moved" and unmapped, or become the region (lib/os.c, os_reserve).
 *
 * The interposer here records every mmap and munmap the library makes (test programs are linked
 * with -rdynamic: the library's calls bind to these) and can fail the nth mmap.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "code_cache.h"
#include "helpers.h"

#define MAX_CALLS 256

static struct {
    unsigned fail_nth; /* 0: none */
    int err;
    unsigned mmaps, munmaps, mprotects;
    struct {
        uintptr_t lo, hi;
    } mapped[MAX_CALLS];
    unsigned nmapped;
    bool stray; /* an munmap of something the library never mapped */
    uintptr_t stray_addr;
} rec;

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (!test_called_from_library(__builtin_return_address(0)))
        return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
    rec.mmaps++;
    if (rec.fail_nth == rec.mmaps) {
        errno = rec.err;
        return MAP_FAILED;
    }
    void *p = (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
    if (p != MAP_FAILED && rec.nmapped < MAX_CALLS) {
        rec.mapped[rec.nmapped].lo = (uintptr_t)p;
        rec.mapped[rec.nmapped].hi = (uintptr_t)p + len;
        rec.nmapped++;
    }
    return p;
}

int munmap(void *addr, size_t len)
{
    if (test_called_from_library(__builtin_return_address(0))) {
        rec.munmaps++;
        bool ours = false;
        for (unsigned i = 0; i < rec.nmapped; i++)
            ours |=
                (uintptr_t)addr >= rec.mapped[i].lo && (uintptr_t)addr + len <= rec.mapped[i].hi;
        if (!ours && !rec.stray) {
            rec.stray = true;
            rec.stray_addr = (uintptr_t)addr;
            return 0; /* and never let it reach the kernel */
        }
    }
    return (int)syscall(SYS_munmap, addr, len);
}

int mprotect(void *addr, size_t len, int prot)
{
    if (test_called_from_library(__builtin_return_address(0)))
        rec.mprotects++;
    return (int)syscall(SYS_mprotect, addr, len, prot);
}

/* Entries of /proc/self/fd (the directory's own descriptor included, the same each time). */
static size_t open_fds_count(void)
{
    DIR *dir = opendir("/proc/self/fd");
    cr_assert_not_null(dir);
    size_t n = 0;
    while (readdir(dir) != NULL)
        n++;
    closedir(dir);
    return n;
}

static void arm(unsigned nth, int err)
{
    memset(&rec, 0, sizeof rec);
    rec.fail_nth = nth;
    rec.err = err;
}

static const char *backend(unsigned flags)
{
    return flags & CODE_CACHE_DUAL_MAP ? "dual" : "mprotect";
}

static void first_mmap_fails(const void *near, int err, unsigned flags)
{
    struct code_cache_options opts = {.size = 16 * test_page_size(), .near = near, .flags = flags};
    size_t fds = open_fds_count();
    arm(1, err);
    errno = 0;
    struct code_cache *cache = code_cache_create(&opts);
    int got = errno;
    rec.fail_nth = 0;
    cr_assert_null(cache, "%s, near %p: create succeeded on a failed mmap", backend(flags), near);
    cr_assert_eq(got, err, "%s, near %p: errno %s, expected %s", backend(flags), near,
                 strerror(got), strerror(err));
    cr_assert_eq(rec.mmaps, 1, "%s, near %p: %u mmaps after the first failed", backend(flags), near,
                 rec.mmaps);
    cr_assert_eq(rec.munmaps, 0, "%s, near %p: %u munmaps%s", backend(flags), near, rec.munmaps,
                 rec.stray ? " of something never mapped" : "");
    cr_assert_eq(rec.mprotects, 0);
    cr_assert_eq(open_fds_count(), fds, "a descriptor leaked");
    /* And the next create works. */
    cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "create after the failure: %s", strerror(errno));
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(create_first_mmap, anywhere_fails_with_the_errno_of_mmap)
{
    first_mmap_fails(NULL, ENOMEM, 0);
    first_mmap_fails(NULL, ENOMEM, CODE_CACHE_DUAL_MAP);
    first_mmap_fails(NULL, EAGAIN, 0);
}

Test(create_first_mmap, near_a_helper_eperm_stops_at_once)
{
    /* EPERM (a security module) will not get better elsewhere: no second probe, no scan. */
    first_mmap_fails((const void *)helper_triple, EPERM, 0);
    first_mmap_fails((const void *)helper_triple, EPERM, CODE_CACHE_DUAL_MAP);
}

/* Every mmap of a create failing in turn: NULL and the errno (or a success that worked around
 * it), and never an munmap of something the library did not map. */
static void each_mmap_fails(const void *near, unsigned flags)
{
    struct code_cache_options opts = {.size = 16 * test_page_size(), .near = near, .flags = flags};
    for (unsigned nth = 1;; nth++) {
        arm(nth, ENOMEM);
        errno = 0;
        struct code_cache *cache = code_cache_create(&opts);
        int got = errno;
        bool met = rec.mmaps >= nth;
        rec.fail_nth = 0;
        cr_assert(!rec.stray,
                  "%s, near %p, mmap #%u failing: munmap(%#lx) of something never "
                  "mapped",
                  backend(flags), near, nth, (unsigned long)rec.stray_addr);
        if (cache == NULL)
            cr_assert_eq(got, ENOMEM, "%s, near %p, mmap #%u failing: errno %s", backend(flags),
                         near, nth, strerror(got));
        else
            code_cache_destroy(cache);
        if (!met)
            break;
        cr_assert_lt(nth, 64, "create keeps calling mmap");
    }
}

Test(create_first_mmap, no_mmap_failure_makes_create_unmap_what_it_did_not_map)
{
    each_mmap_fails(NULL, 0);
    each_mmap_fails(NULL, CODE_CACHE_DUAL_MAP);
    each_mmap_fails((const void *)helper_triple, 0);
    each_mmap_fails((const void *)helper_triple, CODE_CACHE_DUAL_MAP);
}
