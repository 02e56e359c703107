/* maps.c: the process address-space map, streamed once through a fixed buffer with bulk
 * read(2)s, gap by gap. */
#ifndef CODE_CACHE_MAPS_H
#define CODE_CACHE_MAPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct meta;

struct maps {
    struct meta *meta;
    int fd;
    char *buf; /* cap bytes: from the cache's arena (meta), or the caller's */
    size_t cap;
    size_t pos, len;    /* the text not parsed yet: buf[pos, len) */
    bool eof;           /* read(2) returned 0 */
    int error;          /* errno of a failed read, or 0 */
    size_t count;       /* mappings parsed so far */
    uintptr_t prev_end; /* end of the previous mapping */
    bool done;          /* the last gap was returned */
};

int maps_open(struct maps *maps, struct meta *meta); /* 0, or -1 + errno */
/* The same through the caller's buffer, where no arena exists yet (addrspace.c); a line longer
 * than the buffer ends the walk (EOVERFLOW). */
int maps_open_buffer(struct maps *maps, char *buf, size_t cap);
/* The next mapping, in increasing address order, as [*lo, *hi); false at the end or when a read
 * fails (maps->error). */
bool maps_next_mapping(struct maps *maps, uintptr_t *lo, uintptr_t *hi);
/* The next gap, in increasing address order, between mappings: [*start, *end), including the
 * gap below the first mapping (from 0) and above the last one (to arch_user_top). False at the
 * end, or when a read fails (maps->error then holds its errno). A caller may stop early: what
 * the kernel has not printed yet is never read. */
bool maps_next_gap(struct maps *maps, uintptr_t *start, uintptr_t *end);
void maps_close(struct maps *maps);

#endif
