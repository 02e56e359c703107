/*
 * The x86-64 encoder. Every memory operand is [base + disp] (ModRM with a SIB byte when the
 * base is rsp or r12, disp8 when it fits) or [rip + disp32]; every branch is rel32, so nothing
 * has to be resized once emitted.
 */
#if defined(__x86_64__)

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <code_cache.h>

#include "x86_64_emit.h"

void x64_init(struct x64_asm *e)
{
    memset(e, 0, sizeof *e);
}

void x64_release(struct x64_asm *e)
{
    free(e->code);
    free(e->pool);
    free(e->labels);
    free(e->jumps.v);
    free(e->pool_refs.v);
    free(e->calls.v);
    memset(e, 0, sizeof *e);
}

/* Grows *buf to hold need elements of size bytes. On failure marks the emitter failed: the
 * caller checks once at the end instead of after every instruction. */
static bool x64_grow(struct x64_asm *e, void **buf, size_t *cap, size_t need, size_t size)
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

static void x64_bytes(struct x64_asm *e, const void *bytes, size_t n)
{
    if (!x64_grow(e, (void **)&e->code, &e->cap, e->len + n, 1))
        return;
    memcpy(e->code + e->len, bytes, n);
    e->len += n;
}

static void x64_byte(struct x64_asm *e, unsigned b)
{
    unsigned char c = (unsigned char)b;
    x64_bytes(e, &c, 1);
}

static void x64_u32(struct x64_asm *e, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    x64_bytes(e, b, 4);
}

static void x64_ref_add(struct x64_asm *e, struct x64_vec *vec, size_t to, const void *target)
{
    if (!x64_grow(e, (void **)&vec->v, &vec->cap, vec->len + 1, sizeof *vec->v))
        return;
    vec->v[vec->len++] = (struct x64_ref){.at = e->len, .to = to, .target = target};
    /* The rel32 field itself, patched by x64_link. */
    x64_u32(e, 0);
}

size_t x64_label(struct x64_asm *e)
{
    if (!x64_grow(e, (void **)&e->labels, &e->labels_cap, e->nlabels + 1, sizeof *e->labels))
        return 0;
    e->labels[e->nlabels] = SIZE_MAX;
    return e->nlabels++;
}

void x64_bind(struct x64_asm *e, size_t label)
{
    if (!e->failed)
        e->labels[label] = e->len;
}

void x64_align(struct x64_asm *e, size_t align)
{
    while (e->len % align != 0 && !e->failed)
        x64_byte(e, 0xcc);
}

size_t x64_pool_add(struct x64_asm *e, const void *bytes, size_t len)
{
    size_t off = e->pool_len;
    if (!x64_grow(e, (void **)&e->pool, &e->pool_cap, e->pool_len + len, 1))
        return 0;
    memcpy(e->pool + off, bytes, len);
    e->pool_len += len;
    return off;
}

/* An optional mandatory prefix (66/F2/F3, which must precede REX), REX when needed, a one- or
 * two-byte opcode (two when it starts with 0F). */
static void x64_opcode(struct x64_asm *e, unsigned prefix, bool w, unsigned opcode, int reg, int rm)
{
    if (prefix != 0)
        x64_byte(e, prefix);
    unsigned rex = 0x40 | (w ? 8 : 0) | ((reg & 8) ? 4 : 0) | ((rm & 8) ? 1 : 0);
    if (rex != 0x40)
        x64_byte(e, rex);
    if (opcode > 0xff)
        x64_byte(e, opcode >> 8);
    x64_byte(e, opcode & 0xff);
}

/* op reg, [base + disp] */
static void x64_mem(struct x64_asm *e, unsigned prefix, bool w, unsigned opcode, int reg,
                    enum reg base, int32_t disp)
{
    x64_opcode(e, prefix, w, opcode, reg, base);
    /* mod 00 with base rbp/r13 means [rip + disp32] or disp32 alone: those take a disp8 of 0. */
    unsigned mod = (disp == 0 && (base & 7) != RBP) ? 0 : (disp >= -128 && disp <= 127) ? 1 : 2;
    x64_byte(e, mod << 6 | (unsigned)(reg & 7) << 3 | (base & 7));
    if ((base & 7) == RSP)
        x64_byte(e, 0x24); /* SIB: no index, base rsp/r12 */
    if (mod == 1)
        x64_byte(e, (unsigned)disp & 0xff);
    else if (mod == 2)
        x64_u32(e, (uint32_t)disp);
}

