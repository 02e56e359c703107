/*
 * The asmjit baseline of bench/alloc, in C++ (bench/alloc_asmjit.cc), built only when configure
 * found libasmjit-dev; then BENCH_HAVE_ASMJIT is defined.
 */
#ifndef BENCH_ALLOC_ASMJIT_H
#define BENCH_ALLOC_ASMJIT_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Allocates count functions of fsize bytes with one asmjit::JitAllocator, copies code (fsize
 * bytes; bytes 1-4 receive the function's index) into each, and stores the time in *ns. With
 * dual, the allocator maps its blocks twice (rw and rx views). Returns 0, or -1 when asmjit
 * fails. The last function is called to check that it runs; everything is released afterwards,
 * outside the timing. */
int bench_asmjit_alloc(size_t count, size_t fsize, const void *code, bool dual, double *ns);

/* "1.9.0", say. */
const char *bench_asmjit_version(void);

#ifdef __cplusplus
}
#endif

#endif /* BENCH_ALLOC_ASMJIT_H */
