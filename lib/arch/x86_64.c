/*
 * x86-64: rel32 branches counted from the end of the instruction, int3 traps, a coherent
 * instruction cache.
 */
#include <string.h>

#include "../arch.h"

#if defined(__x86_64__)

/* call rel32 / jmp rel32: the displacement is a signed 32-bit offset, so a target t is reachable
 * from an origin o when -2^31 <= t - o <= 2^31 - 1. */
const size_t arch_default_reach = (size_t)1 << 31;

/* The origin is the end of the instruction (the address of the next one): the shortest direct
 * branch, call or jmp rel32, is 5 bytes, so within [lo, hi) origins run from lo + 5 to hi. A call
 * in the last five bytes of a chunk measures from the chunk's end. */
const size_t arch_origin_first = 5;
const size_t arch_origin_last = 0;

/* TASK_SIZE_MAX with 4-level paging: (1 << 47) - one page (x86-64 base pages are always 4 KiB).
 * With 5-level paging the kernel still hands out addresses above 47 bits only to callers that ask
 * for them with a hint. */
uintptr_t arch_user_top = ((uintptr_t)1 << 47) - 4096;

void arch_init(void)
{
    /* Nothing to learn: the address space and the caches are the same on every x86-64. */
}

/* No branch-target guard pages (Intel's IBT is enabled per process, not per page). */
const int arch_prot_bti = 0;

/* jmp qword [rip + 0]; .quad target -- 6 + 8 bytes, padded to 16 so veneers stay aligned. */
const size_t arch_veneer_size = 16;

void arch_fill_trap(void *rw, uintptr_t rx, size_t len)
{
    (void)rx; /* one byte per trap: any alignment will do */
    /* int3: a one-byte trap, so any stray jump into unclaimed bytes raises SIGTRAP. */
    memset(rw, 0xcc, len);
}

void arch_write_return(void *rw, uint16_t value)
{
    unsigned char code[6] = {0xb8, (unsigned char)value, (unsigned char)(value >> 8), 0, 0, 0xc3};
    memcpy(rw, code, sizeof code); /* mov eax, imm32; ret */
}

void arch_write_veneer(void *rw, const void *rx, const void *target)
{
    (void)rx; /* the jump is absolute; where it runs does not matter */
    static const unsigned char jmp_rip0[6] = {0xff, 0x25, 0x00, 0x00, 0x00, 0x00};
    unsigned char *p = rw;
    uint64_t abs = (uint64_t)(uintptr_t)target;
    memcpy(p, jmp_rip0, sizeof jmp_rip0);
    memcpy(p + 6, &abs, sizeof abs);
    memset(p + 14, 0xcc, arch_veneer_size - 14);
}

void arch_flush_icache(void *rx, size_t len)
{
    /* x86 keeps instruction and data caches coherent, across views of the same memory too; the
     * builtin compiles to nothing here but keeps this call site honest for other ports. */
    __builtin___clear_cache((char *)rx, (char *)rx + len);
}

void arch_sync_cores(void)
{
    /* x86 processors detect stores into code, from any core and through any view, and refetch
     * what they had fetched: nothing to do, and no system call is made. */
}

#endif
