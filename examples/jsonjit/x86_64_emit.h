/*
 * A tiny x86-64 encoder for the JIT: only the instruction forms jit_x86_64.c needs. Code is
 * written into a growable byte array with positions relative to its start; branches to labels,
 * RIP-relative references to the constant pool and calls to absolute addresses are recorded and
 * resolved by x64_link once the code's final address is known.
 */
#ifndef JSONJIT_X86_64_EMIT_H
#define JSONJIT_X86_64_EMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct code_chunk;

enum reg {
    RAX = 0,
    RCX,
    RDX,
    RBX,
    RSP,
    RBP,
    RSI,
    RDI,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    XMM0 = 0 /* in the reg field of SSE instructions */
};

enum cond { CC_B = 0x2, CC_E = 0x4, CC_NE = 0x5 };

/* A reference to patch: a rel32 field at .at, ending its instruction. */
struct x64_ref {
    size_t at;
    size_t to;          /* label index, or pool offset */
    const void *target; /* for calls to absolute addresses */
};

struct x64_vec {
    struct x64_ref *v;
    size_t len, cap;
};

struct x64_asm {
    unsigned char *code;
    size_t len, cap;
    unsigned char *pool; /* constant bytes, placed after the code */
    size_t pool_len, pool_cap;
    size_t *labels; /* positions; SIZE_MAX while unbound */
    size_t nlabels, labels_cap;
    struct x64_vec jumps, pool_refs, calls;
    bool failed;         /* a memory allocation failed: the code is incomplete */
    bool indirect_calls; /* x64_call emits movabs rax, target; call rax */
};

void x64_init(struct x64_asm *e);
void x64_release(struct x64_asm *e);

size_t x64_label(struct x64_asm *e);
void x64_bind(struct x64_asm *e, size_t label);
/* Pads with int3 to a multiple of align. */
void x64_align(struct x64_asm *e, size_t align);
/* Appends bytes to the constant pool; returns their offset in it. */
size_t x64_pool_add(struct x64_asm *e, const void *bytes, size_t len);

void x64_push(struct x64_asm *e, enum reg r);
void x64_pop(struct x64_asm *e, enum reg r);
void x64_ret(struct x64_asm *e);
void x64_mov_rr(struct x64_asm *e, enum reg dst, enum reg src); /* 64-bit */
void x64_zero_eax(struct x64_asm *e);
/* dst = [base + disp]: 64-bit load, 32-bit load (zero-extends), movsd into xmm. */
void x64_load64(struct x64_asm *e, enum reg dst, enum reg base, int32_t disp);
void x64_load32(struct x64_asm *e, enum reg dst, enum reg base, int32_t disp);
void x64_load_sd(struct x64_asm *e, int xmm, enum reg base, int32_t disp);
void x64_lea(struct x64_asm *e, enum reg dst, enum reg base, int32_t disp);
/* dst = base + disp, as a mov when disp is 0. */
void x64_addr(struct x64_asm *e, enum reg dst, enum reg base, int32_t disp);
void x64_add_mem(struct x64_asm *e, enum reg dst, enum reg base, int32_t disp); /* dst += [] */
void x64_sub_rr(struct x64_asm *e, enum reg dst, enum reg src);
void x64_add_imm(struct x64_asm *e, enum reg dst, int32_t imm);
void x64_cmp_imm(struct x64_asm *e, enum reg r, int32_t imm);
void x64_test_rr(struct x64_asm *e, enum reg r);
void x64_mov_imm32(struct x64_asm *e, enum reg dst, uint32_t imm); /* zero-extends */
void x64_mov_imm64(struct x64_asm *e, enum reg dst, uint64_t imm);
void x64_cmp_mem8_imm(struct x64_asm *e, enum reg base, int32_t disp, uint8_t imm);
void x64_store8_imm(struct x64_asm *e, enum reg base, int32_t disp, uint8_t imm);
void x64_store32_imm(struct x64_asm *e, enum reg base, int32_t disp, uint32_t imm);
void x64_store64(struct x64_asm *e, enum reg base, int32_t disp, enum reg src);
/* movdqu xmm, [rip + pool offset] and movdqu [base + disp], xmm. */
void x64_load_pool16(struct x64_asm *e, int xmm, size_t pool_off);
void x64_store16(struct x64_asm *e, enum reg base, int32_t disp, int xmm);

void x64_jcc(struct x64_asm *e, enum cond cc, size_t label);
void x64_jmp(struct x64_asm *e, size_t label);
void x64_call_label(struct x64_asm *e, size_t label);
/* call rel32 to target: resolved by x64_link through code_chunk_call_target. With
 * indirect_calls, movabs rax, target; call rax instead (rax is free at every call site). */
void x64_call(struct x64_asm *e, const void *target);

/* Bytes x64_link needs at rw/rx: the code, padding to 16, the pool and 16 bytes after it, so
 * that a 16-byte load of the pool's last bytes stays inside the allocation. */
size_t x64_total_size(const struct x64_asm *e);
size_t x64_pool_offset(const struct x64_asm *e);

/* Copies code and pool to rw and resolves every reference for code running at rx. Calls go to
 * code_chunk_call_target(chunk, target): the target itself when in reach, else a veneer.
 * Returns 0, or -1 and errno (code_chunk_call_target's, or ERANGE when a call target is out of
 * rel32 reach anyway). */
int x64_link(struct x64_asm *e, struct code_chunk *chunk, void *rw, const void *rx);

#endif /* JSONJIT_X86_64_EMIT_H */
