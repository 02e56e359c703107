/*
 * The process address-space map, as the kernel prints it in /proc/self/maps: read whole into one
 * buffer, then walked once, gap by gap, in increasing address order.
 *
 * Why a bulk read: the cost of the file is the kernel formatting it (~210 ns a line, FACTS.md),
 * and each read(2) returns at most a page of it. Reading it once into a growing buffer pays that
 * cost exactly once per scan. A line-by-line fgets that rewinds on every conflict (the original
 * blog post) pays it again for every candidate (FACTS.md: 4.1 s at 10,000 mappings, against
 * 1.9 ms for one read and one pass).
 *
 * The buffer lives in the cache's jemalloc arena (meta.c), like all of the library's bookkeeping,
 * so that a program linking the library keeps its own malloc untouched.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* A process with a few dozen mappings fits in the first buffer; bigger ones double it. */
#define MAPS_FIRST_CAPACITY ((size_t)16 << 10)

int maps_read(struct maps *maps, struct meta *meta)
{
    *maps = (struct maps){.meta = meta};
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t cap = MAPS_FIRST_CAPACITY, len = 0;
    char *text = meta_alloc(meta, cap);
    if (text == NULL)
        goto fail_fd;

    /* The kernel formats the file a page at a time, so one read(2) per page is the least it
     * takes; the loop ends at end of file. The lines of separate reads are not one atomic
     * snapshot (another thread may map or unmap meanwhile), but they stay sorted, and placement
     * verifies every claim with the kernel anyway. */
    for (;;) {
        if (len == cap) {
            char *bigger = meta_grow(meta, text, cap, 2 * cap);
            if (bigger == NULL)
                goto fail_text;
            text = bigger;
            cap *= 2;
        }
        ssize_t n = read(fd, text + len, cap - len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            goto fail_text;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);

    maps->text = text;
    maps->len = len;
    maps->cap = cap;
    for (const char *p = text; (p = memchr(p, '\n', (size_t)(text + len - p))) != NULL; p++)
        maps->count++;
    return 0;

fail_text : {
    int saved = errno;
    meta_free(meta, text, cap);
    errno = saved;
}
fail_fd : {
    int saved = errno;
    close(fd);
    errno = saved;
}
    return -1;
}

void maps_release(struct maps *maps)
{
    if (maps->text != NULL)
        meta_free(maps->meta, maps->text, maps->cap);
    maps->text = NULL;
    maps->len = maps->cap = 0;
}

void maps_cursor_init(struct maps_cursor *c, const struct maps *maps)
{
    c->pos = maps->text;
    c->end = maps->text + maps->len;
    c->prev_end = 0;
    c->done = false;
}

static int maps_hex_digit(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/* Reads the lowercase hexadecimal number at *pos (the kernel prints addresses so). False when
 * there is no digit or the number does not fit: the line is then not a mapping we understand. */
static bool maps_parse_hex(const char **pos, const char *end, uintptr_t *out)
{
    const char *p = *pos;
    uintptr_t value = 0;
    int digit;
    while (p < end && (digit = maps_hex_digit(*p)) >= 0) {
        if (value > (UINTPTR_MAX >> 4))
            return false;
        value = value << 4 | (uintptr_t)digit;
        p++;
    }
    if (p == *pos)
        return false;
    *pos = p;
    *out = value;
    return true;
}

/* The next mapping "start-end perms offset dev inode [pathname]", as [*lo, *hi). A line that does
 * not parse is skipped: it cannot hide a mapping from placement, since every claim is made with
 * MAP_FIXED_NOREPLACE and checked, so the worst case is one failed attempt. */
static bool maps_next_mapping(struct maps_cursor *c, uintptr_t *lo, uintptr_t *hi)
{
    while (c->pos < c->end) {
        const char *line = c->pos;
        const char *eol = memchr(line, '\n', (size_t)(c->end - line));
        if (eol == NULL)
            eol = c->end;
        c->pos = eol < c->end ? eol + 1 : c->end;

        const char *p = line;
        if (!maps_parse_hex(&p, eol, lo) || p == eol || *p++ != '-' ||
            !maps_parse_hex(&p, eol, hi) || *hi < *lo)
            continue;
        return true;
    }
    return false;
}

bool maps_next_gap(struct maps_cursor *c, uintptr_t *start, uintptr_t *end)
{
    while (!c->done) {
        uintptr_t lo, hi;
        if (!maps_next_mapping(c, &lo, &hi)) {
            /* Past the last mapping: the rest of the user address space is one gap. */
            lo = hi = arch_user_top;
            c->done = true;
        }
        /* [vsyscall] (0xffffffffff600000 on x86-64) lies above the user address space: nothing
         * at or above arch_user_top can ever be mapped by us, so the walk stops there. */
        if (lo >= arch_user_top) {
            lo = arch_user_top;
            c->done = true;
        }
        uintptr_t gap_start = c->prev_end;
        if (hi > c->prev_end)
            c->prev_end = hi;
        if (lo > gap_start) {
            *start = gap_start;
            *end = lo;
            return true;
        }
    }
    return false;
}
