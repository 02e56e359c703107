/*
 * The JIT: compiles a schema into two functions in one libcodecache chunk.
 *
 *     char *object(char *p, const void *obj, struct json_buf *out);
 *     char *array(char *p, const void *objs, struct json_buf *out, size_t n);
 *
 * p, obj and out live in rbx, r12 and r13 (callee-saved, so they survive the helper calls). The
 * fields are cut into segments ending at each value of unbounded length (a string, an array, a
 * nested object): a segment starts with one capacity check for the most it can write, then
 * stores its constant text ({"id": and the like, keys escaped once, here) with immediate stores
 * or 16-byte copies from a constant pool after the code (RIP-relative), and calls the helpers
 * only for the values, with call rel32. Positions inside a segment are displacements from rbx;
 * rbx is updated only by what a helper returns. Growing the buffer is a cold path at the end.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <code_cache.h>

#include "jit.h"

/* The JIT's stores of constant text may write up to 15 bytes past the text (a 16-byte copy
 * or a 4- or 8-byte immediate holding fewer bytes): later writes cover them, and every capacity
 * check asks for this much more than the segment writes. */
#define JIT_SLACK 16

#if defined(__x86_64__)

#include "x86_64_emit.h"

struct compile {
    struct x64_asm e;
    const struct json_schema *s;
    size_t object_label, array_label, fail_label;
    struct grow_stub {
        size_t stub, back;
        uint32_t bytes;
    } * stubs;
    size_t nstubs;
    char **keys; /* per field: the constant text before its value, ",\"name\":" */
    size_t *key_len;
};

/* The keys are escaped here, once, with the same writer the interpreter uses on every call, so
 * both produce the same bytes. */
static int compile_keys(struct compile *c)
{
    size_t n = c->s->nfields;
    c->keys = calloc(n ? n : 1, sizeof *c->keys);
    c->key_len = calloc(n ? n : 1, sizeof *c->key_len);
    if (c->keys == NULL || c->key_len == NULL)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        struct json_buf b;
        if (json_buf_init(&b, 64) != 0)
            goto fail;
        b.data[0] = i == 0 ? '{' : ',';
        char *p = json_put_string(&b, b.data + 1, c->s->fields[i].name);
        if (p != NULL)
            p = json_buf_room(&b, p, 1);
        if (p == NULL) {
            json_buf_release(&b);
            goto fail;
        }
        *p++ = ':';
        c->keys[i] = b.data;
        c->key_len[i] = (size_t)(p - b.data);
    }
    return 0;
fail:
    errno = ENOMEM;
    return -1;
}

/* rax = out->data + out->cap - p; if it is below bytes, the cold stub grows the buffer. */
static void compile_check(struct compile *c, size_t bytes)
{
    struct x64_asm *e = &c->e;
    struct grow_stub *stubs = realloc(c->stubs, (c->nstubs + 1) * sizeof *stubs);
    if (stubs == NULL) {
        e->failed = true;
        return;
    }
    c->stubs = stubs;
    struct grow_stub *g = &c->stubs[c->nstubs++];
    g->stub = x64_label(e);
    g->back = x64_label(e);
    g->bytes = (uint32_t)bytes;
    x64_load64(e, RAX, R13, offsetof(struct json_buf, data));
    x64_add_mem(e, RAX, R13, offsetof(struct json_buf, cap));
    x64_sub_rr(e, RAX, RBX);
    x64_cmp_imm(e, RAX, (int32_t)bytes);
    x64_jcc(e, CC_B, g->stub);
    x64_bind(e, g->back);
}

/* Constant text at rbx + *pos: one byte; up to 4 or 8 as an immediate; longer, 16 bytes at a
 * time from the pool. */