/* op reg, rm (register operands) */
static void x64_rr(struct x64_asm *e, bool w, unsigned opcode, int reg, int rm)
{
    x64_opcode(e, 0, w, opcode, reg, rm);
    x64_byte(e, 0xc0 | (unsigned)(reg & 7) << 3 | (rm & 7));
}

void x64_push(struct x64_asm *e, enum reg r)
{
    if (r & 8)
        x64_byte(e, 0x41);
    x64_byte(e, 0x50 + (r & 7));
}

void x64_pop(struct x64_asm *e, enum reg r)
{
    if (r & 8)
        x64_byte(e, 0x41);
    x64_byte(e, 0x58 + (r & 7));
}

void x64_ret(struct x64_asm *e)
{
    x64_byte(e, 0xc3);
}

void x64_mov_rr(struct x64_asm *e, enum reg dst, enum reg src)
{
    x64_rr(e, true, 0x89, src, dst);
}

void x64_zero_eax(struct x64_asm *e)
{
    x64_rr(e, false, 0x31, RAX, RAX);
}

void x64_load64(struct x64_asm *e, enum reg dst, enum reg base, int32_t disp)
{
    x64_mem(e, 0, true, 0x8b, dst, base, disp);
}

void x64_load32(struct x64_asm *e, enum reg dst, enum reg base, int32_t disp)
{
    x64_mem(e, 0, false, 0x8b, dst, base, disp);
}

void x64_load_sd(struct x64_asm *e, int xmm, enum reg base, int32_t disp)
{
    x64_mem(e, 0xf2, false, 0x0f10, xmm, base, disp);
}

void x64_lea(struct x64_asm *e, enum reg dst, enum reg base, int32_t disp)
{
    x64_mem(e, 0, true, 0x8d, dst, base, disp);
}

void x64_addr(struct x64_asm *e, enum reg dst, enum reg base, int32_t disp)
{
    if (disp == 0)
        x64_mov_rr(e, dst, base);
    else
        x64_lea(e, dst, base, disp);
}

void x64_add_mem(struct x64_asm *e, enum reg dst, enum reg base, int32_t disp)
{
    x64_mem(e, 0, true, 0x03, dst, base, disp);
}

void x64_sub_rr(struct x64_asm *e, enum reg dst, enum reg src)
{
    x64_rr(e, true, 0x29, src, dst);
}

/* Group 1 (81 /digit id, 83 /digit ib) on a 64-bit register. */
static void x64_group1(struct x64_asm *e, unsigned digit, enum reg r, int32_t imm)
{
    bool small = imm >= -128 && imm <= 127;
    x64_rr(e, true, small ? 0x83 : 0x81, (int)digit, r);
    if (small)
        x64_byte(e, (unsigned)imm & 0xff);
    else
        x64_u32(e, (uint32_t)imm);
}

void x64_add_imm(struct x64_asm *e, enum reg dst, int32_t imm)
{
    x64_group1(e, 0, dst, imm);
}

void x64_cmp_imm(struct x64_asm *e, enum reg r, int32_t imm)
{
    x64_group1(e, 7, r, imm);
}

void x64_test_rr(struct x64_asm *e, enum reg r)
{
    x64_rr(e, true, 0x85, r, r);
}

void x64_mov_imm32(struct x64_asm *e, enum reg dst, uint32_t imm)
{
    if (dst & 8)
        x64_byte(e, 0x41);
    x64_byte(e, 0xb8 + (dst & 7));
    x64_u32(e, imm);
}

void x64_mov_imm64(struct x64_asm *e, enum reg dst, uint64_t imm)
{
    x64_byte(e, (dst & 8) ? 0x49 : 0x48);
    x64_byte(e, 0xb8 + (dst & 7));
    x64_u32(e, (uint32_t)imm);
    x64_u32(e, (uint32_t)(imm >> 32));
}

void x64_cmp_mem8_imm(struct x64_asm *e, enum reg base, int32_t disp, uint8_t imm)
{
    x64_mem(e, 0, false, 0x80, 7, base, disp);
    x64_byte(e, imm);
}

