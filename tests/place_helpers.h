/*
 * What the placement tests share (on top of helpers.h): an independent reach check, free address
 * space to stage a scene in, crowds of mappings, and views of /proc/self/maps to prove nothing
 * else changed.
 */
#ifndef PLACE_HELPERS_H
#define PLACE_HELPERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "code_cache.h"
#include "helpers.h"

#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)

/* The first address above the user address space, measured at run time (helpers.h). */
#define TEST_USER_TOP test_user_top()

/* vm.mmap_min_addr, read here independently of the library. */
uintptr_t test_mmap_min_addr(void);

/* The whole reservation of a cache: its usable bytes from the stats plus one guard page at each
 * end. */
struct test_region {
    uintptr_t lo, hi;
};
struct test_region test_cache_region(const struct code_cache *cache);
struct test_region test_cache_usable(const struct code_cache *cache);

/* The direct branch of the architecture, restated here independently of the library: the
 * shortest one is TEST_BRANCH_SIZE bytes, and its displacement counts from its end (x86-64 rel32)
 * or from its own address (aarch64 imm26). */
#if defined(__x86_64__)
#define TEST_BRANCH_SIZE       5
#define TEST_ORIGIN_IS_THE_END 1
#else
#define TEST_BRANCH_SIZE       4
#define TEST_ORIGIN_IS_THE_END 0
#endif

/* True when a branch placed anywhere in [lo, hi) reaches t with a displacement in
 * [-reach, reach - 1]: every placement of a TEST_BRANCH_SIZE-byte branch is tried at its two
 * extremes, in 128-bit signed arithmetic, independently of the library's reach_covers. */
bool test_reaches(uintptr_t lo, uintptr_t hi, uintptr_t t, size_t reach);

/* The lowest target above [lo, hi) and the highest below it that a branch somewhere in it can
 * no longer reach. */
uintptr_t test_unreachable_above(uintptr_t lo, size_t reach);
uintptr_t test_unreachable_below(uintptr_t hi, size_t reach);

/* A page-aligned free area of len bytes far from everything (high in the address space, where
 * neither the kernel's top-down allocator nor valgrind puts anything). Nothing is left mapped:
 * the caller stages its scene inside. Fails the test when none is found. */
uintptr_t test_free_area(size_t len);

/* Mappings made by a test to crowd an address range: mixed sizes, alternately PROT_NONE and
 * PROT_READ so that the kernel cannot merge neighbours and the map really has many lines. */
struct test_crowd {
    struct test_region *maps;
    size_t count, cap;
};
void test_crowd_fill(struct test_crowd *crowd, uintptr_t lo, uintptr_t hi);
void test_crowd_release(struct test_crowd *crowd);

/* The lines of /proc/self/maps that intersect [lo, hi), as one malloc'ed string. */
char *test_maps_lines(uintptr_t lo, uintptr_t hi);

/* Every anonymous PROT_NONE mapping of the process ("---p", no pathname) of exactly len bytes:
 * what a leaked reservation of the library would look like. One malloc'ed string. */
char *test_maps_reservations(size_t len);

#endif /* PLACE_HELPERS_H */