static void compile_text(struct compile *c, const char *text, size_t len, int32_t *pos)
{
    struct x64_asm *e = &c->e;
    if (len == 1) {
        x64_store8_imm(e, RBX, *pos, (uint8_t)text[0]);
    } else if (len <= 4) {
        uint32_t v = 0;
        memcpy(&v, text, len);
        x64_store32_imm(e, RBX, *pos, v);
    } else if (len <= 8) {
        uint64_t v = 0;
        memcpy(&v, text, len);
        x64_mov_imm64(e, RAX, v);
        x64_store64(e, RBX, *pos, RAX);
    } else {
        size_t at = x64_pool_add(e, text, len);
        for (size_t k = 0; k < len; k += 16) {
            x64_load_pool16(e, XMM0, at + k);
            x64_store16(e, RBX, *pos + (int32_t)k, XMM0);
        }
    }
    *pos += (int32_t)len;
}

/* After a call that can fail: rbx = rax, or return NULL. */
static void compile_result(struct compile *c, bool can_fail)
{
    if (can_fail) {
        x64_test_rr(&c->e, RAX);
        x64_jcc(&c->e, CC_E, c->fail_label);
    }
    x64_mov_rr(&c->e, RBX, RAX);
}

/* Calls the object or array function of a nested schema: our own labels for a schema listing
 * itself, else the other chunk's code, directly. */
static void compile_call_schema(struct compile *c, const struct json_schema *s, bool array)
{
    if (s == c->s)
        x64_call_label(&c->e, array ? c->array_label : c->object_label);
    else if (array)
        x64_call(&c->e, FN_ADDR(s->compiled->array));
    else
        x64_call(&c->e, FN_ADDR(s->compiled->object));
}

/* The value of field f, written at rbx + *pos. */
static void compile_value(struct compile *c, const struct json_field *f, int32_t *pos)
{
    struct x64_asm *e = &c->e;
    int32_t off = (int32_t)f->offset, count = (int32_t)f->count_offset;
    switch (f->type) {
    case JT_INT32:
    case JT_INT64:
    case JT_UINT64:
    case JT_DOUBLE:
        x64_addr(e, RDI, RBX, *pos);
        if (f->type == JT_INT32)
            x64_load32(e, RSI, R12, off);
        else if (f->type == JT_DOUBLE)
            x64_load_sd(e, XMM0, R12, off);
        else
            x64_load64(e, RSI, R12, off);
        x64_call(e, f->type == JT_INT32    ? FN_ADDR(json_put_i32)
                    : f->type == JT_INT64  ? FN_ADDR(json_put_i64)
                    : f->type == JT_UINT64 ? FN_ADDR(json_put_u64)
                                           : FN_ADDR(json_put_double));
        compile_result(c, false);
        *pos = 0;
        break;
    case JT_BOOL: {
        /* "true", or "fals" over it and an 'e', then one more byte: no helper, one branch. */
        size_t done = x64_label(e);
        x64_store32_imm(e, RBX, *pos, 0x65757274); /* "true" */
        x64_cmp_mem8_imm(e, R12, off, 0);
        x64_jcc(e, CC_NE, done);
        x64_store32_imm(e, RBX, *pos, 0x736c6166); /* "fals" */
        x64_store8_imm(e, RBX, *pos + 4, 'e');
        x64_add_imm(e, RBX, 1);
        x64_bind(e, done);
        *pos += 4;
        break;
    }
    case JT_STRING:
    case JT_ARRAY_INT32:
    case JT_ARRAY_INT64:
        x64_mov_rr(e, RDI, R13);
        x64_addr(e, RSI, RBX, *pos);
        x64_load64(e, RDX, R12, off);
        if (f->type == JT_STRING) {
            x64_call(e, FN_ADDR(json_put_string));
        } else {
            x64_load64(e, RCX, R12, count);
            x64_call(e, f->type == JT_ARRAY_INT32 ? FN_ADDR(json_put_i32_array)
                                                  : FN_ADDR(json_put_i64_array));
        }
        compile_result(c, true);
        *pos = 0;
        break;
    case JT_OBJECT:
    case JT_ARRAY_OBJECT:
        x64_addr(e, RDI, RBX, *pos);
        if (f->type == JT_OBJECT) {
            x64_lea(e, RSI, R12, off);
        } else {
            x64_load64(e, RSI, R12, off);
            x64_load64(e, RCX, R12, count);
        }
        x64_mov_rr(e, RDX, R13);
        compile_call_schema(c, f->schema, f->type == JT_ARRAY_OBJECT);
        compile_result(c, true);
        *pos = 0;
        break;
    }
}

