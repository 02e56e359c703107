/*
 * A tiny A64 (aarch64) encoder for the JIT: only the instruction forms jit_aarch64.c needs. Code
 * is a growable array of 32-bit instructions with positions relative to its start; branches to
 * labels, literal loads from the constant pool and calls to absolute addresses are recorded and
 * resolved by a64_link once the code's final address is known.
 */
#ifndef JSONJIT_A64_EMIT_H
#define JSONJIT_A64_EMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct code_chunk;

/* General registers by number; 31 is xzr or sp depending on the instruction. */
enum a64_reg {
    X0 = 0,
    X1,
    X2,
    X3,
    X9 = 9,
    X10,
    X16 = 16,
    X19 = 19,
    X20,
    X21,
    X22,
    X29 = 29,
    X30,
    XZR = 31,
    SP = 31
};

enum a64_cond { A64_EQ = 0, A64_NE = 1, A64_LO = 3 };

/* What a64_link patches. */
enum a64_ref_kind {
    A64_REF_IMM26,  /* b, bl to a label */
    A64_REF_IMM19,  /* b.cond, cbz, cbnz to a label */
    A64_REF_POOL19, /* ldr (literal) of the constant pool */
    A64_REF_CALL    /* bl to an absolute address */
};

struct a64_ref {
    size_t at; /* instruction index */
    enum a64_ref_kind kind;
    size_t to;          /* label index, or pool offset */
    const void *target; /* A64_REF_CALL */
};

struct a64_asm {
    uint32_t *code; /* instructions */
    size_t len, cap;
    unsigned char *pool; /* constant bytes, placed after the code */
    size_t pool_len, pool_cap;
    size_t *labels; /* instruction indexes; SIZE_MAX while unbound */
    size_t nlabels, labels_cap;
    struct a64_ref *refs;
    size_t nrefs, refs_cap;
    size_t calls;        /* A64_REF_CALL references */
    bool failed;         /* a memory allocation failed, or a value cannot be encoded */
    bool indirect_calls; /* a64_call loads the target's address and calls through x16 */
};

void a64_init(struct a64_asm *e);
void a64_release(struct a64_asm *e);

size_t a64_label(struct a64_asm *e);
void a64_bind(struct a64_asm *e, size_t label);
/* Pads with udf #0 to a multiple of align bytes. */
void a64_align(struct a64_asm *e, size_t align);
/* Appends bytes to the constant pool; returns their offset in it. */
size_t a64_pool_add(struct a64_asm *e, const void *bytes, size_t len);

/* Data processing, 64-bit unless the name says w. */
void a64_mov(struct a64_asm *e, enum a64_reg dst, enum a64_reg src);
void a64_mov_imm(struct a64_asm *e, enum a64_reg dst, uint64_t imm); /* movz + movk */
void a64_add_imm(struct a64_asm *e, enum a64_reg dst, enum a64_reg src, int64_t imm);
void a64_add(struct a64_asm *e, enum a64_reg dst, enum a64_reg a, enum a64_reg b);
void a64_sub(struct a64_asm *e, enum a64_reg dst, enum a64_reg a, enum a64_reg b);
void a64_subs_imm12(struct a64_asm *e, enum a64_reg dst, enum a64_reg src, uint32_t imm12);
void a64_cmp(struct a64_asm *e, enum a64_reg a, enum a64_reg b);

/* Loads and stores at [base + offset], any offset (a scratch register, x10, computes the address
 * when no addressing mode fits). size: 1, 4 or 8 bytes (x or w register), 16 for q0, 8 for d0 with
 * the fp variants. */
void a64_load(struct a64_asm *e, unsigned size, enum a64_reg dst, enum a64_reg base, int64_t off);
void a64_store(struct a64_asm *e, unsigned size, enum a64_reg src, enum a64_reg base, int64_t off);
void a64_load_fp(struct a64_asm *e, unsigned size, unsigned vreg, enum a64_reg base, int64_t off);
void a64_store_fp(struct a64_asm *e, unsigned size, unsigned vreg, enum a64_reg base, int64_t off);
/* ldr q<vreg>, <pool + pool_off> */
void a64_load_pool_q(struct a64_asm *e, unsigned vreg, size_t pool_off);

/* Frame: stp x29, x30, [sp, #-frame]! ... */
void a64_stp_pre(struct a64_asm *e, enum a64_reg a, enum a64_reg b, int32_t off);
void a64_stp(struct a64_asm *e, enum a64_reg a, enum a64_reg b, int32_t off);
void a64_ldp(struct a64_asm *e, enum a64_reg a, enum a64_reg b, int32_t off);
void a64_ldp_post(struct a64_asm *e, enum a64_reg a, enum a64_reg b, int32_t off);
void a64_mov_from_sp(struct a64_asm *e, enum a64_reg dst); /* add dst, sp, #0 */
void a64_ret(struct a64_asm *e);

void a64_b(struct a64_asm *e, size_t label);
void a64_bcond(struct a64_asm *e, enum a64_cond cond, size_t label);
void a64_cbz(struct a64_asm *e, bool w, enum a64_reg r, size_t label);
void a64_cbnz(struct a64_asm *e, bool w, enum a64_reg r, size_t label);
void a64_bl_label(struct a64_asm *e, size_t label);
/* bl target: resolved by a64_link through code_chunk_call_target (the target itself when in
 * reach, else a veneer). With indirect_calls, mov x16, target (4 instructions); blr x16. */
void a64_call(struct a64_asm *e, const void *target);

/* Bytes a64_link needs at rw/rx: the code, padding to 16, the pool and 16 bytes after it. */
size_t a64_code_bytes(const struct a64_asm *e);
size_t a64_pool_offset(const struct a64_asm *e);
size_t a64_total_size(const struct a64_asm *e);

/* Copies code and pool to rw and resolves every reference for code running at rx. Returns 0, or
 * -1 and errno (code_chunk_call_target's, or ERANGE when a branch or a call cannot reach). */
int a64_link(struct a64_asm *e, struct code_chunk *chunk, void *rw, const void *rx);

#endif /* JSONJIT_A64_EMIT_H */
