/*
 * The A64 encoder. Every instruction is one 32-bit word; memory operands are [base + offset] with
 * the scaled 12-bit form when the offset fits it, the unscaled 9-bit form when that fits, else the
 * address computed into x10 first. Branches to labels are b (±128 MiB), b.cond and cbz (±1 MiB):
 * far more than one schema's code.
 */
#if defined(__aarch64__)

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <code_cache.h>

#include "a64_emit.h"

void a64_init(struct a64_asm *e)
{
    memset(e, 0, sizeof *e);
}

void a64_release(struct a64_asm *e)
{
    free(e->code);
    free(e->pool);
    free(e->labels);
    free(e->refs);
    memset(e, 0, sizeof *e);
}

/* Grows *buf to hold need elements of size bytes. On failure marks the emitter failed: the
 * caller checks once at the end instead of after every instruction. */
static bool a64_grow(struct a64_asm *e, void **buf, size_t *cap, size_t need, size_t size)
{
    if (e->failed)
        return false;
    if (need <= *cap)
        return true;
    size_t ncap = *cap ? *cap * 2 : 64;
    while (ncap < need)
        ncap *= 2;
    void *nbuf = realloc(*buf, ncap * size);
    if (nbuf == NULL) {
        e->failed = true;
        return false;
    }
    *buf = nbuf;
    *cap = ncap;
    return true;
}

static void a64_emit(struct a64_asm *e, uint32_t insn)
{
    if (!a64_grow(e, (void **)&e->code, &e->cap, e->len + 1, sizeof *e->code))
        return;
    e->code[e->len++] = insn;
}

/* Records a reference to patch in the instruction about to be emitted. */
static void a64_ref(struct a64_asm *e, enum a64_ref_kind kind, size_t to, const void *target)
{
    if (!a64_grow(e, (void **)&e->refs, &e->refs_cap, e->nrefs + 1, sizeof *e->refs))
        return;
    e->refs[e->nrefs++] = (struct a64_ref){.at = e->len, .kind = kind, .to = to, .target = target};
}

size_t a64_label(struct a64_asm *e)
{
    if (!a64_grow(e, (void **)&e->labels, &e->labels_cap, e->nlabels + 1, sizeof *e->labels))
        return 0;
    e->labels[e->nlabels] = SIZE_MAX;
    return e->nlabels++;
}

void a64_bind(struct a64_asm *e, size_t label)
{
    if (!e->failed)
        e->labels[label] = e->len;
}

void a64_align(struct a64_asm *e, size_t align)
{
    while ((e->len * 4) % align != 0 && !e->failed)
        a64_emit(e, 0x00000000); /* udf #0 */
}

size_t a64_pool_add(struct a64_asm *e, const void *bytes, size_t len)
{
    /* 16-byte aligned entries: a literal load counts in words, and a q register takes 16. */
    size_t off = (e->pool_len + 15) & ~(size_t)15;
    if (!a64_grow(e, (void **)&e->pool, &e->pool_cap, off + len, 1))
        return 0;
    memset(e->pool + e->pool_len, 0, off - e->pool_len);
    memcpy(e->pool + off, bytes, len);
    e->pool_len = off + len;
    return off;
}

static uint32_t r(enum a64_reg reg, unsigned shift)
{
    return (uint32_t)reg << shift;
}

void a64_mov(struct a64_asm *e, enum a64_reg dst, enum a64_reg src)
{
    if (dst == src)
        return;
    a64_emit(e, 0xaa0003e0 | r(src, 16) | r(dst, 0)); /* orr dst, xzr, src */
}

void a64_mov_imm(struct a64_asm *e, enum a64_reg dst, uint64_t imm)
{
    bool first = true;
    for (unsigned hw = 0; hw < 4; hw++) {
        uint32_t part = (uint32_t)(imm >> (16 * hw)) & 0xffff;
        if (part == 0 && !(first && hw == 3))
            continue;
        /* movz for the first half-word that is not zero, movk for the others. */
        a64_emit(e, (first ? 0xd2800000 : 0xf2800000) | hw << 21 | part << 5 | r(dst, 0));
        first = false;
    }
}

