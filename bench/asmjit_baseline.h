/*
 * asmjit's JitAllocator as a baseline (bench/asmjit_baseline.cc, C++), built only when configure
 * found libasmjit-dev; then BENCH_HAVE_ASMJIT is defined. By default JitAllocator maps its blocks
 * read, write and execute at once (no W^X, nothing to seal); with dual (its kUseDualMapping
 * option) it writes through a second, writable view of the same memory, as the library's dual
 * backend does.
 */
#ifndef BENCH_ASMJIT_BASELINE_H
#define BENCH_ASMJIT_BASELINE_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* bench/alloc: allocates count functions of fsize bytes with one asmjit::JitAllocator, copies
 * code (fsize bytes; bytes 1-4 receive the function's index) into each, and stores the time in
 * *ns. Returns 0, or -1 when asmjit fails. The last function is called to check that it runs;
 * everything is released afterwards, outside the timing. */
int bench_asmjit_alloc(size_t count, size_t fsize, const void *code, bool dual, double *ns);

/* One allocator, for loops written in C: alloc hands out a function's two addresses (equal
 * without dual), release frees it by its rx address. NULL / -1 on failure. */
struct bench_jit;
struct bench_jit *bench_jit_new(bool dual);
int bench_jit_alloc(struct bench_jit *jit, size_t size, void **rx, void **rw);
int bench_jit_release(struct bench_jit *jit, void *rx);
/* The allocator's own figures: bytes handed out, bytes of its blocks, bytes of its bookkeeping. */
void bench_jit_statistics(const struct bench_jit *jit, size_t *used, size_t *reserved,
                          size_t *overhead);
void bench_jit_delete(struct bench_jit *jit);

/* "1.9.0", say. */
const char *bench_asmjit_version(void);

#ifdef __cplusplus
}
#endif

#endif /* BENCH_ASMJIT_BASELINE_H */
