/*
 * The maps reader's edges that the real /proc never shows here (lib/maps.c), created by serving
 * the library its own copy of /proc/self/maps: this program interposes open and read, and when the
 * library opens /proc/self/maps it gets a memory file holding the map as the test wants it.
 *
 *   - No [vsyscall] line (kernels built without it, other architectures): the gap above the last
 *     mapping, up to the top of the user address space, must still be found. A cache is placed
 *     near the top of the address space with a reach that leaves it no other gap.
 *   - Lines split across read(2) calls: each read returns at most a few bytes (1 to 333), so
 *     lines arrive in pieces; the placement must be exactly the one made with whole reads, found
 *     at the first try, next to a comb of small mappings where any garbled line shows.
 *
 * CODE_CACHE_NO_RANDOM=1: no random probes, the map is always read, and the base picked is the
 * nearest fitting one, the same for the same map.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "code_cache.h"
#include "helpers.h"
#include "open_hook.h"

#define PAGE test_page_size()

static struct {
    bool drop_vsyscall;
    size_t cap; /* bytes per read of the served map, 0: as asked */
    int fd;     /* the served copy, or -1 */
    unsigned opens, reads;
    size_t bytes;
} serve = {.fd = -1};

/* The real map, whole, with read(2). */
static char *real_map(size_t *len)
{
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC);
    cr_assert(fd >= 0);
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    for (;;) {
        ssize_t r = syscall(SYS_read, fd, buf + n, cap - n - 1);
        cr_assert(r >= 0);
        if (r == 0)
            break;
        n += (size_t)r;
        cr_assert_lt(n, cap - 1);
    }
    close(fd);
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* The copy the library gets: the real map, without the [vsyscall] line when asked. */
static int served_map(void)
{
    size_t len;
    char *text = real_map(&len);
    if (serve.drop_vsyscall) {
        char *line = strstr(text, "[vsyscall]");
        if (line != NULL) {
            while (line > text && line[-1] != '\n')
                line--;
            *line = '\0';
            len = (size_t)(line - text);
        }
    }
    int fd = memfd_create("served-maps", MFD_CLOEXEC);
    cr_assert(fd >= 0);
    cr_assert_eq(syscall(SYS_write, fd, text, len), (long)len);
    cr_assert_eq(lseek(fd, 0, SEEK_SET), 0);
    free(text);
    return fd;
}

int open_hook(const void *caller, const char *path, int flags, mode_t mode)
{
    if (test_called_from_library(caller) && strcmp(path, "/proc/self/maps") == 0) {
        serve.opens++;
        serve.fd = served_map();
        return serve.fd;
    }
    return open_hook_syscall(path, flags, mode);
}

ssize_t read(int fd, void *buf, size_t n)
{
    if (fd >= 0 && fd == serve.fd) {
        if (serve.cap != 0 && n > serve.cap)
            n = serve.cap;
        ssize_t r = syscall(SYS_read, fd, buf, n);
        serve.reads++;
        serve.bytes += r > 0 ? (size_t)r : 0;
        return r;
    }
    return syscall(SYS_read, fd, buf, n);
}

static void setup(void)
{
    setenv("CODE_CACHE_NO_RANDOM", "1", 1);
}

TestSuite(maps_edges, .init = setup);

/* The top of the user address space on x86-64 (4-level paging), as the library knows it. */
static const uintptr_t user_top = ((uintptr_t)1 << 47) - 4096;

