/*
 * Shared fixtures of the test programs: the backend under test, the /proc/self/maps W^X check of
 * both views, a tiny emitter (x86-64 or A64) for functions that return a constant or call a
 * helper of this program with the architecture's direct call, and jemalloc's statistics.
 */
#ifndef CODE_CACHE_TEST_HELPERS_H
#define CODE_CACHE_TEST_HELPERS_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "code_cache.h"

/*
 * The machine the tests write code for. Everything a test needs to know about it is here, and the
 * code itself comes from the emitter below (test_write_*, emit_*): tests never hold machine code.
 *   TEST_TRAP_BYTE    what a trap is made of: fresh and freed dual-mapped memory is filled with
 *                     it, and so is every unclaimed byte of a sealed chunk (x86-64 int3; aarch64
 *                     udf #0, whose encoding is four zero bytes);
 *   TEST_TRAP_SIGNAL  the signal running a trap raises (int3 SIGTRAP, udf SIGILL);
 *   TEST_INSN_ALIGN   the alignment and size granule of instructions (A64: 4 bytes);
 *   TEST_RETURN_SIZE  the bytes of test_write_return's function;
 *   TEST_CALL_SIZE    the bytes of test_write_call's function;
 *   TEST_ILLEGAL_SIZE the bytes of test_write_illegal's instruction;
 *   TEST_RETURN64_SIZE the bytes of test_write_return64's function;
 *   TEST_CALL_REACH   the reach of the direct call (call rel32: 2 GiB; bl: 128 MiB);
 *   TEST_ELF_MACHINE  e_machine of its ELF files (<elf.h>).
 */
#if defined(__x86_64__)
#define TEST_TRAP_BYTE     0xcc
#define TEST_TRAP_SIGNAL   SIGTRAP
#define TEST_INSN_ALIGN    1
#define TEST_RETURN_SIZE   6
#define TEST_CALL_SIZE     19
#define TEST_ILLEGAL_SIZE  2
#define TEST_RETURN64_SIZE 17
#define TEST_CALL_REACH    ((size_t)1 << 31)
#define TEST_ELF_MACHINE   EM_X86_64
#elif defined(__aarch64__)
#define TEST_TRAP_BYTE     0x00
#define TEST_TRAP_SIGNAL   SIGILL
#define TEST_INSN_ALIGN    4
#define TEST_RETURN_SIZE   12
#define TEST_CALL_SIZE     28
#define TEST_ILLEGAL_SIZE  4
#define TEST_RETURN64_SIZE 16
#define TEST_CALL_REACH    ((size_t)1 << 27)
#define TEST_ELF_MACHINE   EM_AARCH64
#else
#error "tests/helpers.h: no emitter for this architecture"
#endif

/* n rounded up to a whole number of instructions. */
#define TEST_INSN_ROUND(n) (((n) + TEST_INSN_ALIGN - 1) / TEST_INSN_ALIGN * TEST_INSN_ALIGN)

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

/* True when the test program runs in an emulator (a cross build's make check sets
 * CODE_CACHE_TEST_EMULATOR, see tests/run-emulated): loops are shortened there too, and what an
 * emulator cannot give (perf, ptrace of the guest, resource limits on it) is skipped. */
bool test_under_emulator(void);

/* True when instruction fetch does not see code stored through a second, writable view of the
 * same file (qemu-user 7.2 keeps its old translation), measured here once per process on a
 * memfd mapped twice, independently of the library's own probe. Where it is, the dual backend
 * maps the RX view again over itself at every seal, free and patch (lib/wx_dual.c): one more
 * system call each, and one at the first commit of the process (after the library's probe). Under
 * valgrind the library discards translations instead, and so does this measurement. */
bool test_dual_fetch_is_stale(void);

/* The first address above the user address space, as this process sees it: x86-64 with 4-level
 * paging 2^47 - one page (the kernel keeps the top page unmapped); aarch64 1 << VA_BITS, a
 * kernel option, or the host's limit under qemu-user. Measured once: the smallest power of two
 * above the main thread's stack (AT_EXECFN points into its top page), less one page on x86-64. */
uintptr_t test_user_top(void);

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

