/*
 * Shared fixtures of the test programs: the backend under test, the /proc/self/maps W^X check of
 * both views, a tiny x86-64 emitter for functions that call a helper of this program with call
 * rel32, and jemalloc's statistics.
 */
#ifndef CODE_CACHE_TEST_HELPERS_H
#define CODE_CACHE_TEST_HELPERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "code_cache.h"

/* What a trap instruction is made of (x86-64 int3): fresh and freed dual-mapped memory is filled
 * with it, and so is every unclaimed byte of a sealed chunk. */
#define TEST_TRAP_BYTE 0xcc

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

/*
 * The backend under test. Every chunk test program runs twice from one source: as itself
 * (mprotect, the default) and with CODE_CACHE_TEST_BACKEND=dual in its environment (Makefile.am
 * generates the wrappers), which makes test_backend_flags() CODE_CACHE_DUAL_MAP. Expectations
 * that differ by backend are derived from the cache's statistics (granule, backend), or from
 * test_dual() where no cache exists yet, never written twice.
 */
unsigned test_backend_flags(void);
bool test_dual(void);
const char *test_backend_name(void);

/* Creates a cache (code_cache_create: NULL and errno on failure, nothing asserted) and, for a
 * dual-mapped one, finds its RW view in /proc/self/maps (the library tells nobody where it is, on
 * purpose: the new shared mapping of the file) and remembers it for check_maps. check_maps looks
 * for the RW view of a cache made otherwise too, but then cannot tell apart two such caches of one
 * size. */
struct code_cache *test_cache_create(const struct code_cache_options *opts);

/* A cache of size bytes near helper_triple with the backend under test; the test fails if it
 * cannot be created. */
struct code_cache *test_cache_near_helper(size_t size);

/* The same with the given flags (a test about one backend only). */
struct code_cache *test_cache_near_helper_flags(size_t size, unsigned flags);

/* True for a cache of the dual-mapped backend (stats.backend). */
bool test_cache_is_dual(const struct code_cache *cache);

/*
 * Checks every mapping of the cache in /proc/self/maps (valgrind keeps rwx mappings of its own,
 * so only the cache's are looked at). Call it after every operation.
 *   The region [base - page, base + reserved + page): no hole, both guard pages inaccessible, no
 *   page writable and executable, and the bytes that are accessible exactly stats.committed +
 *   stats.retired.
 *   Dual-mapped: the region is never writable; its accessible pages are the shared file mapped
 *   r-x at the offset of their own address (rx - base), its other pages anonymous ---. The RW view
 *   is the same file mapped shared over [rw, rw + reserved) from offset 0, rw- (r-- where
 *   CODE_CACHE_DUAL_HARDEN made sealed pages read-only), with a --- guard page on each side, never
 *   executable, and neither overlapping nor touching the region. The file is mapped nowhere else.
 *   In a fork()ed child the RW view is absent.
 */
void check_maps(const struct code_cache *cache);

/* Mappings of a dual-mapped cache's file outside both views (which check_maps refuses): unmaps
 * them and returns their bytes. Only a failure the tests inject can leave one: the trial mapping
 * of create when its munmap fails, which munmap of a whole mapping never does. */
size_t unmap_stray_file_mappings(const struct code_cache *cache);

/* Only the W^X part of check_maps, for both views: no page writable and executable, the RX
 * region never writable and the RW view never executable. Safe while other threads change
 * protections (the accounting of check_maps is not). Returns the number of mappings of the
 * cache looked at (region and RW view). */
size_t check_no_wx(const struct code_cache *cache);

/* Asserts that every page of [addr, addr + len) is mapped with protection prot: "rw-", "r-x",
 * "---"... */
void expect_prot(const void *addr, size_t len, const char *prot);

/* The protection of the page holding addr ("r-x", "---"...), or "" when nothing maps it. */
void page_prot(const void *addr, char prot[4]);

/* The same for each of the pages pages from the page-aligned addr, with one read of the maps. */
void page_prots(const void *addr, size_t pages, char (*prot)[4]);

/* What the chunk's memory looks like in each state, in both views. OPEN: writable through .rw,
 * not runnable there (mprotect: rw- where it runs, so it does not run yet; dual: the RW view is
 * rw-, the RX view r-x). SEALED: r-x where it runs, and (dual) still rw- through the RW view. */
void expect_open_chunk(const struct code_chunk *chunk);
void expect_sealed_chunk(const struct code_chunk *chunk);

/* After code_chunk_free of the chunk whose span was this (taken before the free): nothing of it
 * runs. mprotect: ---. Dual: each page is --- (given back in a batch) or r-x holding nothing but
 * traps, read through both views. */
void expect_freed_span(struct code_span span);

/* Asserts that the chunk holds fresh content, never old code: zeroes (mprotect: rw == rx) or
 * traps (dual). */
void expect_fresh_chunk(const struct code_chunk *chunk);

/* Bytes of [addr, addr + len) covered by some mapping. */
size_t mapped_bytes(const void *addr, size_t len);

/* Number of open file descriptors of this process (entries of /proc/self/fd). */
size_t open_fds(void);

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

/* Writes at span (rw and rx, size >= 6 bytes) a function of exactly span.size bytes returning
 * value: mov eax, imm32, then nops, then ret. */
jit_fn fill_return(struct code_span span, int value);

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

/*
 * For faults whose signal depends on the backend or on the state of a page (an inaccessible page
 * raises SIGSEGV, a trap SIGTRAP), which a .signal test cannot declare: runs fault(arg) in a
 * fork()ed child that must die of sig at an address in [lo, hi) (as expect_fatal_signal checks
 * it), and asserts that it did. The test itself goes on.
 */
void expect_child_fault(int sig, const void *lo, const void *hi, void (*fault)(void *), void *arg);

/* The signal a jump to addr raises: SIGSEGV where its page is not executable, SIGTRAP where it
 * holds a trap. */
int fault_signal_at(const void *addr);

#endif
