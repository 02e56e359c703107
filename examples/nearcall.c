/*
 * nearcall: the smallest real use of libcodecache.
 *
 * A runtime has a helper function; generated code wants to call it with the short direct form,
 * `call rel32` (5 bytes, reaching +-2 GiB). So the example
 *
 *   1. creates a code cache near the helper: every byte of it can reach the helper with rel32;
 *   2. takes a chunk (OPEN: writable, not executable) and allocates a function in it;
 *   3. writes the function's machine code, which calls the helper with call rel32;
 *   4. seals the chunk (now executable, no longer writable) and calls the function;
 *   5. prints what happened, and frees everything.
 *
 * Build: cc nearcall.c $(pkg-config --cflags --libs codecache)    (x86-64 Linux)
 */
#include <code_cache.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The runtime's helper. noinline: it must exist as a real function at a real address. */
__attribute__((noinline)) static int helper(int x)
{
    return 2 * x + 1;
}

/* The generated function: int fn(void) { return helper(20); } in x86-64 machine code. The stack
 * is 8 bytes off 16-byte alignment on entry (the return address), so it is adjusted around the
 * call as the System V ABI requires. */
static const unsigned char code[] = {
    0x48, 0x83, 0xec, 0x08,    /* sub  rsp, 8 */
    0xbf, 20,   0,    0,    0, /* mov  edi, 20 */
    0xe8, 0,    0,    0,    0, /* call rel32 helper  (displacement patched below) */
    0x48, 0x83, 0xc4, 0x08,    /* add  rsp, 8 */
    0xc3,                      /* ret */
};
enum { CALL_AT = 9, CALL_END = 14 }; /* the call instruction: offset and end */

static void die(const char *what)
{
    fprintf(stderr, "nearcall: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(void)
{
    /* 1. A 1 MiB cache from which a direct call reaches helper. */
    struct code_cache_options opts = {.size = 1 << 20, .near = (const void *)helper};
    struct code_cache *cache = code_cache_create(&opts);
    if (cache == NULL)
        die("code_cache_create");

    /* 2. One chunk (a page), one function in it, aligned to 16 bytes. */
    struct code_chunk *chunk = code_cache_alloc(cache, 4096);
    if (chunk == NULL)
        die("code_cache_alloc");
    struct code_span fn = code_chunk_alloc(chunk, sizeof code, 16);
    if (fn.rw == NULL)
        die("code_chunk_alloc");

    /* 3. Write the code through fn.rw; compute the displacement from where it will run, fn.rx.
     * code_chunk_call_target returns the helper itself when rel32 reaches it (always, in a cache
     * created near it), else a veneer inside the chunk. */
    const void *target = code_chunk_call_target(chunk, (const void *)helper);
    if (target == NULL)
        die("code_chunk_call_target");
    int64_t disp = (int64_t)((intptr_t)target - ((intptr_t)fn.rx + CALL_END));
    if (disp < INT32_MIN || disp > INT32_MAX) {
        errno = ERANGE; /* cannot happen with a cache created near the helper */
        die("rel32 displacement");
    }
    int32_t rel32 = (int32_t)disp;
    memcpy(fn.rw, code, sizeof code);
    memcpy((unsigned char *)fn.rw + CALL_AT + 1, &rel32, sizeof rel32);

    /* 4. Seal: one mprotect makes the chunk read+exec. Then run it. */
    if (code_chunk_seal(chunk) != 0)
        die("code_chunk_seal");
    int (*generated)(void) = (int (*)(void))fn.rx;
    int result = generated();

    /* 5. Report. */
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    uintptr_t from = (uintptr_t)fn.rx + CALL_END, to = (uintptr_t)helper;
    uintptr_t distance = from > to ? from - to : to - from;
    printf("generated code returned %d (helper(20) = %d)\n", result, helper(20));
    printf("helper            %p\n", (const void *)helper);
    printf("cache region      [%#" PRIxPTR ", %#" PRIxPTR ")  %zu KiB\n", st.base,
           st.base + st.reserved, st.reserved >> 10);
    printf("function          %p, %zu bytes\n", fn.rx, sizeof code);
    printf("call rel32        e8 %02x %02x %02x %02x  (displacement %+" PRId64 ")\n",
           (unsigned)rel32 & 0xff, ((unsigned)rel32 >> 8) & 0xff, ((unsigned)rel32 >> 16) & 0xff,
           ((unsigned)rel32 >> 24) & 0xff, disp);
    printf("distance          %.1f MiB (rel32 reaches %zu MiB)\n", (double)distance / (1 << 20),
           st.reach >> 20);
    printf("via veneer        %s\n", target == (const void *)helper ? "no" : "yes");
    printf("stats             %zu KiB in use + %zu KiB committed ahead, free %zu KiB,\n"
           "                  chunks %zu open / %zu sealed, %zu allocated,\n"
           "                  %zu system calls (%zu mprotect), %zu bytes of bookkeeping\n",
           st.in_use >> 10, st.committed_ahead >> 10, st.free >> 10, st.open_chunks,
           st.sealed_chunks, st.chunks_allocated, st.system_calls, st.protection_changes,
           st.meta_bytes);

    code_chunk_free(chunk);
    code_cache_destroy(cache);
    return result == helper(20) ? 0 : 1;
}