/* Bytes written from field i (its key, then bounded values and their keys) up to and including
 * the key of the next unbounded value, or to the closing brace. */
static size_t segment_bytes(const struct compile *c, size_t i)
{
    size_t bytes = 0;
    for (; i < c->s->nfields; i++) {
        bytes += c->key_len[i];
        size_t bound = json_value_max(c->s->fields[i].type);
        if (bound == 0)
            return bytes;
        bytes += bound;
    }
    return bytes + (c->s->nfields == 0 ? 2 : 1); /* "}", or "{}" */
}

/* The epilogue shared by both functions' normal and failure returns, then the cold stubs. */
static void compile_tail(struct compile *c, size_t ret, bool array)
{
    struct x64_asm *e = &c->e;
    x64_bind(e, ret);
    if (array) {
        x64_add_imm(e, RSP, 8);
        x64_pop(e, R14);
    }
    x64_pop(e, R13);
    x64_pop(e, R12);
    x64_pop(e, RBX);
    x64_ret(e);
    x64_bind(e, c->fail_label);
    x64_zero_eax(e);
    x64_jmp(e, ret);
    for (size_t i = 0; i < c->nstubs; i++) {
        x64_bind(e, c->stubs[i].stub);
        x64_mov_rr(e, RDI, R13);
        x64_mov_rr(e, RSI, RBX);
        x64_mov_imm32(e, RDX, c->stubs[i].bytes);
        x64_call(e, FN_ADDR(json_buf_reserve));
        compile_result(c, true);
        x64_jmp(e, c->stubs[i].back);
    }
    c->nstubs = 0;
}

static void compile_object(struct compile *c)
{
    struct x64_asm *e = &c->e;
    size_t ret = x64_label(e);
    c->fail_label = x64_label(e);
    x64_bind(e, c->object_label);
    /* Return address + 3 pushes: the stack is 16-byte aligned at our calls. */
    x64_push(e, RBX);
    x64_push(e, R12);
    x64_push(e, R13);
    x64_mov_rr(e, RBX, RDI);
    x64_mov_rr(e, R12, RSI);
    x64_mov_rr(e, R13, RDX);
    int32_t pos = 0;
    bool segment_start = true;
    for (size_t i = 0; i < c->s->nfields; i++) {
        const struct json_field *f = &c->s->fields[i];
        if (segment_start)
            compile_check(c, segment_bytes(c, i) + JIT_SLACK);
        compile_text(c, c->keys[i], c->key_len[i], &pos);
        compile_value(c, f, &pos);
        segment_start = json_value_max(f->type) == 0;
    }
    if (segment_start)
        compile_check(c, segment_bytes(c, c->s->nfields) + JIT_SLACK);
    if (c->s->nfields == 0)
        compile_text(c, "{}", 2, &pos);
    else
        compile_text(c, "}", 1, &pos);
    x64_lea(e, RAX, RBX, pos);
    compile_tail(c, ret, false);
}

