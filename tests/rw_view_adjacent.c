/*
 * Regression test for a library bug found by the ThreadSanitizer stress (tests/tsan_stress.c), now
 * fixed: a dual-mapped cache with near == NULL could not be created when the kernel does not honour
 * the RW view's random hints and its own choice is the spot next to the code region.
 *
 * lib/place.c, place_random: the RW view is tried at up to seven random hints, then with no hint;
 * a result adjacent to the code (or in the stack's room) was unmapped and the next hint tried. When
 * hints are not honoured (ThreadSanitizer rewrites every hint outside its application ranges to
 * NULL, which is all of [2^40, 2^47 - 2^40) but two ranges; a crowded address space does the
 * same), every try gets the kernel's top-down choice, and since the rejected mapping was unmapped
 * before the next try, that is the same spot each time: right below the code region, which was
 * itself the kernel's latest top-down choice. After eight tries create fails with ENOMEM, with
 * gigabytes of free address space elsewhere. Seen for real in tests/tsan_stress (about one
 * dual create in ten with near == NULL).
 *
 * The interposer below plays that kernel: the code region goes where the kernel likes, with free
 * room right below it, and every later plain (not MAP_FIXED) reservation of the library gets the
 * spot right below the code region, whatever its hint. The fix keeps each rejected mapping until
 * place_random is done, so that the kernel's next choice lies below it.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "code_cache.h"
#include "helpers.h"

static uintptr_t code_lo; /* the code region's reservation, the library's first */

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (test_called_from_library(__builtin_return_address(0)) &&
        !(flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) && fd < 0) {
        if (code_lo == 0) {
            /* The code region: the kernel's choice, with room left right below it. */
            void *room = (void *)syscall(SYS_mmap, NULL, 3 * len, PROT_NONE,
                                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (room == MAP_FAILED)
                return room;
            syscall(SYS_munmap, room, 3 * len);
            void *p = (void *)syscall(SYS_mmap, (char *)room + 2 * len, len, prot,
                                      flags | MAP_FIXED_NOREPLACE, fd, off);
            if (p != MAP_FAILED)
                code_lo = (uintptr_t)p;
            return p;
        }
        /* Any later plain reservation (the RW view): the hint is dropped, and the kernel's
         * top-down choice is the free spot right below the code region. */
        void *p = (void *)syscall(SYS_mmap, (void *)(code_lo - len), len, prot,
                                  flags | MAP_FIXED_NOREPLACE, fd, off);
        if (p != MAP_FAILED)
            return p;
        addr = NULL;
    }
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

Test(rw_view_adjacent, a_dual_cache_is_created_when_hints_are_not_honoured)
{
    struct code_cache_options opts = {.size = 1 << 20, .flags = CODE_CACHE_DUAL_MAP};
    errno = 0;
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache,
                       "code_cache_create: %s (the RW view was refused next to the code "
                       "at every try)",
                       strerror(errno));
    struct code_chunk *chunk = code_cache_alloc(cache, 64);
    cr_assert_not_null(chunk);
    struct code_span span = code_chunk_span(chunk);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    const uintptr_t page = test_page_size(),
                    rw = (uintptr_t)span.rw - ((uintptr_t)span.rx - st.base);
    cr_assert(rw + st.reserved + 2 * page <= st.base - page ||
                  rw >= st.base + st.reserved + 2 * page,
              "the RW view at %#lx touches the code region at %#lx", (unsigned long)rw,
              (unsigned long)st.base);
    code_cache_destroy(cache);
}
