/*
 * arch/<arch>.c: the instruction set. Everything that depends on it lives in one file per
 * architecture with this interface: the direct branch's reach and the rule it counts by, the
 * veneer, the trap, the instruction-cache flush and the synchronisation of other cores.
 */
#ifndef CODE_CACHE_ARCH_H
#define CODE_CACHE_ARCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

extern const size_t arch_default_reach; /* direct branch reach: x86-64 rel32 = 2 GiB,
                                           aarch64 imm26 = 128 MiB */
extern const size_t arch_veneer_size;   /* bytes of one veneer: CODE_CACHE_VENEER_SIZE */
/* The protection bit that makes code pages guarded (aarch64 PROT_BTI), or 0 where there is none:
 * CODE_CACHE_BTI is refused with EINVAL. */
extern const int arch_prot_bti;
/* First address above the user address space: a constant where the architecture fixes it,
 * found by arch_init where the kernel's configuration decides (aarch64). */
extern uintptr_t arch_user_top;

/* What the architecture learns or sets up once per process (idempotent, thread-safe): called by
 * code_cache_create before anything else reads this interface. */
void arch_init(void);

/*
 * The reach rule, in the instruction's own terms. A direct branch lying inside a range [lo, hi)
 * counts its displacement from an origin: x86-64 rel32 from the end of the instruction (the next
 * instruction's address), aarch64 imm26 from the instruction itself. The shortest such branch
 * lies in [lo, hi), so its origin is at least lo + arch_origin_first and at most
 * hi - arch_origin_last:
 *
 *     x86-64:  call rel32 is 5 bytes, origin = its end:    first = 5, last = 0
 *     aarch64: bl is 4 bytes, origin = its own address:    first = 0, last = 4
 *
 * A target t is reached from an origin o when -reach <= t - o <= reach - 1.
 */
extern const size_t arch_origin_first;
extern const size_t arch_origin_last;

/* True when a direct branch placed anywhere in [lo, hi) reaches every byte of [tlo, thi) with the
 * given reach, by the rule above. No arithmetic here can wrap. */
static inline bool reach_covers(uintptr_t lo, uintptr_t hi, uintptr_t tlo, uintptr_t thi,
                                size_t reach)
{
    /* An empty range reaches nothing; nor does one too short to hold a branch. This also makes a
     * caller's t + 1 that wrapped to 0 fail instead of passing vacuously. */
    if (hi <= lo || thi <= tlo || hi - lo < arch_origin_first + arch_origin_last)
        return false;
    const uintptr_t first = lo + arch_origin_first, last = hi - arch_origin_last;
    /* The largest displacement is from the first origin to the last target byte:
     * (thi - 1) - first <= reach - 1. Only computed when positive, so nothing wraps. */
    if (thi > first && thi - first > reach)
        return false;
    /* The most negative is from the last origin to the first target: tlo - last >= -reach. */
    if (last > tlo && last - tlo > reach)
        return false;
    return true;
}

/* Fills len bytes written at rw, which run at rx, with trapping instructions. */
void arch_fill_trap(void *rw, uintptr_t rx, size_t len);
/* Writes at rw a function of no argument that returns value (at most arch_veneer_size bytes): the
 * library's own check that instruction fetch sees what it writes (wx_dual.c). */
void arch_write_return(void *rw, uint16_t value);
/* Writes at rw a veneer that, run at rx, jumps to target from anywhere. */
void arch_write_veneer(void *rw, const void *rx, const void *target);
/* Makes code written (through any view) at [rx, rx + len) visible to instruction fetch. */
void arch_flush_icache(void *rx, size_t len);
/* After arch_flush_icache of code at addresses that other threads may already have run (a span
 * reused after free or reset, a patch): makes every other core of the process resynchronise its
 * instruction stream before it runs them again. Fresh memory never needs it. */
void arch_sync_cores(void);

#endif
