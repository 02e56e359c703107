/* addrspace.c: what the process itself rules out for a cache, read once per process. */
#ifndef CODE_CACHE_ADDRSPACE_H
#define CODE_CACHE_ADDRSPACE_H

#include <stdbool.h>
#include <stdint.h>

struct addrspace_limits {
    uintptr_t floor;              /* lowest base: vm.mmap_min_addr, page aligned, at least a page */
    uintptr_t stack_lo, stack_hi; /* the main thread's stack room; empty when the top is unknown */
    bool nearest;                 /* CODE_CACHE_NO_RANDOM=1: the nearest base, no random probes */
};

/* Read at the first call (os_init must have run), the same ever after. */
const struct addrspace_limits *addrspace_limits(void);

#endif