void a64_add_imm(struct a64_asm *e, enum a64_reg dst, enum a64_reg src, int64_t imm)
{
    uint64_t u = imm < 0 ? 0 - (uint64_t)imm : (uint64_t)imm;
    uint32_t op = imm < 0 ? 0xd1000000 : 0x91000000; /* sub / add (immediate), 64-bit */
    if (u == 0 && dst == src)
        return;
    if (u < 4096) {
        a64_emit(e, op | (uint32_t)u << 10 | r(src, 5) | r(dst, 0));
    } else if (u < ((uint64_t)1 << 24)) {
        a64_emit(e, op | 1u << 22 | (uint32_t)(u >> 12) << 10 | r(src, 5) | r(dst, 0));
        if ((u & 0xfff) != 0)
            a64_emit(e, op | (uint32_t)(u & 0xfff) << 10 | r(dst, 5) | r(dst, 0));
    } else {
        /* x16 is free between calls (veneers use it only inside a call). */
        a64_mov_imm(e, X16, u);
        a64_emit(e, (imm < 0 ? 0xcb000000 : 0x8b000000) | r(X16, 16) | r(src, 5) | r(dst, 0));
    }
}

void a64_add(struct a64_asm *e, enum a64_reg dst, enum a64_reg a, enum a64_reg b)
{
    a64_emit(e, 0x8b000000 | r(b, 16) | r(a, 5) | r(dst, 0));
}

void a64_sub(struct a64_asm *e, enum a64_reg dst, enum a64_reg a, enum a64_reg b)
{
    a64_emit(e, 0xcb000000 | r(b, 16) | r(a, 5) | r(dst, 0));
}

void a64_subs_imm12(struct a64_asm *e, enum a64_reg dst, enum a64_reg src, uint32_t imm12)
{
    if (imm12 >= 4096) {
        e->failed = true;
        return;
    }
    a64_emit(e, 0xf1000000 | imm12 << 10 | r(src, 5) | r(dst, 0));
}

void a64_cmp(struct a64_asm *e, enum a64_reg a, enum a64_reg b)
{
    a64_emit(e, 0xeb000000 | r(b, 16) | r(a, 5) | r(XZR, 0)); /* subs xzr, a, b */
}

/* [base + off] for an access of 1 << scale bytes: the scaled unsigned form, the unscaled signed
 * one, or the address computed into x10. */
static void a64_mem(struct a64_asm *e, uint32_t scaled, uint32_t unscaled, unsigned scale,
                    unsigned rt, enum a64_reg base, int64_t off)
{
    const int64_t size = (int64_t)1 << scale;
    if (off >= 0 && off % size == 0 && off / size < 4096) {
        a64_emit(e, scaled | (uint32_t)(off / size) << 10 | r(base, 5) | rt);
    } else if (off >= -256 && off < 256) {
        a64_emit(e, unscaled | ((uint32_t)off & 0x1ff) << 12 | r(base, 5) | rt);
    } else {
        a64_add_imm(e, X10, base, off);
        a64_emit(e, scaled | r(X10, 5) | rt);
    }
}

void a64_load(struct a64_asm *e, unsigned size, enum a64_reg dst, enum a64_reg base, int64_t off)
{
    switch (size) {
    case 1:
        a64_mem(e, 0x39400000, 0x38400000, 0, dst, base, off); /* ldrb w */
        break;
    case 4:
        a64_mem(e, 0xb9400000, 0xb8400000, 2, dst, base, off); /* ldr w */
        break;
    default:
        a64_mem(e, 0xf9400000, 0xf8400000, 3, dst, base, off); /* ldr x */
        break;
    }
}

