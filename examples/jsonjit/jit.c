/*
 * The JIT's part that does not depend on the instruction set: the JIT object and its cache,
 * compiling a schema's tree in dependency order, and running compiled code.
 */
#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>

#include <code_cache.h>

#include "jit.h"

static char *jit_finish(struct json_buf *out, char *p)
{
    if (p == NULL)
        return NULL;
    out->len = (size_t)(p - out->data);
    return p;
}

int json_jit_encode(const struct json_schema *s, const void *obj, struct json_buf *out)
{
    if (s->compiled == NULL) {
        errno = EINVAL;
        return -1;
    }
    return jit_finish(out, s->compiled->object(out->data + out->len, obj, out)) ? 0 : -1;
}

int json_jit_encode_array(const struct json_schema *s, const void *objs, size_t n,
                          struct json_buf *out)
{
    if (s->compiled == NULL) {
        errno = EINVAL;
        return -1;
    }
    return jit_finish(out, s->compiled->array(out->data + out->len, objs, out, n)) ? 0 : -1;
}

bool json_jit_supported(void)
{
#if defined(__x86_64__) || defined(__aarch64__)
    return true;
#else
    return false;
#endif
}

struct json_jit *json_jit_create(struct code_cache *cache)
{
    if (!json_jit_supported()) {
        errno = ENOSYS;
        return NULL;
    }
    struct json_jit *jit = calloc(1, sizeof *jit);
    if (jit == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    if (cache != NULL) {
        jit->cache = cache;
        snprintf(jit->placement, sizeof jit->placement, "by the caller");
        return jit;
    }
    /* Near every function of the program holding the helpers (they may sit in a shared object
     * or the executable); failing that near one helper; failing that anywhere, with veneers.
     * Where the system refuses to make memory executable with mprotect (systemd's
     * MemoryDenyWriteExecute, prctl PR_SET_MDWE), the dual-mapped backend may still work: it
     * maps its code r-x once and never asks for PROT_EXEC again. When both say EACCES, the
     * caller has the interpreter. */
    const void *helper = FN_ADDR(json_put_i32);
    static const unsigned backends[] = {0, CODE_CACHE_DUAL_MAP};
    for (size_t b = 0; b < sizeof backends / sizeof backends[0] && jit->cache == NULL; b++) {
        struct code_cache_options near_object = {
            .size = 4 << 20, .near = helper, .flags = CODE_CACHE_NEAR_OBJECT | backends[b]};
        struct code_cache_options near_one = {
            .size = 4 << 20, .near = helper, .flags = backends[b]};
        struct code_cache_options anywhere = {.size = 4 << 20, .flags = backends[b]};
        const char *backend = backends[b] ? ", dual-mapped (mprotect to PROT_EXEC is denied)" : "";
        const char *how = "near every segment of the helpers' object";
        jit->cache = code_cache_create(&near_object);
        if (jit->cache == NULL && errno != EACCES) {
            how = "near json_put_i32 only (the helpers' object did not fit)";
            jit->cache = code_cache_create(&near_one);
        }
        if (jit->cache == NULL && errno != EACCES) {
            how = "anywhere: helpers are called through veneers";
            jit->cache = code_cache_create(&anywhere);
        }
        if (jit->cache != NULL)
            snprintf(jit->placement, sizeof jit->placement, "%s%s", how, backend);
        else if (errno != EACCES)
            break;
    }
    if (jit->cache == NULL) {
        int saved = errno;
        free(jit);
        errno = saved;
        return NULL;
    }
    jit->owns_cache = true;
    return jit;
}

void json_jit_destroy(struct json_jit *jit)
{
    if (jit == NULL)
        return;
    struct json_compiled *c = jit->compiled;
    while (c != NULL) {
        struct json_compiled *next = c->next;
        code_chunk_free(c->chunk);
        c->schema->compiled = NULL;
        free(c);
        c = next;
    }
    if (jit->owns_cache)
        code_cache_destroy(jit->cache);
    free(jit);
}

struct code_cache *json_jit_cache(const struct json_jit *jit)
{
    return jit->cache;
}

void json_jit_set_indirect_calls(struct json_jit *jit, bool indirect)
{
    jit->indirect_calls = indirect;
}

const char *json_jit_placement(const struct json_jit *jit)
{
    return jit->placement;
}

/* ---- Compiling a schema and the schemas it contains. ---- */

/* Offsets and sizes become 32-bit displacements and immediates. */
static bool schema_valid(const struct json_schema *s)
{
    if (s->size > INT32_MAX)
        return false;
    for (size_t i = 0; i < s->nfields; i++) {
        const struct json_field *f = &s->fields[i];
        if (f->name == NULL || f->offset > INT32_MAX - 8 || f->count_offset > INT32_MAX - 8)
            return false;
        if (f->type < JT_INT32 || f->type > JT_ARRAY_INT64)
            return false;
        if ((f->type == JT_OBJECT || f->type == JT_ARRAY_OBJECT) && f->schema == NULL)
            return false;
    }
    return true;
}

/* Names the two functions of a compiled schema, json_<schema>_object and json_<schema>_array,
 * so that perf (CODE_CACHE_PERF=jitdump) and gdb (CODE_CACHE_GDB=1) show them, and a crash
 * handler can say which one ran (code_chunk_name_at). Each function's cold paths follow it: its
 * bytes run up to the next function, or to the end of the instructions. Naming is optional
 * (ENOMEM only): a failure leaves the code as it is, unnamed. */
static void jit_name_schema(const struct json_compiled *c)
{
    const char *object = (const char *)(uintptr_t)c->object;
    const char *array = (const char *)(uintptr_t)c->array;
    const char *lo = object < array ? object : array, *hi = object < array ? array : object;
    const char *end = (const char *)c->code + c->code_size;
    char name[128];
    snprintf(name, sizeof name, "json_%s_object", c->schema->name);
    code_chunk_name(c->chunk, object, (size_t)((object == lo ? hi : end) - object), name);
    snprintf(name, sizeof name, "json_%s_array", c->schema->name);
    code_chunk_name(c->chunk, array, (size_t)((array == lo ? hi : end) - array), name);
}

/* The schemas being compiled, innermost first: a schema met again here is a cycle. */
struct compile_frame {
    const struct json_schema *s;
    const struct compile_frame *outer;
};

static int compile_tree(struct json_jit *jit, struct json_schema *s,
                        const struct compile_frame *outer)
{
    if (s->compiled != NULL)
        return 0;
    for (const struct compile_frame *f = outer; f != NULL; f = f->outer) {
        if (f->s == s) {
            errno = EINVAL;
            return -1;
        }
    }
    if (!schema_valid(s)) {
        errno = EINVAL;
        return -1;
    }
    struct compile_frame frame = {.s = s, .outer = outer};
    /* Nested schemas first: their code must exist for ours to call it. */
    for (size_t i = 0; i < s->nfields; i++) {
        struct json_schema *inner = s->fields[i].schema;
        enum json_field_type t = s->fields[i].type;
        if ((t == JT_OBJECT || t == JT_ARRAY_OBJECT) && inner != s &&
            compile_tree(jit, inner, &frame) != 0)
            return -1;
    }
    if (jit_compile_schema(jit, s) != 0)
        return -1;
    jit_name_schema(s->compiled);
    return 0;
}

int json_jit_compile(struct json_jit *jit, struct json_schema *s)
{
    if (jit == NULL || s == NULL) {
        errno = EINVAL;
        return -1;
    }
    return compile_tree(jit, s, NULL);
}
