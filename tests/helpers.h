/*
 * Shared fixtures of the test programs: the /proc/self/maps W^X check, a tiny x86-64 emitter for
 * functions that call a helper of this program with call rel32, and jemalloc's statistics.
 */
#ifndef CODE_CACHE_TEST_HELPERS_H
#define CODE_CACHE_TEST_HELPERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "code_cache.h"

/* A function in this program for JIT code to call: returns 3 * x + 1. */
int helper_triple(int x);

/* The function type of everything the emitter writes: no argument, an int result. */
typedef int (*jit_fn)(void);

size_t test_page_size(void);

/* True when caller (a return address) lies in the shared libcodecache itself, judged by the
 * file name of the object, not its directory: a build tree may be called libcodecache-0.1.0.
 * The interposers of mmap, mprotect, open... use it to act on the library's calls only. */
bool test_called_from_library(const void *caller);

/* True when running under valgrind (loops are shortened there). */
bool test_under_valgrind(void);

/* A cache of size bytes near helper_triple; the test fails if it cannot be created. */
struct code_cache *test_cache_near_helper(size_t size);

/*
 * Checks the cache's part of /proc/self/maps (valgrind keeps rwx mappings of its own, so only the
 * cache's range is looked at): no page is writable and executable, both guard pages are
 * inaccessible, and the bytes that are accessible are exactly stats.committed + stats.retired.
 * Call it after every operation.
 */
void check_maps(const struct code_cache *cache);

/* Only the W^X part of check_maps: no page of the cache is writable and executable. Safe while
 * other threads change protections (the accounting of check_maps is not). Returns the number of
 * mappings looked at. */
size_t check_no_wx(const struct code_cache *cache);

/* Asserts that every page of [addr, addr + len) is mapped with protection prot: "rw-", "r-x",
 * "---"... */
void expect_prot(const void *addr, size_t len, const char *prot);

/* Asserts that every byte of the chunk is zero: fresh memory, no old content. */
void expect_zero_chunk(const struct code_chunk *chunk);

/* Bytes of [addr, addr + len) covered by some mapping. */
size_t mapped_bytes(const void *addr, size_t len);

/* Writes into an OPEN chunk a function that calls helper(arg) with call rel32 (through a veneer
 * when code_chunk_call_target says so) and returns its result. The test fails on any error. */
jit_fn emit_call(struct code_chunk *chunk, int (*helper)(int), int arg);

/* The same, without asserting (for threads other than the test's): NULL and errno when
 * code_chunk_call_target or code_chunk_alloc fails or the helper is out of rel32 reach. */
jit_fn try_emit_call(struct code_chunk *chunk, int (*helper)(int), int arg);

/* Writes into an OPEN chunk a function returning value (mov eax, imm32; ret). */
jit_fn emit_return(struct code_chunk *chunk, int value);

/* The same, without asserting: NULL and errno when code_chunk_alloc fails. */
jit_fn try_emit_return(struct code_chunk *chunk, int value);

/*
 * A function computing 2 * x + 5, written into a page of this program's own, mapped at least 8 GiB
 * away from the cache so that no rel32 reaches it: calls to it need a veneer. Unmapped by
 * far_function_release.
 */
int (*far_function(const struct code_cache *cache))(int);
void far_function_release(int (*fn)(int));

/* Sum of small + large bytes allocated in every jemalloc arena, read through mallctl (found with
 * dlsym: the tests do not link jemalloc, so that malloc stays glibc's, which memcheck watches). */
size_t jemalloc_allocated(void);

/* jemalloc's arenas.narenas: how many arenas exist in the process. */
unsigned jemalloc_narenas(void);

/* VmSize of this process, in bytes, from /proc/self/status. */
size_t vm_size(void);

/*
 * For the .signal tests: the next fault of kind sig must happen inside [lo, hi) (lo == hi: any
 * address), or the test dies of SIGKILL instead. The handler re-raises the signal itself, so that
 * valgrind sees a signal sent by the program and does not log the "Process terminating" report
 * that a fault would produce in the memcheck log.
 */
void expect_fatal_signal(int sig, const void *lo, const void *hi);

#endif
