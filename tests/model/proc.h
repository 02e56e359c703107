/*
 * What the kernel and jemalloc say about this process, for the programs that check the library
 * without Criterion (the model and its drivers, the fault sweep, the ThreadSanitizer stress, the
 * soak): the address-space map, open file descriptors, resident memory, jemalloc's allocated
 * bytes. Nothing here asserts; every function reports what it read.
 *
 * tests/helpers.c has Criterion-asserting versions of some of these for the Criterion programs;
 * these programs cannot use them (libFuzzer and ThreadSanitizer do not run under Criterion, and a
 * check that must not stop the program at the first difference needs the facts, not a verdict).
 */
#ifndef CODE_CACHE_TEST_PROC_H
#define CODE_CACHE_TEST_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct proc_mapping {
    uintptr_t lo, hi;
    char prot[5]; /* "rw-p", "r-xs"... */
    uint64_t offset;
    uint64_t inode;
    char path[80]; /* "" for anonymous mappings, truncated */
};

struct proc_maps {
    struct proc_mapping *v;
    size_t n, cap;
};

/* Reads /proc/self/maps with read(2) (never through the library). 0, or -1 + errno. */
int proc_maps_read(struct proc_maps *maps);
void proc_maps_free(struct proc_maps *maps);
/* The first mapping with hi > addr (the one holding addr, or the next one), or NULL. */
const struct proc_mapping *proc_maps_at(const struct proc_maps *maps, uintptr_t addr);

/* True when prot allows writing and executing at once. */
static inline bool proc_prot_wx(const char *prot)
{
    return prot[1] == 'w' && prot[2] == 'x';
}

/* The VmFlags line of /proc/self/smaps for the mapping holding addr (two-letter flags separated
 * by spaces), copied into flags; false when no mapping holds addr. */
bool proc_smaps_vmflags(uintptr_t addr, char *flags, size_t size);

/* Entries of /proc/self/fd, the descriptor of the directory itself excluded. */
size_t proc_open_fds(void);

/* Descriptors of deleted files (memfd_create, O_TMPFILE: what the dual backend holds), a
 * count that sanitizer runtimes opening pipes for their reports do not change. */
size_t proc_file_fds(void);

/* VmRSS of /proc/self/status, in KiB (0 when unknown). */
size_t proc_rss_kib(void);

/* Number of lines of /proc/self/maps. */
size_t proc_mapping_count(void);

/* jemalloc's small + large allocated bytes over every arena (mallctl found with dlsym: the
 * programs do not link jemalloc themselves, so that malloc stays the system's). SIZE_MAX when
 * jemalloc is not loaded. */
size_t proc_jemalloc_allocated(void);

#endif