/*
 * The emitter. Functions written by it take no argument and return an int (jit_fn), or take an
 * int and return one (far_function), by the platform's calling convention.
 *
 * test_write_return writes TEST_RETURN_SIZE bytes at rw: a function returning value.
 *   x86-64: mov eax, imm32; ret.   A64: movz w0, #lo16; movk w0, #hi16, lsl #16; ret.
 * test_write_call writes TEST_CALL_SIZE bytes at rw, to run at rx: a function returning
 * target(arg), calling target with the direct call. False and ERANGE when the call cannot encode
 * the displacement (counted like the CPU does: from the end of the call on x86-64, from the bl
 * itself on aarch64), or target is not 4-byte aligned on aarch64.
 *   x86-64: sub rsp, 8; mov edi, imm32; call rel32; add rsp, 8; ret (the caller enters with
 *           rsp = 8 mod 16, the callee must be called with rsp = 0 mod 16).
 *   A64:    stp x29, x30, [sp, #-16]!; mov x29, sp; movz w0, #lo16; movk w0, #hi16, lsl #16;
 *           bl imm26; ldp x29, x30, [sp], #16; ret (the link register saved in a frame record).
 * test_write_return64 writes TEST_RETURN64_SIZE bytes: a function returning a 64-bit value that
 * it holds as data at offset 8, one aligned 8-byte word when the function is 16-byte aligned (so
 * that one atomic store can change it while other threads run the function).
 *   x86-64: nop x6; movabs rax, imm64; ret.   A64: ldr x0, #8; ret; .quad imm64.
 * test_write_illegal writes TEST_ILLEGAL_SIZE bytes: an instruction raising SIGILL (x86-64 ud2;
 * A64 udf #0, which is also the trap). test_write_nops fills len bytes (a whole number of
 * instructions) with nops.
 */
void test_write_return(void *rw, int value);
void test_write_return64(void *rw, uint64_t value);
bool test_write_call(void *rw, const void *rx, const void *target, int arg);
void test_write_illegal(void *rw);
void test_write_nops(void *rw, size_t len);

/* The address of the instruction that raised a signal, from a SA_SIGINFO handler's context:
 * SIGSEGV's faulting address when the fault is a jump into a page that does not execute, else the
 * instruction that trapped (x86-64 reports int3 with the pc past it). */
uintptr_t test_fault_pc(int sig, const siginfo_t *si, const void *ucontext);

/* The pc of the interrupted context, as the handler of a signal sees it. */
uintptr_t test_context_pc(const void *ucontext);

/* Writes into an OPEN chunk a function that calls helper(arg) with the direct call (through a
 * veneer when code_chunk_call_target says so) and returns its result. The test fails on any
 * error. */
jit_fn emit_call(struct code_chunk *chunk, int (*helper)(int), int arg);

/* The same, without asserting (for threads other than the test's): NULL and errno when
 * code_chunk_call_target or code_chunk_alloc fails or the helper is out of the call's reach. */
jit_fn try_emit_call(struct code_chunk *chunk, int (*helper)(int), int arg);

/* Rewrites sealed code at rx into code (size bytes) the way a JIT rewrites an immediate: only the
 * bytes that differ, in one code_chunk_patch, whose result it returns (0, or -1 and errno). */
int test_patch_code(struct code_chunk *chunk, void *rx, const void *code, size_t size);

/* The same for a function of emit_return's: it returns value from then on (only the instruction
 * holding the constant changes: x86-64 the imm32 of mov eax, A64 the movz and, for values that
 * need it, the movk). */
int test_patch_return(struct code_chunk *chunk, jit_fn fn, int value);

/* The same for a function of emit_call's: it calls its helper with arg from then on (only the
 * instructions that load the argument change). */
int test_patch_call_arg(struct code_chunk *chunk, jit_fn fn, int arg);

/* Writes into an OPEN chunk a function returning value (test_write_return). */
jit_fn emit_return(struct code_chunk *chunk, int value);

/* The same, without asserting: NULL and errno when code_chunk_alloc fails. */
jit_fn try_emit_return(struct code_chunk *chunk, int value);

/* Writes at span (rw and rx, size >= TEST_RETURN_SIZE bytes, a whole number of instructions) a
 * function of exactly span.size bytes returning value: test_write_return's function with nops
 * before its last instruction (the ret). */
jit_fn fill_return(struct code_span span, int value);

/*
 * A function computing 2 * x + 5, written into a page of this program's own, mapped at least 8 GiB
 * away from the cache so that no direct call reaches it: calls to it need a veneer. Unmapped by
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
 * raises SIGSEGV, a trap TEST_TRAP_SIGNAL), which a .signal test cannot declare: runs fault(arg) in
 * a fork()ed child that must die of sig at an address in [lo, hi) (as expect_fatal_signal checks
 * it), and asserts that it did. The test itself goes on.
 */
void expect_child_fault(int sig, const void *lo, const void *hi, void (*fault)(void *), void *arg);

/* The signal a jump to addr raises: SIGSEGV where its page is not executable, TEST_TRAP_SIGNAL
 * where it holds a trap. */
int fault_signal_at(const void *addr);

#endif
