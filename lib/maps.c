/*
 * The process address-space map, as the kernel prints it in /proc/self/maps: streamed once, in
 * increasing address order, gap by gap, through one fixed buffer.
 *
 * Why bulk reads in one pass: the cost of the file is the kernel formatting it (~210 ns a line,
 * FACTS.md), and each read(2) returns at most a page of it. Walking it once pays that cost once
 * per scan. A line-by-line fgets that rewinds on every conflict (the original blog post) pays it
 * again for every candidate (FACTS.md: 4.1 s at 10,000 mappings, against 1.9 ms for one pass).
 *
 * Why a fixed buffer rather than the whole file: the walk only needs the current line, so a
 * buffer that grows to the size of the file (megabytes at 60,000 mappings) would be copied and
 * zeroed for nothing; and a scan that has passed the top of its window stops there, so the
 * kernel never formats the rest of the file.
 *
 * The buffer lives in the cache's jemalloc arena (meta.c), like all of the library's bookkeeping,
 * so that a program linking the library keeps its own malloc untouched.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "arch.h"
#include "maps.h"
#include "meta.h"

/* Many pages of lines per refill; a line is at most ~4.2 KiB (a PATH_MAX path), so it fits. */
#define MAPS_BUFFER ((size_t)64 << 10)

int maps_open_buffer(struct maps *maps, char *buf, size_t cap)
{
    *maps = (struct maps){.fd = -1, .buf = buf, .cap = cap};
    maps->fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    return maps->fd < 0 ? -1 : 0;
}

int maps_open(struct maps *maps, struct meta *meta)
{
    *maps = (struct maps){.fd = -1}; /* maps_close is harmless after any failure */
    char *buf = meta_alloc(meta, MAPS_BUFFER);
    if (buf == NULL) {
        errno = ENOMEM;
        return -1;
    }
    if (maps_open_buffer(maps, buf, MAPS_BUFFER) != 0) {
        int saved = errno;
        meta_free(meta, buf, MAPS_BUFFER);
        maps->buf = NULL;
        errno = saved;
        return -1;
    }
    maps->meta = meta;
    return 0;
}

void maps_close(struct maps *maps)
{
    if (maps->meta != NULL && maps->buf != NULL)
        meta_free(maps->meta, maps->buf, maps->cap);
    if (maps->fd >= 0)
        close(maps->fd);
    maps->buf = NULL;
    maps->fd = -1;
}

/*
 * The next line, without its newline, as [*line, *eol). Refills the buffer when no whole line
 * is left: the partial line moves to the front and read(2) appends after it. The lines of
 * separate reads are not one atomic snapshot (another thread may map or unmap meanwhile), but
 * they stay sorted, and placement verifies every claim with the kernel anyway.
 */
static bool maps_next_line(struct maps *m, const char **line, const char **eol)
{
    for (;;) {
        char *start = m->buf + m->pos;
        char *nl = memchr(start, '\n', m->len - m->pos);
        if (nl != NULL || (m->eof && m->pos < m->len)) {
            *line = start;
            *eol = nl != NULL ? nl : m->buf + m->len;
            m->pos = (size_t)(*eol - m->buf) + (nl != NULL);
            return true;
        }
        if (m->eof || m->error != 0)
            return false;
        size_t rest = m->len - m->pos;
        if (rest == m->cap) {
            /* A line longer than the buffer: the kernel prints none, so the file is not what we
             * think it is. */
            m->error = EOVERFLOW;
            return false;
        }
        memmove(m->buf, start, rest);
        m->pos = 0;
        m->len = rest;
        ssize_t n = read(m->fd, m->buf + m->len, m->cap - m->len);
        if (n < 0) {
            if (errno != EINTR)
                m->error = errno;
            continue;
        }
        if (n == 0)
            m->eof = true;
        m->len += (size_t)n;
    }
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
bool maps_next_mapping(struct maps *m, uintptr_t *lo, uintptr_t *hi)
{
    const char *line, *eol;
    while (maps_next_line(m, &line, &eol)) {
        const char *p = line;
        if (!maps_parse_hex(&p, eol, lo) || p == eol || *p++ != '-' ||
            !maps_parse_hex(&p, eol, hi) || *hi < *lo)
            continue;
        m->count++;
        return true;
    }
    return false;
}

bool maps_next_gap(struct maps *m, uintptr_t *start, uintptr_t *end)
{
    while (!m->done) {
        uintptr_t lo, hi;
        if (!maps_next_mapping(m, &lo, &hi)) {
            if (m->error != 0)
                return false;
            /* Past the last mapping: the rest of the user address space is one gap. */
            lo = hi = arch_user_top;
            m->done = true;
        }
        /* [vsyscall] (0xffffffffff600000 on x86-64) lies above the user address space: nothing
         * at or above arch_user_top can ever be mapped by us, so the walk stops there. */
        if (lo >= arch_user_top) {
            lo = arch_user_top;
            m->done = true;
        }
        uintptr_t gap_start = m->prev_end;
        if (hi > m->prev_end)
            m->prev_end = hi;
        if (lo > gap_start) {
            *start = gap_start;
            *end = lo;
            return true;
        }
    }
    return false;
}