void a64_store(struct a64_asm *e, unsigned size, enum a64_reg src, enum a64_reg base, int64_t off)
{
    switch (size) {
    case 1:
        a64_mem(e, 0x39000000, 0x38000000, 0, src, base, off); /* strb w */
        break;
    case 4:
        a64_mem(e, 0xb9000000, 0xb8000000, 2, src, base, off); /* str w */
        break;
    default:
        a64_mem(e, 0xf9000000, 0xf8000000, 3, src, base, off); /* str x */
        break;
    }
}

void a64_load_fp(struct a64_asm *e, unsigned size, unsigned vreg, enum a64_reg base, int64_t off)
{
    if (size == 16)
        a64_mem(e, 0x3dc00000, 0x3cc00000, 4, vreg, base, off); /* ldr q */
    else
        a64_mem(e, 0xfd400000, 0xfc400000, 3, vreg, base, off); /* ldr d */
}

void a64_store_fp(struct a64_asm *e, unsigned size, unsigned vreg, enum a64_reg base, int64_t off)
{
    if (size == 16)
        a64_mem(e, 0x3d800000, 0x3c800000, 4, vreg, base, off); /* str q */
    else
        a64_mem(e, 0xfd000000, 0xfc000000, 3, vreg, base, off); /* str d */
}

void a64_load_pool_q(struct a64_asm *e, unsigned vreg, size_t pool_off)
{
    a64_ref(e, A64_REF_POOL19, pool_off, NULL);
    a64_emit(e, 0x9c000000 | vreg); /* ldr q, literal */
}

static uint32_t a64_pair_imm(struct a64_asm *e, int32_t off)
{
    if (off % 8 != 0 || off < -512 || off > 504)
        e->failed = true;
    return ((uint32_t)(off / 8) & 0x7f) << 15;
}

void a64_stp_pre(struct a64_asm *e, enum a64_reg a, enum a64_reg b, int32_t off)
{
    a64_emit(e, 0xa9800000 | a64_pair_imm(e, off) | r(b, 10) | r(SP, 5) | r(a, 0));
}

void a64_stp(struct a64_asm *e, enum a64_reg a, enum a64_reg b, int32_t off)
{
    a64_emit(e, 0xa9000000 | a64_pair_imm(e, off) | r(b, 10) | r(SP, 5) | r(a, 0));
}

void a64_ldp(struct a64_asm *e, enum a64_reg a, enum a64_reg b, int32_t off)
{
    a64_emit(e, 0xa9400000 | a64_pair_imm(e, off) | r(b, 10) | r(SP, 5) | r(a, 0));
}

void a64_ldp_post(struct a64_asm *e, enum a64_reg a, enum a64_reg b, int32_t off)
{
    a64_emit(e, 0xa8c00000 | a64_pair_imm(e, off) | r(b, 10) | r(SP, 5) | r(a, 0));
}

void a64_mov_from_sp(struct a64_asm *e, enum a64_reg dst)
{
    a64_emit(e, 0x91000000 | r(SP, 5) | r(dst, 0)); /* add dst, sp, #0 */
}

void a64_ret(struct a64_asm *e)
{
    a64_emit(e, 0xd65f03c0);
}

void a64_b(struct a64_asm *e, size_t label)
{
    a64_ref(e, A64_REF_IMM26, label, NULL);
    a64_emit(e, 0x14000000);
}

void a64_bcond(struct a64_asm *e, enum a64_cond cond, size_t label)
{
    a64_ref(e, A64_REF_IMM19, label, NULL);
    a64_emit(e, 0x54000000 | cond);
}

void a64_cbz(struct a64_asm *e, bool w, enum a64_reg reg, size_t label)
{
    a64_ref(e, A64_REF_IMM19, label, NULL);
    a64_emit(e, (w ? 0x34000000 : 0xb4000000) | r(reg, 0));
}

