/*
 * What the descriptor compiler (jit_compile.c) asks of a code generator: operations in the JIT's
 * own terms, one implementation per instruction set (jit_x86_64.c on x86_64_emit.c, jit_aarch64.c
 * on a64_emit.c). Nothing else in the JIT depends on the machine.
 *
 * The generated functions work on four values that live in callee-saved registers across the
 * helper calls:
 *
 *     P    the output position (char *), the first argument
 *     OBJ  the object being written (const void *), the second
 *     OUT  the struct json_buf, the third
 *     N    array functions only: the elements left (size_t), the fourth
 *
 * Positions "pos" are byte displacements from P, offsets "off" from OBJ. Labels are indexes given
 * by jit_label, bound once with jit_bind; branches may go forward or backward. An allocation
 * failure is remembered (jit_failed) rather than reported by every call.
 */
#ifndef JSONJIT_JIT_EMIT_H
#define JSONJIT_JIT_EMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__aarch64__)
#define JIT_HAVE_CODE_GENERATOR 1
#endif

struct code_chunk;
struct jit_asm; /* the assembler of one instruction set */

/* A new assembler; with indirect_calls, jit_call loads the target's absolute address into a
 * register and calls through it (for comparison) instead of a direct call. NULL + ENOMEM. */
struct jit_asm *jit_asm_create(bool indirect_calls);
void jit_asm_destroy(struct jit_asm *a);
bool jit_failed(const struct jit_asm *a);

size_t jit_label(struct jit_asm *a);
void jit_bind(struct jit_asm *a, size_t label);
/* Pads the code with traps to a multiple of align. */
void jit_align(struct jit_asm *a, size_t align);

/* Function entry: the arguments into P, OBJ, OUT (and N for an array function), the stack
 * aligned for calls. jit_leave returns the result set by jit_result_at or jit_result_null. */
void jit_enter(struct jit_asm *a, bool array);
void jit_leave(struct jit_asm *a, bool array);
void jit_result_at(struct jit_asm *a, int32_t pos); /* result = P + pos */
void jit_result_null(struct jit_asm *a);            /* result = NULL */

/* if (OUT->data + OUT->cap - P < bytes) goto label */
void jit_branch_if_no_room(struct jit_asm *a, uint32_t bytes, size_t label);
void jit_jump(struct jit_asm *a, size_t label);
void jit_branch_if_n_zero(struct jit_asm *a, size_t label);
void jit_decrement_n_branch_if_zero(struct jit_asm *a, size_t label); /* if (--N == 0) goto */
void jit_advance_p(struct jit_asm *a, int32_t bytes);
void jit_advance_obj(struct jit_asm *a, int32_t bytes);

/* Stores the len bytes of text at P + pos. May write up to 15 bytes past them (a wider store
 * holding fewer bytes): the caller's capacity checks include that slack. */
void jit_text(struct jit_asm *a, const char *text, size_t len, int32_t pos);
/* "true" at P + pos when the bool at OBJ + off is set, else "false" and P += 1. */
void jit_bool(struct jit_asm *a, int32_t pos, int32_t off);

/* The arguments of a call, in order. */
enum jit_arg_kind {
    JIT_ARG_P_AT,     /* P + value */
    JIT_ARG_OUT,      /* OUT */
    JIT_ARG_OBJ_AT,   /* OBJ + value */
    JIT_ARG_I32_AT,   /* the int32_t at OBJ + value */
    JIT_ARG_I64_AT,   /* the 64-bit integer or pointer at OBJ + value */
    JIT_ARG_F64_AT,   /* the double at OBJ + value: the first floating-point argument */
    JIT_ARG_IMMEDIATE /* value itself */
};
struct jit_arg {
    enum jit_arg_kind kind;
    int64_t value;
};

/* Calls target, or the code at label, with at most four integer arguments and one double; the
 * result is taken with jit_take_result. */
void jit_call(struct jit_asm *a, const void *target, const struct jit_arg *args, size_t nargs);
void jit_call_label(struct jit_asm *a, size_t label, const struct jit_arg *args, size_t nargs);
/* P = the result of the last call; with can_fail, goto fail_label when it is NULL. */
void jit_take_result(struct jit_asm *a, bool can_fail, size_t fail_label);

/* The layout: instructions, then (aligned) constant data. */
size_t jit_code_size(const struct jit_asm *a);  /* bytes of instructions */
size_t jit_data_size(const struct jit_asm *a);  /* bytes of constant data after them */
size_t jit_total_size(const struct jit_asm *a); /* bytes jit_link writes */
size_t jit_label_offset(const struct jit_asm *a, size_t label);
size_t jit_call_count(const struct jit_asm *a); /* direct calls to addresses: veneers at most */

/* Copies the code to rw and resolves every reference for code running at rx. Calls go to
 * code_chunk_call_target(chunk, target): the target itself when in reach, else a veneer.
 * Returns 0, or -1 and errno (code_chunk_call_target's, or ERANGE when a call target is out of
 * the direct call's reach anyway). */
int jit_link(struct jit_asm *a, struct code_chunk *chunk, void *rw, const void *rx);

#endif /* JSONJIT_JIT_EMIT_H */
