/*
 * The executable-memory hooks that real JITs call, answered by libcodecache with no table of the
 * client's own: sljit's SLJIT_MALLOC_EXEC / SLJIT_FREE_EXEC / SLJIT_EXEC_OFFSET /
 * SLJIT_UPDATE_WX_FLAGS, and an asmjit JitAllocator-like alloc / release / query. A JIT built with
 * these definitions gets near placement, W^X and (with the dual backend) no system call per
 * function. See exec_allocator.h for how each hook is used.
 *
 * Every hook finds its chunk from the pointer it is given with code_cache_find, which accepts an
 * address of either view: that is what lets free-by-pointer and "offset of this pointer"
 * interfaces work without a map from pointers to allocations beside the allocator.
 */
#include <errno.h>
#include <string.h>

#include "exec_allocator.h"

static struct code_cache *exec_cache;

int exec_allocator_init(const struct code_cache_options *opts)
{
    exec_cache = code_cache_create(opts);
    return exec_cache != NULL ? 0 : -1;
}

void exec_allocator_fini(void)
{
    code_cache_destroy(exec_cache);
    exec_cache = NULL;
}

struct code_cache *exec_allocator_cache(void)
{
    return exec_cache;
}

/* ---- sljit ---- */

void *exec_malloc(size_t size, void *exec_allocator_data)
{
    (void)exec_allocator_data;
    struct code_chunk *chunk = code_cache_alloc(exec_cache, size);
    if (chunk == NULL)
        return NULL;
    /* sljit writes the whole block: claim it, so that the seal keeps it. */
    struct code_span span = code_chunk_alloc(chunk, size, 1);
    if (span.rw == NULL) {
        code_chunk_free(chunk);
        return NULL;
    }
    return span.rw;
}

void exec_free(void *ptr, void *exec_allocator_data)
{
    (void)exec_allocator_data;
    code_chunk_free(code_cache_find(exec_cache, ptr));
}

ptrdiff_t exec_offset(void *ptr)
{
    struct code_span span = code_chunk_span(code_cache_find(exec_cache, ptr));
    return (char *)span.rx - (char *)span.rw;
}

void exec_update_wx_flags(void *from, void *to, int enable_exec)
{
    /* Before writing (enable_exec 0) there is nothing to do: a chunk is writable while OPEN, and
     * with the dual backend its RW view always is. After writing: the first time, seal; later
     * (sljit_set_jump_addr / sljit_set_const rewrote sealed code through the RW view), publish
     * the rewrite to instruction fetch, which code_chunk_patch does. */
    if (!enable_exec)
        return;
    struct code_chunk *chunk = code_cache_find(exec_cache, from);
    struct code_span span = code_chunk_span(chunk);
    if (code_chunk_seal(chunk) == 0 || errno != EBUSY)
        return;
    size_t len = (size_t)((char *)to - (char *)from);
    unsigned char copy[64];
    for (size_t done = 0; done < len; done += sizeof copy) {
        size_t n = len - done < sizeof copy ? len - done : sizeof copy;
        memcpy(copy, (char *)from + done, n);
        char *rx = (char *)span.rx + ((char *)from - (char *)span.rw) + done;
        code_chunk_patch(chunk, rx, copy, n);
    }
}

/* ---- asmjit-like ---- */

int jit_alloc(size_t size, void **rx, void **rw)
{
    void *p = exec_malloc(size, NULL);
    if (p == NULL)
        return -1;
    *rw = p;
    *rx = (char *)p + exec_offset(p);
    return 0;
}

int jit_release(void *rx)
{
    struct code_chunk *chunk = code_cache_find(exec_cache, rx);
    if (chunk == NULL) {
        errno = EINVAL;
        return -1;
    }
    code_chunk_free(chunk);
    return 0;
}

int jit_query(void *rx, void **rw, size_t *size)
{
    struct code_span span = code_chunk_span(code_cache_find(exec_cache, rx));
    if (span.rw == NULL) {
        errno = EINVAL;
        return -1;
    }
    *rw = span.rw;
    *size = span.size;
    return 0;
}
