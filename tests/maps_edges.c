/*
 * The maps reader's edges that the real /proc never shows here (lib/maps.c), created by serving
 * the library its own copy of /proc/self/maps: this program interposes open and read, and when the
 * library opens /proc/self/maps it gets a memory file holding the map as the test wants it.
 *
 *   - No [vsyscall] line (kernels built without it, other architectures): the gap above the last
 *     mapping, up to the top of the user address space, must still be found. A cache is placed
 *     near the top of the address space with a reach that leaves it no other gap.
 *   - Lines split across read(2) calls: each read returns at most a few bytes (1, 7, 37, 64), so
 *     lines arrive in pieces; the placement must be exactly the one made with whole reads.
 *
 * CODE_CACHE_NO_RANDOM=1: no random probes, the map is always read, and the base picked is the
 * nearest fitting one, the same for the same map.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "code_cache.h"
#include "helpers.h"

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

static int open_for(const void *caller, const char *path, int flags, mode_t mode)
{
    if (test_called_from_library(caller) && strcmp(path, "/proc/self/maps") == 0) {
        serve.opens++;
        serve.fd = served_map();
        return serve.fd;
    }
    return (int)syscall(SYS_openat, AT_FDCWD, path, flags, mode);
}

int open(const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return open_for(__builtin_return_address(0), path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return open_for(__builtin_return_address(0), path, flags, mode);
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
    if (reach > ((size_t)1 << 31))
        reach = (size_t)1 << 31;
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

/* The base a near placement picks with reads capped at cap bytes (0: whole reads). */
static uintptr_t placed_with_reads_of(size_t cap)
{
    struct code_cache_options opts = {.size = 64 * PAGE, .near = (const void *)helper_triple};
    serve.cap = cap;
    serve.opens = serve.reads = 0;
    serve.bytes = 0;
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "create with reads of %zu bytes: %s", cap, strerror(errno));
    cr_assert_geq(serve.opens, 1, "the map was not read");
    if (cap != 0)
        cr_assert_geq(serve.reads, serve.bytes / cap, "reads were not capped");
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    check_maps(cache);
    code_cache_destroy(cache);
    return st.base;
}

Test(maps_edges, lines_split_across_reads_are_parsed_whole)
{
    /* The first create makes the cache's jemalloc arena, which changes the map; after it, the
     * map is the same before every create. */
    placed_with_reads_of(0);
    const uintptr_t whole = placed_with_reads_of(0);
    static const size_t caps[] = {1, 7, 37, 64};
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
        cr_assert_eq(placed_with_reads_of(caps[i]), whole,
                     "reads of %zu bytes: the placement differs from whole reads'", caps[i]);
}
