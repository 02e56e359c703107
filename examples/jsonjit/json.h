/*
 * jsonjit: a JSON serializer driven by descriptors, with two encoders producing the same bytes:
 * an interpreter that walks the descriptors on every call, and a JIT that compiles each
 * descriptor into x86-64 or A64 machine code placed by libcodecache within direct-call reach
 * (call rel32, bl) of the helpers below.
 *
 * A descriptor (struct json_schema) lists the fields of a C struct: name, offset, type. Output
 * follows RFC 8259: strings are escaped (quote, backslash, the short forms \b \f \n \r \t, other
 * control characters as \u00XX; bytes >= 0x80 are passed through, so valid UTF-8 in gives valid
 * UTF-8 out, and nothing is validated); integers are exact over their whole range; doubles are
 * printed with the fewest of 15, 16 or 17 significant digits that read back to the same value
 * (C locale), and NaN and the infinities, which JSON cannot express, are written as null.
 */
#ifndef JSONJIT_JSON_H
#define JSONJIT_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct code_cache;
struct code_chunk;

/* ---- Descriptors. The enumerators are JT_*, not JSON_*: jansson, which the tests use, owns
 * those names. ---- */

enum json_field_type {
    JT_INT32 = 1,    /* int32_t */
    JT_INT64,        /* int64_t */
    JT_UINT64,       /* uint64_t */
    JT_DOUBLE,       /* double; NaN and infinities are written as null */
    JT_BOOL,         /* bool */
    JT_STRING,       /* const char *, NUL-terminated; NULL is written as null */
    JT_OBJECT,       /* a struct embedded at offset, described by .schema */
    JT_ARRAY_OBJECT, /* pointer at offset, size_t count at .count_offset, elements .schema */
    JT_ARRAY_INT32,  /* const int32_t * at offset, size_t count at .count_offset */
    JT_ARRAY_INT64,  /* const int64_t * at offset, size_t count at .count_offset */
};

struct json_schema;
struct json_compiled;

struct json_field {
    const char *name; /* the key, not NULL; escaped like any string */
    size_t offset;
    enum json_field_type type;
    struct json_schema *schema; /* JT_OBJECT, JT_ARRAY_OBJECT */
    size_t count_offset;        /* JT_ARRAY_*: where the element count (size_t) is */
};

struct json_schema {
    const char *name; /* for messages only */
    size_t size;      /* sizeof the struct: the stride of an array of them */
    size_t nfields;
    const struct json_field *fields;
    /* Set by json_jit_compile, cleared by json_jit_destroy. A schema may list itself in a
     * JT_ARRAY_OBJECT field (a tree); other cycles are not supported by the JIT. */
    struct json_compiled *compiled;
};

/* ---- The output buffer. ---- */

/* The text written so far is data[0, len). On failure an encoder returns -1 with errno set and
 * leaves len unchanged (bytes past len may have been overwritten). */
struct json_buf {
    char *data;
    size_t len;
    size_t cap;
    size_t limit; /* the buffer never grows past this many bytes; 0 = no limit */
};

/* Returns 0, or -1 and errno ENOMEM. */
int json_buf_init(struct json_buf *out, size_t cap);
void json_buf_release(struct json_buf *out);

/* Makes room for n bytes at p, a position inside out->data[0, cap]: returns p, or the same
 * position in the reallocated buffer; NULL and errno ENOMEM (no memory) or ENOBUFS (above
 * out->limit) when it cannot. */
char *json_buf_reserve(struct json_buf *out, char *p, size_t n);

/* The same, with the common case (room enough) inline. */
static inline char *json_buf_room(struct json_buf *out, char *p, size_t n)
{
    if ((size_t)(out->data + out->cap - p) >= n)
        return p;
    return json_buf_reserve(out, p, n);
}

/* ---- Helpers shared by both encoders. The json_put_* functions taking a bare position write at
 * most JSON_*_MAX bytes there: the caller reserves them. Those taking the buffer reserve what
 * they need themselves and return NULL with errno when they cannot. All return the position
 * after what they wrote. ---- */

