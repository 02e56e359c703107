/*
 * The JIT's operations (jit_emit.h) in A64, on the encoder of a64_emit.c.
 *
 * P, OBJ, OUT and N live in x19, x20, x21 and x22 (callee-saved, so they survive the helper
 * calls), saved with the frame record in a 48-byte frame; arguments go in x0-x3 and d0 (AAPCS64),
 * results come back in x0; x9 and x10 are scratch, x16 too between calls. Constant text is built
 * in x9 with movz/movk and stored with one str, or copied 16 bytes at a time from a constant pool
 * after the code (ldr q0, literal). Helpers are called with bl, which reaches ±128 MiB: through
 * the library's veneer (ldr x16; br x16) when code_chunk_call_target says so.
 */
#if defined(__aarch64__)

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "a64_emit.h"
#include "jit_emit.h"
#include "json.h"

#define P   X19
#define OBJ X20
#define OUT X21
#define N   X22

#define FRAME 48 /* x29, x30, x19-x22: a multiple of 16, as sp must stay */

struct jit_asm {
    struct a64_asm e;
};

struct jit_asm *jit_asm_create(bool indirect_calls)
{
    struct jit_asm *a = calloc(1, sizeof *a);
    if (a == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    a64_init(&a->e);
    a->e.indirect_calls = indirect_calls;
    return a;
}

void jit_asm_destroy(struct jit_asm *a)
{
    if (a == NULL)
        return;
    a64_release(&a->e);
    free(a);
}

bool jit_failed(const struct jit_asm *a)
{
    return a->e.failed;
}

size_t jit_label(struct jit_asm *a)
{
    return a64_label(&a->e);
}

void jit_bind(struct jit_asm *a, size_t label)
{
    a64_bind(&a->e, label);
}

void jit_align(struct jit_asm *a, size_t align)
{
    a64_align(&a->e, align);
}

void jit_enter(struct jit_asm *a, bool array)
{
    struct a64_asm *e = &a->e;
    a64_stp_pre(e, X29, X30, -FRAME);
    a64_mov_from_sp(e, X29);
    a64_stp(e, P, OBJ, 16);
    a64_stp(e, OUT, N, 32);
    a64_mov(e, P, X0);
    a64_mov(e, OBJ, X1);
    a64_mov(e, OUT, X2);
    if (array)
        a64_mov(e, N, X3);
}

void jit_leave(struct jit_asm *a, bool array)
{
    (void)array; /* one frame for both functions */
    struct a64_asm *e = &a->e;
    a64_ldp(e, OUT, N, 32);
    a64_ldp(e, P, OBJ, 16);
    a64_ldp_post(e, X29, X30, FRAME);
    a64_ret(e);
}

void jit_result_at(struct jit_asm *a, int32_t pos)
{
    a64_add_imm(&a->e, X0, P, pos);
}

void jit_result_null(struct jit_asm *a)
{
    a64_mov(&a->e, X0, XZR);
}

/* x9 = out->data + out->cap - p; below bytes (unsigned), the stub grows the buffer. */
void jit_branch_if_no_room(struct jit_asm *a, uint32_t bytes, size_t label)
{
    struct a64_asm *e = &a->e;
    a64_load(e, 8, X9, OUT, offsetof(struct json_buf, data));
    a64_load(e, 8, X10, OUT, offsetof(struct json_buf, cap));
    a64_add(e, X9, X9, X10);
    a64_sub(e, X9, X9, P);
    if (bytes < 4096) {
        a64_subs_imm12(e, XZR, X9, bytes); /* cmp x9, #bytes */
    } else {
        a64_mov_imm(e, X10, bytes);
        a64_cmp(e, X9, X10);
    }
    a64_bcond(e, A64_LO, label);
}

void jit_jump(struct jit_asm *a, size_t label)
{
    a64_b(&a->e, label);
}

void jit_branch_if_n_zero(struct jit_asm *a, size_t label)
{
    a64_cbz(&a->e, false, N, label);
}

void jit_decrement_n_branch_if_zero(struct jit_asm *a, size_t label)
{
    a64_subs_imm12(&a->e, N, N, 1);
    a64_bcond(&a->e, A64_EQ, label);
}

void jit_advance_p(struct jit_asm *a, int32_t bytes)
{
    a64_add_imm(&a->e, P, P, bytes);
}

void jit_advance_obj(struct jit_asm *a, int32_t bytes)
{
    a64_add_imm(&a->e, OBJ, OBJ, bytes);
}

/* One byte, 4 or 8 from an immediate built in x9; longer, 16 bytes at a time from the pool. */
void jit_text(struct jit_asm *a, const char *text, size_t len, int32_t pos)
{
    struct a64_asm *e = &a->e;
    if (len <= 8) {
        uint64_t v = 0;
        memcpy(&v, text, len); /* little-endian: the first byte is the lowest */
        a64_mov_imm(e, X9, v);
        a64_store(e, len == 1 ? 1 : len <= 4 ? 4 : 8, X9, P, pos);
        return;
    }
    size_t at = a64_pool_add(e, text, len);
    for (size_t k = 0; k < len; k += 16) {
        a64_load_pool_q(e, 0, at + k);
        a64_store_fp(e, 16, 0, P, pos + (int64_t)k);
    }
}

void jit_bool(struct jit_asm *a, int32_t pos, int32_t off)
{
    struct a64_asm *e = &a->e;
    size_t done = a64_label(e);
    a64_mov_imm(e, X9, 0x65757274); /* "true" */
    a64_store(e, 4, X9, P, pos);
    a64_load(e, 1, X10, OBJ, off);
    a64_cbnz(e, true, X10, done);
    a64_mov_imm(e, X9, 0x736c6166); /* "fals" */
    a64_store(e, 4, X9, P, pos);
    a64_mov_imm(e, X9, 'e');
    a64_store(e, 1, X9, P, (int64_t)pos + 4);
    a64_add_imm(e, P, P, 1);
    a64_bind(e, done);
}

/* The integer arguments in x0-x3; a double in d0. */
static void a64_args(struct a64_asm *e, const struct jit_arg *args, size_t nargs)
{
    unsigned next = 0;
    for (size_t i = 0; i < nargs; i++) {
        const struct jit_arg *arg = &args[i];
        if (arg->kind == JIT_ARG_F64_AT) {
            a64_load_fp(e, 8, 0, OBJ, arg->value);
            continue;
        }
        enum a64_reg reg = (enum a64_reg)next++;
        switch (arg->kind) {
        case JIT_ARG_P_AT:
            a64_add_imm(e, reg, P, arg->value);
            break;
        case JIT_ARG_OUT:
            a64_mov(e, reg, OUT);
            break;
        case JIT_ARG_OBJ_AT:
            a64_add_imm(e, reg, OBJ, arg->value);
            break;
        case JIT_ARG_I32_AT:
            a64_load(e, 4, reg, OBJ, arg->value);
            break;
        case JIT_ARG_I64_AT:
            a64_load(e, 8, reg, OBJ, arg->value);
            break;
        case JIT_ARG_IMMEDIATE:
            a64_mov_imm(e, reg, (uint64_t)arg->value);
            break;
        case JIT_ARG_F64_AT:
            break;
        }
    }
}

void jit_call(struct jit_asm *a, const void *target, const struct jit_arg *args, size_t nargs)
{
    a64_args(&a->e, args, nargs);
    a64_call(&a->e, target);
}

void jit_call_label(struct jit_asm *a, size_t label, const struct jit_arg *args, size_t nargs)
{
    a64_args(&a->e, args, nargs);
    a64_bl_label(&a->e, label);
}

void jit_take_result(struct jit_asm *a, bool can_fail, size_t fail_label)
{
    if (can_fail)
        a64_cbz(&a->e, false, X0, fail_label);
    a64_mov(&a->e, P, X0);
}

size_t jit_code_size(const struct jit_asm *a)
{
    return a64_code_bytes(&a->e);
}

size_t jit_data_size(const struct jit_asm *a)
{
    return a->e.pool_len;
}

size_t jit_total_size(const struct jit_asm *a)
{
    return a64_total_size(&a->e);
}

size_t jit_label_offset(const struct jit_asm *a, size_t label)
{
    return a->e.labels[label] * 4;
}

size_t jit_call_count(const struct jit_asm *a)
{
    return a->e.calls;
}

int jit_link(struct jit_asm *a, struct code_chunk *chunk, void *rw, const void *rx)
{
    return a64_link(&a->e, chunk, rw, rx);
}

#endif /* __aarch64__ */
