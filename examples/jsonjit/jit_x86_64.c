/*
 * The JIT's operations (jit_emit.h) in x86-64, on the encoder of x86_64_emit.c.
 *
 * P, OBJ, OUT and N live in rbx, r12, r13 and r14 (callee-saved, so they survive the helper
 * calls); arguments go in rdi, rsi, rdx, rcx and xmm0 (System V), results come back in rax.
 * Constant text is stored with immediate stores, or 16 bytes at a time from a constant pool after
 * the code (RIP-relative); helpers are called with call rel32.
 */
#if defined(__x86_64__)

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "jit_emit.h"
#include "json.h"
#include "x86_64_emit.h"

#define P   RBX
#define OBJ R12
#define OUT R13
#define N   R14

struct jit_asm {
    struct x64_asm e;
};

struct jit_asm *jit_asm_create(bool indirect_calls)
{
    struct jit_asm *a = calloc(1, sizeof *a);
    if (a == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    x64_init(&a->e);
    a->e.indirect_calls = indirect_calls;
    return a;
}

void jit_asm_destroy(struct jit_asm *a)
{
    if (a == NULL)
        return;
    x64_release(&a->e);
    free(a);
}

bool jit_failed(const struct jit_asm *a)
{
    return a->e.failed;
}

size_t jit_label(struct jit_asm *a)
{
    return x64_label(&a->e);
}

void jit_bind(struct jit_asm *a, size_t label)
{
    x64_bind(&a->e, label);
}

void jit_align(struct jit_asm *a, size_t align)
{
    x64_align(&a->e, align);
}

void jit_enter(struct jit_asm *a, bool array)
{
    struct x64_asm *e = &a->e;
    x64_push(e, P);
    x64_push(e, OBJ);
    x64_push(e, OUT);
    if (array) {
        /* Return address + 4 pushes + 8: the stack is 16-byte aligned at our calls. */
        x64_push(e, N);
        x64_add_imm(e, RSP, -8);
    }
    /* (Return address + 3 pushes is aligned too.) */
    x64_mov_rr(e, P, RDI);
    x64_mov_rr(e, OBJ, RSI);
    x64_mov_rr(e, OUT, RDX);
    if (array)
        x64_mov_rr(e, N, RCX);
}

void jit_leave(struct jit_asm *a, bool array)
{
    struct x64_asm *e = &a->e;
    if (array) {
        x64_add_imm(e, RSP, 8);
        x64_pop(e, N);
    }
    x64_pop(e, OUT);
    x64_pop(e, OBJ);
    x64_pop(e, P);
    x64_ret(e);
}

void jit_result_at(struct jit_asm *a, int32_t pos)
{
    x64_lea(&a->e, RAX, P, pos);
}

void jit_result_null(struct jit_asm *a)
{
    x64_zero_eax(&a->e);
}

/* rax = out->data + out->cap - p; below bytes, the stub grows the buffer. */
void jit_branch_if_no_room(struct jit_asm *a, uint32_t bytes, size_t label)
{
    struct x64_asm *e = &a->e;
    x64_load64(e, RAX, OUT, offsetof(struct json_buf, data));
    x64_add_mem(e, RAX, OUT, offsetof(struct json_buf, cap));
    x64_sub_rr(e, RAX, P);
    x64_cmp_imm(e, RAX, (int32_t)bytes);
    x64_jcc(e, CC_B, label);
}

void jit_jump(struct jit_asm *a, size_t label)
{
    x64_jmp(&a->e, label);
}

void jit_branch_if_n_zero(struct jit_asm *a, size_t label)
{
    x64_test_rr(&a->e, N);
    x64_jcc(&a->e, CC_E, label);
}

void jit_decrement_n_branch_if_zero(struct jit_asm *a, size_t label)
{
    x64_add_imm(&a->e, N, -1);
    x64_jcc(&a->e, CC_E, label);
}

void jit_advance_p(struct jit_asm *a, int32_t bytes)
{
    x64_add_imm(&a->e, P, bytes);
}

void jit_advance_obj(struct jit_asm *a, int32_t bytes)
{
    x64_add_imm(&a->e, OBJ, bytes);
}

/* One byte; up to 4 or 8 as an immediate; longer, 16 bytes at a time from the pool. */
void jit_text(struct jit_asm *a, const char *text, size_t len, int32_t pos)
{
    struct x64_asm *e = &a->e;
    if (len == 1) {
        x64_store8_imm(e, P, pos, (uint8_t)text[0]);
    } else if (len <= 4) {
        uint32_t v = 0;
        memcpy(&v, text, len);
        x64_store32_imm(e, P, pos, v);
    } else if (len <= 8) {
        uint64_t v = 0;
        memcpy(&v, text, len);
        x64_mov_imm64(e, RAX, v);
        x64_store64(e, P, pos, RAX);
    } else {
        size_t at = x64_pool_add(e, text, len);
        for (size_t k = 0; k < len; k += 16) {
            x64_load_pool16(e, XMM0, at + k);
            x64_store16(e, P, pos + (int32_t)k, XMM0);
        }
    }
}

void jit_bool(struct jit_asm *a, int32_t pos, int32_t off)
{
    struct x64_asm *e = &a->e;
    size_t done = x64_label(e);
    x64_store32_imm(e, P, pos, 0x65757274); /* "true" */
    x64_cmp_mem8_imm(e, OBJ, off, 0);
    x64_jcc(e, CC_NE, done);
    x64_store32_imm(e, P, pos, 0x736c6166); /* "fals" */
    x64_store8_imm(e, P, pos + 4, 'e');
    x64_add_imm(e, P, 1);
    x64_bind(e, done);
}

/* The integer arguments in rdi, rsi, rdx, rcx; a double in xmm0. */
static void x64_args(struct x64_asm *e, const struct jit_arg *args, size_t nargs)
{
    static const enum reg regs[] = {RDI, RSI, RDX, RCX};
    size_t next = 0;
    for (size_t i = 0; i < nargs; i++) {
        const struct jit_arg *arg = &args[i];
        int32_t v = (int32_t)arg->value;
        if (arg->kind == JIT_ARG_F64_AT) {
            x64_load_sd(e, XMM0, OBJ, v);
            continue;
        }
        enum reg r = regs[next++];
        switch (arg->kind) {
        case JIT_ARG_P_AT:
            x64_addr(e, r, P, v);
            break;
        case JIT_ARG_OUT:
            x64_mov_rr(e, r, OUT);
            break;
        case JIT_ARG_OBJ_AT:
            x64_addr(e, r, OBJ, v);
            break;
        case JIT_ARG_I32_AT:
            x64_load32(e, r, OBJ, v);
            break;
        case JIT_ARG_I64_AT:
            x64_load64(e, r, OBJ, v);
            break;
        case JIT_ARG_IMMEDIATE:
            x64_mov_imm32(e, r, (uint32_t)arg->value);
            break;
        case JIT_ARG_F64_AT:
            break;
        }
    }
}

void jit_call(struct jit_asm *a, const void *target, const struct jit_arg *args, size_t nargs)
{
    x64_args(&a->e, args, nargs);
    x64_call(&a->e, target);
}

void jit_call_label(struct jit_asm *a, size_t label, const struct jit_arg *args, size_t nargs)
{
    x64_args(&a->e, args, nargs);
    x64_call_label(&a->e, label);
}

void jit_take_result(struct jit_asm *a, bool can_fail, size_t fail_label)
{
    if (can_fail) {
        x64_test_rr(&a->e, RAX);
        x64_jcc(&a->e, CC_E, fail_label);
    }
    x64_mov_rr(&a->e, P, RAX);
}

size_t jit_code_size(const struct jit_asm *a)
{
    return a->e.len;
}

size_t jit_data_size(const struct jit_asm *a)
{
    return a->e.pool_len;
}

size_t jit_total_size(const struct jit_asm *a)
{
    return x64_total_size(&a->e);
}

size_t jit_label_offset(const struct jit_asm *a, size_t label)
{
    return a->e.labels[label];
}

size_t jit_call_count(const struct jit_asm *a)
{
    return a->e.calls.len;
}

int jit_link(struct jit_asm *a, struct code_chunk *chunk, void *rw, const void *rx)
{
    return x64_link(&a->e, chunk, rw, rx);
}

#endif /* __x86_64__ */
