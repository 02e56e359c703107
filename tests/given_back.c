/*
 * Freed memory goes back to the system (code_cache.h, code_chunk_free and code_cache_reset): the
 * pages of a freed chunk (mprotect backend) and of a reset cache (both backends) hold no memory
 * any more. Seen from outside the library: mincore(2) on the pages, and for the dual backend the
 * blocks of its shared file (a hole punched, fstat's st_blocks). Without this a JIT that flushes
 * its code cache keeps all its memory.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "code_cache.h"
#include "helpers.h"

#define PAGE test_page_size()

/* Pages of [addr, addr + len) that hold memory. */
static size_t resident_pages(const void *addr, size_t len)
{
    if (test_under_emulator())
        cr_skip_test("qemu-user's mincore(2) fails with ENOMEM on the cache's ranges: what holds "
                     "memory cannot be seen there");
    unsigned char vec[256];
    cr_assert_leq(len / PAGE, sizeof vec);
    cr_assert_eq(mincore((void *)addr, len, vec), 0, "mincore: %s", strerror(errno));
    size_t n = 0;
    for (size_t i = 0; i < len / PAGE; i++)
        n += vec[i] & 1;
    return n;
}

/* Blocks of the dual backend's shared file (the only memfd of this test). */
static long long memfd_blocks(void)
{
    DIR *dir = opendir("/proc/self/fd");
    cr_assert_not_null(dir);
    long long blocks = -1;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        char path[300], target[256];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n <= 0)
            continue;
        target[n] = '\0';
        struct stat st;
        if (strstr(target, "memfd:codecache") != NULL && stat(path, &st) == 0)
            blocks = (long long)st.st_blocks;
    }
    closedir(dir);
    cr_assert_geq(blocks, 0, "the cache's memfd was not found");
    return blocks;
}

Test(given_back, a_freed_chunk_holds_no_memory)
{
    struct code_cache *cache = test_cache_near_helper(64 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, 8 * PAGE);
    cr_assert_not_null(chunk);
    struct code_span span = code_chunk_span(chunk);
    memset(span.rw, 0xcc, span.size);
    emit_return(chunk, 1);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    cr_assert_eq(resident_pages(span.rx, span.size), 8);
    code_chunk_free(chunk);
    cr_assert_eq(resident_pages(span.rx, span.size), 0, "freed pages still hold memory");
    code_cache_destroy(cache);
}

static void reset_gives_back(unsigned flags)
{
    struct code_cache_options opts = {
        .size = 64 * PAGE, .near = (const void *)helper_triple, .flags = flags};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache);
    struct code_chunk *chunk = code_cache_alloc(cache, 16 * PAGE);
    cr_assert_not_null(chunk);
    struct code_span span = code_chunk_span(chunk);
    memset(span.rw, 0xcc, span.size);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    if (flags & CODE_CACHE_DUAL_MAP)
        cr_assert_geq(memfd_blocks(), (long long)(16 * PAGE / 512));
    cr_assert_eq(code_cache_reset(cache), 0);
    cr_assert_eq(resident_pages(span.rx, span.size), 0, "reset pages still hold memory");
    if (flags & CODE_CACHE_DUAL_MAP)
        cr_assert_eq(memfd_blocks(), 0, "the shared file still holds %lld blocks after reset",
                     memfd_blocks());
    code_cache_destroy(cache);
}

Test(given_back, a_reset_mprotect_cache_holds_no_memory)
{
    reset_gives_back(0);
}

Test(given_back, a_reset_dual_cache_holds_no_memory)
{
    reset_gives_back(CODE_CACHE_DUAL_MAP);
}