#define JSON_INT32_MAX  11 /* -2147483648 */
#define JSON_INT64_MAX  20 /* -9223372036854775808, 18446744073709551615 */
#define JSON_DOUBLE_MAX 32 /* 24 characters at most, plus snprintf's NUL, rounded up */
#define JSON_BOOL_MAX   5

char *json_put_i32(char *p, int32_t v);
char *json_put_i64(char *p, int64_t v);
char *json_put_u64(char *p, uint64_t v);
char *json_put_double(char *p, double v);
char *json_put_string(struct json_buf *out, char *p, const char *s);
/* Bytes a value of this type writes at most when that is bounded (the scalars), or 0 when it is
 * not (strings, objects, arrays reserve room for themselves). */
size_t json_value_max(enum json_field_type type);

char *json_put_i32_array(struct json_buf *out, char *p, const int32_t *v, size_t n);
char *json_put_i64_array(struct json_buf *out, char *p, const int64_t *v, size_t n);

/* ---- The interpreter (interp.c): walks the descriptors on every call. ---- */

/* Appends the JSON text of obj to out. Returns 0, or -1 and errno (ENOMEM, ENOBUFS). */
int json_interp_encode(const struct json_schema *s, const void *obj, struct json_buf *out);
/* Appends a JSON array of the n structs at objs. Returns 0, or -1 and errno. */
int json_interp_encode_array(const struct json_schema *s, const void *objs, size_t n,
                             struct json_buf *out);

/* ---- The JIT (jit_compile.c, on jit_x86_64.c or jit_aarch64.c): one sealed libcodecache chunk
 * per compiled schema. ---- */

/* The machine code of one schema: an object function and an array function, then the constant
 * text they copy (PC-relative), in one chunk. Both functions return the position after what they
 * wrote, or NULL with errno. */
struct json_compiled {
    struct json_schema *schema;
    struct code_chunk *chunk;
    const unsigned char *code; /* where the code runs: the object function */
    size_t code_size;          /* bytes of instructions (both functions and their cold paths) */
    size_t data_size;          /* bytes of constant text after the instructions */
    char *(*object)(char *p, const void *obj, struct json_buf *out);
    char *(*array)(char *p, const void *objs, struct json_buf *out, size_t n);
    struct json_compiled *next;
};

struct json_jit;

/* True when this build has a code generator for the machine it runs on (x86-64, aarch64). */
bool json_jit_supported(void);

/* A JIT compiling into cache, or, with cache NULL, into a cache of its own created near the
 * helpers (CODE_CACHE_NEAR_OBJECT: every function of the program holding them is reached with
 * call rel32 or bl). Returns NULL and errno (ENOSYS without a code generator, or
 * code_cache_create's). */
struct json_jit *json_jit_create(struct code_cache *cache);
/* Frees every compiled schema's chunk, clears their .compiled, and the cache if it owns it. */
void json_jit_destroy(struct json_jit *jit);
struct code_cache *json_jit_cache(const struct json_jit *jit);
/* For comparison only: schemas compiled from now on call their helpers with movabs rax, imm64;
 * call rax (12 bytes; A64: mov x16, imm64 in four instructions, blr x16: 20 bytes), which reach
 * anything, instead of call rel32 (5 bytes) or bl (4 bytes), which need the cache near. */
void json_jit_set_indirect_calls(struct json_jit *jit, bool indirect);
/* A human-readable line saying how the JIT's own cache was placed. */
const char *json_jit_placement(const struct json_jit *jit);

/* Compiles s and every schema it contains that is not compiled yet. Returns 0, or -1 and errno:
 * EINVAL (unknown field type, a schema cycle other than a schema listing itself), ENOMEM, or
 * the errno of the code cache. */
int json_jit_compile(struct json_jit *jit, struct json_schema *s);

/* Same contract as the interpreter's, for a compiled schema (EINVAL when s is not compiled). */
int json_jit_encode(const struct json_schema *s, const void *obj, struct json_buf *out);
int json_jit_encode_array(const struct json_schema *s, const void *objs, size_t n,
                          struct json_buf *out);

#endif /* JSONJIT_JSON_H */
