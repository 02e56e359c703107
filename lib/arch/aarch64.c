/*
 * aarch64 (A64): imm26 branches counted from the instruction itself, udf #0 traps, an instruction
 * cache that must be maintained by software, and cores that must be told when code they may
 * already have run changes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../arch.h"
#include "../debug.h"

#if defined(__aarch64__)

/* bl / b imm26: a signed 26-bit count of 4-byte instructions, so a target t is reachable from an
 * origin o when -2^27 <= t - o <= 2^27 - 4; the rule of arch.h says <= 2^27 - 1, which is the same
 * for the 4-byte aligned targets a branch can have. */
const size_t arch_default_reach = (size_t)1 << 27;

/* The origin is the branch's own address: within [lo, hi) a 4-byte bl can sit anywhere from lo
 * to hi - 4. */
const size_t arch_origin_first = 0;
const size_t arch_origin_last = 4;

/* ldr x16, #8; br x16; .quad target. x16 (IP0) is the scratch register the procedure call
 * standard reserves for exactly this: linker veneers and PLT stubs use it, so no caller expects
 * it to survive a call, and a BTI landing pad "bti c" at the target accepts br x16. */
const size_t arch_veneer_size = 16;

/*
 * Branch Target Identification (Armv8.5): in a page mapped with PROT_BTI, an indirect branch
 * (br, blr) must land on a bti instruction of the right kind, or the CPU raises SIGILL. The cache's
 * pages are guarded only with CODE_CACHE_BTI; the kernel refuses PROT_BTI with EINVAL where the CPU
 * or the kernel lacks BTI, which makes create fail rather than silently drop the guard.
 */
#ifndef PROT_BTI
#define PROT_BTI 0x10
#endif
const int arch_prot_bti = PROT_BTI;

/*
 * The top of the user address space is 1 << VA_BITS, which is a kernel build option on arm64: 48
 * bits on most distributions, 39 or 36 (three- or two-level tables, 4 KiB or 16 KiB pages) on some
 * embedded and Android kernels, 42 or 47 with 64 KiB or 16 KiB pages, 52 with LVA. A constant
 * would make placement count a gap that the kernel refuses with ENOMEM as free, so it is found
 * at run time: the main thread's stack is created just below the top (minus at most its
 * randomisation, far less than half of the space), and AT_EXECFN points into the stack's top
 * page, so the smallest power of two above it is the top. A 52-bit kernel hands out addresses
 * above 2^48 only to a caller that asks for them with a hint above 2^48 (like x86-64's 5-level
 * paging): 48 bits is the most placement ever uses. Under qemu-user the guest sees the host's
 * limit (47 bits on x86-64) or less, which this finds too.
 */
uintptr_t arch_user_top = (uintptr_t)1 << 48;

/*
 * Cross-core synchronisation. __builtin___clear_cache cleans the data cache and invalidates the
 * instruction cache by address (dc cvau / ic ivau, broadcast to every core of the inner shareable
 * domain), then an isb on this core. Another core that already fetched instructions from those
 * addresses may still hold them in its pipeline: the architecture asks for a context
 * synchronisation event on that core too before it runs the new code. Linux gives one to every
 * thread of the process with membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE): an IPI to
 * the cores running our threads (each returns through an eret), while threads that are not
 * running get theirs when they are next scheduled. It must be registered once per process.
 */
static bool arch_sync_registered;
static pthread_once_t arch_once = PTHREAD_ONCE_INIT;

static void arch_init_once(void)
{
    uintptr_t execfn = (uintptr_t)getauxval(AT_EXECFN);
    if (execfn != 0) {
        unsigned bits = 64u - (unsigned)__builtin_clzl(execfn);
        if (bits < 48)
            arch_user_top = (uintptr_t)1 << bits;
    }
    /* Registering costs a few microseconds once (measured in README.md); unregistered, the
     * command fails with EPERM. Kernels before 4.16 do not know it (EINVAL): then no user-space
     * means forces other cores through a context synchronisation event, and sealing a reused
     * span or patching relies on the threads not running that code at that moment, as every
     * JIT on such kernels does. */
    int saved = errno;
    arch_sync_registered =
        syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE, 0, 0) == 0;
    if (!arch_sync_registered)
        debug_log("arch: membarrier SYNC_CORE unavailable (errno %d): other cores are not "
                  "resynchronised after code they ran changes",
                  errno);
    errno = saved;
}

void arch_init(void)
{
    pthread_once(&arch_once, arch_init_once);
}

/*
 * udf #0 (0x00000000), not brk: both trap, but brk raises SIGTRAP, which debuggers take for
 * their own breakpoints (and gcc's __builtin_trap is brk #0x3e8), while a permanently undefined
 * instruction raises SIGILL (ILL_ILLOPC): a stray jump into unclaimed or freed bytes is reported
 * as what it is. And its encoding is all zero bits, so the fill is a memset whatever the
 * alignment: every whole 4-byte word of [rx, rx + len) (instructions are 4-byte aligned) becomes
 * udf #0, and the bytes of a word that the span only partly covers belong to the neighbouring
 * code, which we must not touch anyway. Fresh zero pages, and the hole-punched pages of the dual
 * backend's file, are traps already.
 */
void arch_fill_trap(void *rw, uintptr_t rx, size_t len)
{
    (void)rx; /* zero bytes make udf #0 at any alignment */
    memset(rw, 0, len);
}

void arch_write_return(void *rw, uint16_t value)
{
    /* bti c; mov w0, #value; ret. The landing pad lets it be called through a pointer in a
     * guarded page; without BTI it is a hint that does nothing. */
    const uint32_t code[3] = {0xd503245f, 0x52800000u | (uint32_t)value << 5, 0xd65f03c0};
    memcpy(rw, code, sizeof code);
}

void arch_write_veneer(void *rw, const void *rx, const void *target)
{
    (void)rx; /* the jump is absolute; where it runs does not matter */
    const uint32_t ldr_x16_pc8 = 0x58000050; /* ldr x16, #8 (literal, imm19 = 2, Rt = 16) */
    const uint32_t br_x16 = 0xd61f0200;      /* br x16 (Rn = 16) */
    unsigned char *p = rw;
    uint64_t abs = (uint64_t)(uintptr_t)target;
    /* A64 instructions are little-endian whatever the data endianness; Linux runs aarch64
     * little-endian here (aarch64_be is not a supported host). The literal is 8-byte aligned: a
     * veneer starts at a multiple of 16 from a granule-aligned chunk. */
    memcpy(p, &ldr_x16_pc8, 4);
    memcpy(p + 4, &br_x16, 4);
    memcpy(p + 8, &abs, 8);
}

void arch_flush_icache(void *rx, size_t len)
{
    /* Cleaning by the address that runs is enough for the dual backend's second view too: the
     * data cache behaves as physically indexed and tagged, so the lines written through the RW
     * view are the ones cleaned, and the instruction cache is invalidated where it fetches. */
    __builtin___clear_cache((char *)rx, (char *)rx + len);
}

void arch_sync_cores(void)
{
    if (!arch_sync_registered)
        return;
    int saved = errno;
    syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, 0, 0);
    errno = saved;
}

#endif