void a64_cbnz(struct a64_asm *e, bool w, enum a64_reg reg, size_t label)
{
    a64_ref(e, A64_REF_IMM19, label, NULL);
    a64_emit(e, (w ? 0x35000000 : 0xb5000000) | r(reg, 0));
}

void a64_bl_label(struct a64_asm *e, size_t label)
{
    a64_ref(e, A64_REF_IMM26, label, NULL);
    a64_emit(e, 0x94000000);
}

void a64_call(struct a64_asm *e, const void *target)
{
    if (e->indirect_calls) {
        /* Always four instructions, so that the code's size does not depend on the address. */
        uint64_t v = (uint64_t)(uintptr_t)target;
        a64_emit(e, 0xd2800000 | (uint32_t)(v & 0xffff) << 5 | r(X16, 0));
        for (unsigned hw = 1; hw < 4; hw++)
            a64_emit(e, 0xf2800000 | hw << 21 | (uint32_t)((v >> (16 * hw)) & 0xffff) << 5 |
                            r(X16, 0));
        a64_emit(e, 0xd63f0000 | r(X16, 5)); /* blr x16 */
        return;
    }
    a64_ref(e, A64_REF_CALL, 0, target);
    e->calls++;
    a64_emit(e, 0x94000000);
}

size_t a64_code_bytes(const struct a64_asm *e)
{
    return e->len * 4;
}

size_t a64_pool_offset(const struct a64_asm *e)
{
    return (a64_code_bytes(e) + 15) & ~(size_t)15;
}

size_t a64_total_size(const struct a64_asm *e)
{
    return a64_pool_offset(e) + e->pool_len + 16;
}

/* Patches a signed word displacement of bits bits at bit shift of instruction *insn. */
static int a64_patch(uint32_t *insn, int64_t bytes, unsigned bits, unsigned shift)
{
    int64_t words = bytes / 4, limit = (int64_t)1 << (bits - 1);
    if (bytes % 4 != 0 || words < -limit || words >= limit) {
        errno = ERANGE;
        return -1;
    }
    *insn |= ((uint32_t)words & (((uint32_t)1 << bits) - 1)) << shift;
    return 0;
}

int a64_link(struct a64_asm *e, struct code_chunk *chunk, void *rw, const void *rx)
{
    unsigned char *out = rw;
    const size_t code_bytes = a64_code_bytes(e), pool_off = a64_pool_offset(e);
    if (e->failed) {
        errno = ENOMEM;
        return -1;
    }
    for (size_t i = 0; i < e->nrefs; i++) {
        const struct a64_ref *ref = &e->refs[i];
        uint32_t *insn = &e->code[ref->at];
        int64_t here = (int64_t)(ref->at * 4);
        int rc = 0;
        switch (ref->kind) {
        case A64_REF_IMM26:
            rc = a64_patch(insn, (int64_t)(e->labels[ref->to] * 4) - here, 26, 0);
            break;
        case A64_REF_IMM19:
            rc = a64_patch(insn, (int64_t)(e->labels[ref->to] * 4) - here, 19, 5);
            break;
        case A64_REF_POOL19:
            rc = a64_patch(insn, (int64_t)(pool_off + ref->to) - here, 19, 5);
            break;
        case A64_REF_CALL: {
            const void *to = code_chunk_call_target(chunk, ref->target);
            if (to == NULL)
                return -1;
            rc = a64_patch(insn, (int64_t)((uintptr_t)to - ((uintptr_t)rx + (uintptr_t)here)), 26,
                           0);
            break;
        }
        }
        if (rc != 0)
            return -1;
    }
    /* A64 instructions are little-endian, as is the data of every aarch64 Linux we build for. */
    memcpy(out, e->code, code_bytes);
    memset(out + code_bytes, 0, pool_off - code_bytes); /* udf #0 */
    if (e->pool_len != 0)
        memcpy(out + pool_off, e->pool, e->pool_len);
    memset(out + pool_off + e->pool_len, 0, 16);
    return 0;
}

#endif /* __aarch64__ */