void x64_store8_imm(struct x64_asm *e, enum reg base, int32_t disp, uint8_t imm)
{
    x64_mem(e, 0, false, 0xc6, 0, base, disp);
    x64_byte(e, imm);
}

void x64_store32_imm(struct x64_asm *e, enum reg base, int32_t disp, uint32_t imm)
{
    x64_mem(e, 0, false, 0xc7, 0, base, disp);
    x64_u32(e, imm);
}

void x64_store64(struct x64_asm *e, enum reg base, int32_t disp, enum reg src)
{
    x64_mem(e, 0, true, 0x89, src, base, disp);
}

void x64_load_pool16(struct x64_asm *e, int xmm, size_t pool_off)
{
    x64_opcode(e, 0xf3, false, 0x0f6f, xmm, 0);
    x64_byte(e, (unsigned)(xmm & 7) << 3 | 5); /* mod 00, rm 101: [rip + disp32] */
    x64_ref_add(e, &e->pool_refs, pool_off, NULL);
}

void x64_store16(struct x64_asm *e, enum reg base, int32_t disp, int xmm)
{
    x64_mem(e, 0xf3, false, 0x0f7f, xmm, base, disp);
}

void x64_jcc(struct x64_asm *e, enum cond cc, size_t label)
{
    x64_byte(e, 0x0f);
    x64_byte(e, 0x80 | cc);
    x64_ref_add(e, &e->jumps, label, NULL);
}

void x64_jmp(struct x64_asm *e, size_t label)
{
    x64_byte(e, 0xe9);
    x64_ref_add(e, &e->jumps, label, NULL);
}

void x64_call_label(struct x64_asm *e, size_t label)
{
    x64_byte(e, 0xe8);
    x64_ref_add(e, &e->jumps, label, NULL);
}

void x64_call(struct x64_asm *e, const void *target)
{
    if (e->indirect_calls) {
        x64_mov_imm64(e, RAX, (uint64_t)(uintptr_t)target);
        x64_rr(e, false, 0xff, 2, RAX); /* FF /2: call rax */
        return;
    }
    x64_byte(e, 0xe8);
    x64_ref_add(e, &e->calls, 0, target);
}

size_t x64_pool_offset(const struct x64_asm *e)
{
    return (e->len + 15) & ~(size_t)15;
}

size_t x64_total_size(const struct x64_asm *e)
{
    return x64_pool_offset(e) + e->pool_len + 16;
}

static void patch_rel32(unsigned char *code, size_t at, int64_t rel)
{
    uint32_t v = (uint32_t)(int32_t)rel;
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    memcpy(code + at, b, 4);
}

int x64_link(struct x64_asm *e, struct code_chunk *chunk, void *rw, const void *rx)
{
    unsigned char *out = rw;
    size_t pool_off = x64_pool_offset(e);
    memcpy(out, e->code, e->len);
    memset(out + e->len, 0xcc, pool_off - e->len);
    if (e->pool_len != 0) /* no pool was ever allocated otherwise */
        memcpy(out + pool_off, e->pool, e->pool_len);
    memset(out + pool_off + e->pool_len, 0, 16);

    /* Every rel32 field ends its instruction, so displacements count from at + 4. Jumps and pool
     * references stay inside the code: they do not depend on where it runs. */
    for (size_t i = 0; i < e->jumps.len; i++) {
        const struct x64_ref *r = &e->jumps.v[i];
        patch_rel32(out, r->at, (int64_t)e->labels[r->to] - (int64_t)(r->at + 4));
    }
    for (size_t i = 0; i < e->pool_refs.len; i++) {
        const struct x64_ref *r = &e->pool_refs.v[i];
        patch_rel32(out, r->at, (int64_t)(pool_off + r->to) - (int64_t)(r->at + 4));
    }
    for (size_t i = 0; i < e->calls.len; i++) {
        const struct x64_ref *r = &e->calls.v[i];
        const void *to = code_chunk_call_target(chunk, r->target);
        if (to == NULL)
            return -1;
        int64_t rel = (int64_t)((uintptr_t)to - ((uintptr_t)rx + r->at + 4));
        if (rel < INT32_MIN || rel > INT32_MAX) {
            errno = ERANGE;
            return -1;
        }
        patch_rel32(out, r->at, rel);
    }
    return 0;
}

#endif /* __x86_64__ */