Test(maps_edges, the_gap_above_the_last_mapping_is_found_without_a_vsyscall_line)
{
#if !defined(__x86_64__)
    cr_skip_test("[vsyscall] is an x86-64 mapping: elsewhere every placement runs without it");
#endif
    /* The last mapping below the top, in the real map. */
    size_t len;
    char *text = real_map(&len);
    uintptr_t last_end = 0;
    for (char *line = text; *line != '\0';) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && hi <= user_top && hi > last_end)
            last_end = hi;
        char *eol = strchr(line, '\n');
        if (eol == NULL)
            break;
        line = eol + 1;
    }
    free(text);
    const size_t gap = user_top - last_end;
    if (gap < 16 * PAGE)
        cr_skip_test("only %zu bytes above the last mapping", gap);
    /* A target at the very top, and a reach that keeps the whole window above the last mapping:
     * the only gap placement can use is the one after the last line. */
    size_t reach = gap - 4 * PAGE;
    if (reach > TEST_CALL_REACH)
        reach = TEST_CALL_REACH;
    struct code_cache_options opts = {
        .size = PAGE, .near = (const void *)(user_top - 1), .reach = reach};
    serve.drop_vsyscall = true;
    errno = 0;
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "create near the top without [vsyscall]: %s", strerror(errno));
    cr_assert_geq(serve.opens, 1, "the map was not read: the test proves nothing");
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_gt(st.base, last_end);
    cr_assert(code_cache_reaches(cache, opts.near));
    check_maps(cache);
    code_cache_destroy(cache);
}

/* mmap calls of the library, counted. */
static unsigned library_mmaps;

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (test_called_from_library(__builtin_return_address(0)))
        library_mmaps++;
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

/* A comb of 64 one-page mappings with a one-page hole after each, around a free spot: no hole
 * fits a cache of one page and its two guard pages, so placement must go outside the comb. A
 * reader that loses or garbles one of its lines sees a hole that fits, picks it (nearest to a
 * target in the comb's middle), and the kernel refuses it: more than one mmap. */
static uintptr_t comb_make(void)
{
    const size_t page = PAGE, teeth = 64;
    void *room = mmap(NULL, 4 * teeth * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert(room != MAP_FAILED);
    munmap(room, 4 * teeth * page);
    uintptr_t comb = (uintptr_t)room + teeth * page;
    for (size_t i = 0; i < teeth; i++)
        cr_assert(mmap((void *)(comb + 2 * i * page), page, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) != MAP_FAILED);
    return comb;
}

static void comb_remove(uintptr_t comb)
{
    for (size_t i = 0; i < 64; i++)
        munmap((void *)(comb + 2 * i * PAGE), PAGE);
}

/* The base a placement near the comb's middle picks with reads capped at cap bytes (0: whole
 * reads); it must take exactly one mmap (no probes in nearest mode: the scan's pick, claimed). */
static uintptr_t placed_with_reads_of(uintptr_t comb, size_t cap)
{
    struct code_cache_options opts = {.size = PAGE, .near = (const void *)(comb + 63 * PAGE)};
    serve.cap = cap;
    serve.opens = serve.reads = 0;
    serve.bytes = 0;
    library_mmaps = 0;
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "create with reads of %zu bytes: %s", cap, strerror(errno));
    cr_assert_geq(serve.opens, 1, "the map was not read");
    if (cap != 0)
        cr_assert_geq(serve.reads, serve.bytes / cap, "reads were not capped");
    cr_assert_eq(library_mmaps, 1,
                 "reads of %zu bytes: %u mmaps: the scan picked a spot that was not free", cap,
                 library_mmaps);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert(st.base + st.reserved + PAGE <= comb || st.base - PAGE >= comb + 127 * PAGE,
              "the cache at %#lx is inside the comb", (unsigned long)st.base);
    check_maps(cache);
    code_cache_destroy(cache);
    return st.base;
}

Test(maps_edges, lines_split_across_reads_are_parsed_whole)
{
    uintptr_t comb = comb_make();
    /* The first create makes the cache's jemalloc arena, which changes the map; after it, the
     * map is the same before every create. */
    placed_with_reads_of(comb, 0);
    const uintptr_t whole = placed_with_reads_of(comb, 0);
    static const size_t caps[] = {1, 7, 37, 64, 100, 333};
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
        cr_assert_eq(placed_with_reads_of(comb, caps[i]), whole,
                     "reads of %zu bytes: the placement differs from whole reads'", caps[i]);
    comb_remove(comb);
}