/* '[' objects separated by ',' ']': one check per element for the separator or the bracket. */
static void compile_array(struct compile *c)
{
    struct x64_asm *e = &c->e;
    size_t ret = x64_label(e), loop = x64_label(e), close = x64_label(e);
    c->fail_label = x64_label(e);
    x64_bind(e, c->array_label);
    /* Return address + 4 pushes + 8: aligned. */
    x64_push(e, RBX);
    x64_push(e, R12);
    x64_push(e, R13);
    x64_push(e, R14);
    x64_add_imm(e, RSP, -8);
    x64_mov_rr(e, RBX, RDI);
    x64_mov_rr(e, R12, RSI);
    x64_mov_rr(e, R13, RDX);
    x64_mov_rr(e, R14, RCX);
    compile_check(c, 2);
    x64_store8_imm(e, RBX, 0, '[');
    x64_add_imm(e, RBX, 1);
    x64_test_rr(e, R14);
    x64_jcc(e, CC_E, close);
    x64_bind(e, loop);
    x64_mov_rr(e, RDI, RBX);
    x64_mov_rr(e, RSI, R12);
    x64_mov_rr(e, RDX, R13);
    x64_call_label(e, c->object_label);
    compile_result(c, true);
    x64_add_imm(e, R12, (int32_t)c->s->size);
    compile_check(c, 2);
    x64_add_imm(e, R14, -1);
    x64_jcc(e, CC_E, close);
    x64_store8_imm(e, RBX, 0, ',');
    x64_add_imm(e, RBX, 1);
    x64_jmp(e, loop);
    x64_bind(e, close);
    x64_store8_imm(e, RBX, 0, ']');
    x64_lea(e, RAX, RBX, 1);
    compile_tail(c, ret, true);
}

/* The object function, then the array function 16-byte aligned, then the constant pool: linked
 * into one chunk and sealed. */
int jit_compile_schema(struct json_jit *jit, struct json_schema *s)
{
    struct compile c = {.s = s};
    int rc = -1;
    struct json_compiled *out = NULL;
    struct code_chunk *chunk = NULL;
    x64_init(&c.e);
    c.e.indirect_calls = jit->indirect_calls;
    if (compile_keys(&c) != 0)
        goto fail;
    c.object_label = x64_label(&c.e);
    c.array_label = x64_label(&c.e);
    compile_object(&c);
    x64_align(&c.e, 16);
    compile_array(&c);
    out = calloc(1, sizeof *out);
    if (c.e.failed || out == NULL) {
        errno = ENOMEM;
        goto fail;
    }
    /* Room for the code and, at the chunk's end, a veneer per helper in case one is out of
     * reach: 64 bytes each is generous for any architecture's veneer. */
    size_t total = x64_total_size(&c.e);
    chunk = code_cache_alloc(jit->cache, total + 64 * (c.e.calls.len + 1));
    if (chunk == NULL)
        goto fail;
    struct code_span span = code_chunk_alloc(chunk, total, 64);
    if (span.rw == NULL || x64_link(&c.e, chunk, span.rw, span.rx) != 0 ||
        code_chunk_seal(chunk) != 0)
        goto fail;
    out->schema = s;
    out->chunk = chunk;
    out->code = span.rx;
    out->code_size = c.e.len;
    out->data_size = c.e.pool_len;
    out->object = (char *(*)(char *, const void *, struct json_buf *))(uintptr_t)span.rx;
    out->array = (char *(*)(char *, const void *, struct json_buf *, size_t))(
        (uintptr_t)span.rx + c.e.labels[c.array_label]);
    out->next = jit->compiled;
    jit->compiled = out;
    s->compiled = out;
    chunk = NULL;
    out = NULL;
    rc = 0;
fail:;
    int saved = errno;
    code_chunk_free(chunk);
    free(out);
    for (size_t i = 0; c.keys != NULL && i < s->nfields; i++)
        free(c.keys[i]);
    free(c.keys);
    free(c.key_len);
    free(c.stubs);
    x64_release(&c.e);
    errno = saved;
    return rc;
}

#else /* no code generator for this architecture */

int jit_compile_schema(struct json_jit *jit, struct json_schema *s)
{
    (void)jit;
    (void)s;
    errno = ENOSYS;
    return -1;
}

#endif /* __x86_64__ */
