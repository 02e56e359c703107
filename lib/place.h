/* place.c: choosing and claiming the region of a cache. */
#ifndef CODE_CACHE_PLACE_H
#define CODE_CACHE_PLACE_H

#include <stddef.h>
#include <stdint.h>

struct meta;

struct place_request {
    uintptr_t target_lo, target_hi; /* [lo, hi) every byte of the region must reach; hi == lo:
                                       no target (anywhere) */
    size_t reach;
    size_t size; /* whole reservation, guard pages included, page multiple */
};

/* Reserves size bytes of PROT_NONE address space, verified to reach the targets. Returns the
 * base, or NULL + errno (EINVAL, ERANGE, ENOMEM, or mmap's). */
void *place_reserve(const struct place_request *req, struct meta *meta);

/* A free spot for size bytes at a random address, at least a page away from [avoid_lo,
 * avoid_hi): reserved PROT_NONE like place_reserve's, or NULL + errno. For the RW view of the
 * dual-mapped backend, which must not be found next to the code. */
void *place_random(size_t size, uintptr_t avoid_lo, uintptr_t avoid_hi);

#endif
