/*
 * The descriptor compiler: compiles a schema into two functions in one libcodecache chunk, the
 * same way on every instruction set (jit_emit.h says what it asks of a code generator).
 *
 *     char *object(char *p, const void *obj, struct json_buf *out);
 *     char *array(char *p, const void *objs, struct json_buf *out, size_t n);
 *
 * The fields are cut into segments ending at each value of unbounded length (a string, an array,
 * a nested object): a segment starts with one capacity check for the most it can write, then
 * stores its constant text ({"id": and the like, keys escaped once, here) and calls the helpers
 * only for the values, with direct calls (through a veneer when a helper is out of reach).
 * Positions inside a segment are displacements from P; P is updated only by what a helper
 * returns. Growing the buffer is a cold path at the end.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <code_cache.h>

#include "jit.h"
#include "jit_emit.h"

/* The JIT's stores of constant text may write up to 15 bytes past the text (jit_text): later
 * writes cover them, and every capacity check asks for this much more than the segment writes. */
#define JIT_SLACK 16

#if defined(JIT_HAVE_CODE_GENERATOR)

struct compile {
    struct jit_asm *a;
    const struct json_schema *s;
    size_t object_label, array_label, fail_label;
    struct grow_stub {
        size_t stub, back;
        uint32_t bytes;
    } * stubs;
    size_t nstubs;
    bool failed;
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

/* If fewer than bytes are left after P, the cold stub grows the buffer and comes back. */
static void compile_check(struct compile *c, size_t bytes)
{
    struct grow_stub *stubs = realloc(c->stubs, (c->nstubs + 1) * sizeof *stubs);
    if (stubs == NULL) {
        c->failed = true;
        return;
    }
    c->stubs = stubs;
    struct grow_stub *g = &c->stubs[c->nstubs++];
    g->stub = jit_label(c->a);
    g->back = jit_label(c->a);
    g->bytes = (uint32_t)bytes;
    jit_branch_if_no_room(c->a, g->bytes, g->stub);
    jit_bind(c->a, g->back);
}

/* Calls the object or array function of a nested schema: our own labels for a schema listing
 * itself, else the other chunk's code, directly. */
static void compile_call_schema(struct compile *c, const struct json_schema *s, bool array,
                                const struct jit_arg *args, size_t nargs)
{
    if (s == c->s)
        jit_call_label(c->a, array ? c->array_label : c->object_label, args, nargs);
    else if (array)
        jit_call(c->a, FN_ADDR(s->compiled->array), args, nargs);
    else
        jit_call(c->a, FN_ADDR(s->compiled->object), args, nargs);
}

/* The value of field f, written at P + *pos. */
static void compile_value(struct compile *c, const struct json_field *f, int32_t *pos)
{
    struct jit_asm *a = c->a;
    int32_t off = (int32_t)f->offset, count = (int32_t)f->count_offset;
    switch (f->type) {
    case JT_INT32:
    case JT_INT64:
    case JT_UINT64:
    case JT_DOUBLE: {
        enum jit_arg_kind value = f->type == JT_INT32    ? JIT_ARG_I32_AT
                                  : f->type == JT_DOUBLE ? JIT_ARG_F64_AT
                                                         : JIT_ARG_I64_AT;
        struct jit_arg args[] = {{JIT_ARG_P_AT, *pos}, {value, off}};
        jit_call(a,
                 f->type == JT_INT32    ? FN_ADDR(json_put_i32)
                 : f->type == JT_INT64  ? FN_ADDR(json_put_i64)
                 : f->type == JT_UINT64 ? FN_ADDR(json_put_u64)
                                        : FN_ADDR(json_put_double),
                 args, 2);
        jit_take_result(a, false, c->fail_label);
        *pos = 0;
        break;
    }
    case JT_BOOL:
        /* "true", or "fals" over it and an 'e', then one more byte: no helper, one branch. */
        jit_bool(a, *pos, off);
        *pos += 4;
        break;
    case JT_STRING:
    case JT_ARRAY_INT32:
    case JT_ARRAY_INT64: {
        struct jit_arg args[] = {
            {JIT_ARG_OUT, 0}, {JIT_ARG_P_AT, *pos}, {JIT_ARG_I64_AT, off}, {JIT_ARG_I64_AT, count}};
        if (f->type == JT_STRING)
            jit_call(a, FN_ADDR(json_put_string), args, 3);
        else
            jit_call(a,
                     f->type == JT_ARRAY_INT32 ? FN_ADDR(json_put_i32_array)
                                               : FN_ADDR(json_put_i64_array),
                     args, 4);
        jit_take_result(a, true, c->fail_label);
        *pos = 0;
        break;
    }
    case JT_OBJECT:
    case JT_ARRAY_OBJECT: {
        struct jit_arg object_args[] = {
            {JIT_ARG_P_AT, *pos}, {JIT_ARG_OBJ_AT, off}, {JIT_ARG_OUT, 0}};
        struct jit_arg array_args[] = {
            {JIT_ARG_P_AT, *pos}, {JIT_ARG_I64_AT, off}, {JIT_ARG_OUT, 0}, {JIT_ARG_I64_AT, count}};
        if (f->type == JT_OBJECT)
            compile_call_schema(c, f->schema, false, object_args, 3);
        else
            compile_call_schema(c, f->schema, true, array_args, 4);
        jit_take_result(a, true, c->fail_label);
        *pos = 0;
        break;
    }
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
    struct jit_asm *a = c->a;
    jit_bind(a, ret);
    jit_leave(a, array);
    jit_bind(a, c->fail_label);
    jit_result_null(a);
    jit_jump(a, ret);
    for (size_t i = 0; i < c->nstubs; i++) {
        struct jit_arg args[] = {
            {JIT_ARG_OUT, 0}, {JIT_ARG_P_AT, 0}, {JIT_ARG_IMMEDIATE, c->stubs[i].bytes}};
        jit_bind(a, c->stubs[i].stub);
        jit_call(a, FN_ADDR(json_buf_reserve), args, 3);
        jit_take_result(a, true, c->fail_label);
        jit_jump(a, c->stubs[i].back);
    }
    c->nstubs = 0;
}

static void compile_object(struct compile *c)
{
    struct jit_asm *a = c->a;
    size_t ret = jit_label(a);
    c->fail_label = jit_label(a);
    jit_bind(a, c->object_label);
    jit_enter(a, false);
    int32_t pos = 0;
    bool segment_start = true;
    for (size_t i = 0; i < c->s->nfields; i++) {
        const struct json_field *f = &c->s->fields[i];
        if (segment_start)
            compile_check(c, segment_bytes(c, i) + JIT_SLACK);
        jit_text(a, c->keys[i], c->key_len[i], pos);
        pos += (int32_t)c->key_len[i];
        compile_value(c, f, &pos);
        segment_start = json_value_max(f->type) == 0;
    }
    if (segment_start)
        compile_check(c, segment_bytes(c, c->s->nfields) + JIT_SLACK);
    if (c->s->nfields == 0) {
        jit_text(a, "{}", 2, pos);
        pos += 2;
    } else {
        jit_text(a, "}", 1, pos);
        pos += 1;
    }
    jit_result_at(a, pos);
    compile_tail(c, ret, false);
}

/* '[' objects separated by ',' ']': one check per element for the separator or the bracket. */
static void compile_array(struct compile *c)
{
    struct jit_asm *a = c->a;
    size_t ret = jit_label(a), loop = jit_label(a), close = jit_label(a);
    c->fail_label = jit_label(a);
    jit_bind(a, c->array_label);
    jit_enter(a, true);
    compile_check(c, 2);
    jit_text(a, "[", 1, 0);
    jit_advance_p(a, 1);
    jit_branch_if_n_zero(a, close);
    jit_bind(a, loop);
    struct jit_arg args[] = {{JIT_ARG_P_AT, 0}, {JIT_ARG_OBJ_AT, 0}, {JIT_ARG_OUT, 0}};
    jit_call_label(a, c->object_label, args, 3);
    jit_take_result(a, true, c->fail_label);
    jit_advance_obj(a, (int32_t)c->s->size);
    compile_check(c, 2);
    jit_decrement_n_branch_if_zero(a, close);
    jit_text(a, ",", 1, 0);
    jit_advance_p(a, 1);
    jit_jump(a, loop);
    jit_bind(a, close);
    jit_text(a, "]", 1, 0);
    jit_result_at(a, 1);
    compile_tail(c, ret, true);
}

/* The object function, then the array function 16-byte aligned, then the constant data: linked
 * into one chunk and sealed. */
int jit_compile_schema(struct json_jit *jit, struct json_schema *s)
{
    struct compile c = {.s = s};
    int rc = -1;
    struct json_compiled *out = NULL;
    struct code_chunk *chunk = NULL;
    c.a = jit_asm_create(jit->indirect_calls);
    if (c.a == NULL || compile_keys(&c) != 0) {
        errno = ENOMEM;
        goto fail;
    }
    c.object_label = jit_label(c.a);
    c.array_label = jit_label(c.a);
    compile_object(&c);
    jit_align(c.a, 16);
    compile_array(&c);
    out = calloc(1, sizeof *out);
    if (c.failed || jit_failed(c.a) || out == NULL) {
        errno = ENOMEM;
        goto fail;
    }
    /* Room for the code and, at the chunk's end, a veneer per helper in case one is out of
     * reach: 64 bytes each is generous for any architecture's veneer. */
    size_t total = jit_total_size(c.a);
    chunk = code_cache_alloc(jit->cache, total + 64 * (jit_call_count(c.a) + 1));
    if (chunk == NULL)
        goto fail;
    struct code_span span = code_chunk_alloc(chunk, total, 64);
    if (span.rw == NULL || jit_link(c.a, chunk, span.rw, span.rx) != 0 ||
        code_chunk_seal(chunk) != 0)
        goto fail;
    out->schema = s;
    out->chunk = chunk;
    out->code = span.rx;
    out->code_size = jit_code_size(c.a);
    out->data_size = jit_data_size(c.a);
    out->object = (char *(*)(char *, const void *, struct json_buf *))(uintptr_t)span.rx;
    out->array = (char *(*)(char *, const void *, struct json_buf *, size_t))(
        (uintptr_t)span.rx + jit_label_offset(c.a, c.array_label));
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
    jit_asm_destroy(c.a);
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

#endif /* JIT_HAVE_CODE_GENERATOR */
