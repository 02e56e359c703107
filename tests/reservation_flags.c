/*
 * The reservation is address space only: every part of it that is not the dual backend's shared
 * file is MAP_NORESERVE, which /proc/self/smaps shows as the VmFlag "nr". Without it a 2 GiB cache
 * would be charged against the overcommit limit at create, and every mprotect to rw- would charge
 * the pages made writable (VmFlag "ac"). Checked after create, after committing chunks, and where
 * memory was given back (released pages are reserved again: lib/os.c, os_rereserve), on both
 * backends, including the dual backend's RW view guard pages.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "code_cache.h"
#include "helpers.h"

#define PAGE test_page_size()

/* The VmFlags of the mapping holding addr. */
static void vmflags(uintptr_t addr, char *out, size_t size)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    cr_assert_not_null(f);
    char line[512];
    bool inside = false, found = false;
    while (!found && fgets(line, sizeof line, f) != NULL) {
        unsigned long lo, hi;
        char *dash = strchr(line, '-'), *space = strchr(line, ' ');
        if (dash != NULL && space != NULL && dash < space &&
            sscanf(line, "%lx-%lx", &lo, &hi) == 2) {
            inside = addr >= lo && addr < hi;
        } else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            snprintf(out, size, "%.200s", line + 8);
            found = true;
        }
    }
    fclose(f);
    cr_assert(found, "no mapping holds %#lx", (unsigned long)addr);
}

static void expect_noreserve(uintptr_t addr, const char *what)
{
    char flags[256];
    vmflags(addr, flags, sizeof flags);
    cr_assert(strstr(flags, " nr") != NULL, "%s at %#lx is not MAP_NORESERVE: VmFlags:%s", what,
              (unsigned long)addr, flags);
    cr_assert(strstr(flags, " ac") == NULL, "%s at %#lx is charged to the commit limit: VmFlags:%s",
              what, (unsigned long)addr, flags);
}

static void check_backend(unsigned flags)
{
    struct code_cache_options opts = {
        .size = 64 * PAGE, .near = (const void *)helper_triple, .flags = flags};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    const uintptr_t base = st.base, end = st.base + st.reserved;
    expect_noreserve(base - PAGE, "the low guard page");
    expect_noreserve(base, "the reservation");
    expect_noreserve(end, "the high guard page");

    /* Commit: chunks, the step ahead; then the pages past it. */
    struct code_chunk *a = code_cache_alloc(cache, 4 * PAGE);
    struct code_chunk *b = code_cache_alloc(cache, PAGE);
    cr_assert(a != NULL && b != NULL);
    emit_return(b, 1);
    cr_assert_eq(code_chunk_seal(b), 0);
    code_cache_get_stats(cache, &st);
    expect_noreserve(end - PAGE, "the never-used end");
    struct code_span sa = code_chunk_span(a), sb = code_chunk_span(b);
    if (!(flags & CODE_CACHE_DUAL_MAP)) {
        /* One view: the committed pages are the reservation's own, with its flags. */
        expect_noreserve((uintptr_t)sa.rx, "an OPEN chunk");
        expect_noreserve((uintptr_t)sb.rx, "a SEALED chunk");
        expect_noreserve(base + st.in_use + st.committed_ahead - PAGE, "the step committed ahead");
    } else {
        /* The RW view's guard pages are a reservation of their own. */
        uintptr_t rw = (uintptr_t)sa.rw - ((uintptr_t)sa.rx - base);
        expect_noreserve(rw - PAGE, "the RW view's low guard page");
        expect_noreserve(rw + st.reserved, "the RW view's high guard page");
    }

    /* Given back: freed (mprotect) and reset (both) pages are reserved again, NORESERVE. */
    uintptr_t freed = (uintptr_t)sa.rx;
    code_chunk_free(a);
    if (!(flags & CODE_CACHE_DUAL_MAP))
        expect_noreserve(freed, "a freed chunk");
    cr_assert_eq(code_cache_reset(cache), 0);
    expect_noreserve(freed, "a page given back by reset");
    expect_noreserve((uintptr_t)sb.rx, "a sealed page given back by reset");
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(reservation_flags, mprotect_reservation_is_noreserve_before_and_after_commit)
{
    check_backend(0);
}

Test(reservation_flags, dual_reservation_is_noreserve_before_and_after_commit)
{
    check_backend(CODE_CACHE_DUAL_MAP);
}
