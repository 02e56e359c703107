/*
 * libcodecache behind the executable-allocator hooks of real JITs (exec_allocator.c).
 *
 * sljit: build sljit with
 *     #define SLJIT_EXECUTABLE_ALLOCATOR 0
 *     #define SLJIT_MALLOC_EXEC(size, data)           exec_malloc((size), (data))
 *     #define SLJIT_FREE_EXEC(ptr, data)              exec_free((ptr), (data))
 *     #define SLJIT_EXEC_OFFSET(ptr)                  exec_offset(ptr)
 *     #define SLJIT_UPDATE_WX_FLAGS(from, to, exec)   exec_update_wx_flags((from), (to), (exec))
 * sljit writes its code at the pointer SLJIT_MALLOC_EXEC returns and runs it at that pointer
 * plus SLJIT_EXEC_OFFSET (the dual backend's RX view; 0 with the mprotect backend), and calls
 * SLJIT_UPDATE_WX_FLAGS(..., 1) once the code is written (here: the seal) and again after
 * rewriting a jump or a constant (here: a patch; that needs CODE_CACHE_DUAL_MAP).
 *
 * asmjit's JitAllocator: jit_alloc gives both views of a new block, jit_release frees it by its
 * RX address, jit_query finds its RW address and size; none of them keeps a table of its own.
 * (JitAllocator::shrink has no counterpart: reserve the room with code_chunk_reserve instead and
 * commit what was used.)
 *
 * One cache per process here, because SLJIT_EXEC_OFFSET(ptr) is given nothing but the pointer.
 */
#ifndef EXEC_ALLOCATOR_H
#define EXEC_ALLOCATOR_H

#include <stddef.h>

#include "code_cache.h"

int exec_allocator_init(const struct code_cache_options *opts); /* 0, or -1 + errno */
void exec_allocator_fini(void);
struct code_cache *exec_allocator_cache(void);

void *exec_malloc(size_t size, void *exec_allocator_data);
void exec_free(void *ptr, void *exec_allocator_data);
ptrdiff_t exec_offset(void *ptr);
void exec_update_wx_flags(void *from, void *to, int enable_exec);

int jit_alloc(size_t size, void **rx, void **rw); /* 0, or -1 + errno */
int jit_release(void *rx);                        /* 0, or -1 + EINVAL */
int jit_query(void *rx, void **rw, size_t *size); /* 0, or -1 + EINVAL */

#endif
