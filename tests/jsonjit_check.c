/*
 * Generators and checks for tests/jsonjit.c (see jsonjit_check.h).
 */
#include <capstone/capstone.h>
#include <criterion/criterion.h>
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <code_cache.h>

#include "jsonjit_check.h"

void *arena_alloc(struct arena *a, size_t size)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        void **blocks = realloc(a->blocks, cap * sizeof *blocks);
        cr_assert_not_null(blocks);
        a->blocks = blocks;
        a->cap = cap;
    }
    void *p = calloc(1, size ? size : 1);
    cr_assert_not_null(p);
    a->blocks[a->n++] = p;
    return p;
}

void arena_release(struct arena *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->blocks[i]);
    free(a->blocks);
    memset(a, 0, sizeof *a);
}

uint64_t rng_next(struct rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545f4914f6cdd1dull;
}

size_t rng_below(struct rng *r, size_t n)
{
    return (size_t)(rng_next(r) % n);
}

static char *arena_strdup(struct arena *a, const char *s)
{
    char *d = arena_alloc(a, strlen(s) + 1);
    memcpy(d, s, strlen(s) + 1);
    return d;
}

/* ---- Descriptors ---- */

/* Pieces of keys; none contains 'k', so "<piece>k<index>.<piece>" keys are unique. */
static const char *const key_pieces[] = {
    "",  "id", "\"",           "\\", "\n",     "\x01", "\x1f", "\xc3\xa9", "\xf0\x9f\x98\x80",
    "/", " ",  "randomNumber", "\t", "message"};

static size_t type_size(enum json_field_type t)
{
    return t == JT_INT32 ? 4 : t == JT_BOOL ? 1 : 8;
}

static size_t align8(size_t x)
{
    return (x + 7) & ~(size_t)7;
}

static struct json_schema *gen_schema_at(struct arena *a, struct rng *r, int depth)
{
    static const enum json_field_type scalars[] = {JT_INT32,  JT_INT64,       JT_UINT64,
                                                   JT_DOUBLE, JT_BOOL,        JT_STRING,
                                                   JT_STRING, JT_ARRAY_INT32, JT_ARRAY_INT64};
    struct json_schema *s = arena_alloc(a, sizeof *s);
    size_t n = rng_below(r, 9);
    struct json_field *fields = arena_alloc(a, (n ? n : 1) * sizeof *fields);
    size_t at = 0;
    char name[64];
    for (size_t i = 0; i < n; i++) {
        struct json_field *f = &fields[i];
        size_t pick = rng_below(r, 12);
        if (pick < 9) {
            f->type = scalars[pick];
        } else if (pick == 9 && depth < 3) {
            f->type = JT_OBJECT;
            f->schema = gen_schema_at(a, r, depth + 1);
        } else {
            f->type = JT_ARRAY_OBJECT;
            f->schema = depth < 3 && pick == 10 ? gen_schema_at(a, r, depth + 1) : s;
        }
        snprintf(name, sizeof name, "%sk%zu.%s", key_pieces[rng_below(r, 14)], i,
                 key_pieces[rng_below(r, 14)]);
        f->name = arena_strdup(a, name);
        size_t size = f->type == JT_OBJECT ? f->schema->size : type_size(f->type);
        at = f->type == JT_INT32 ? (at + 3) & ~(size_t)3 : f->type == JT_BOOL ? at : align8(at);
        f->offset = at;
        at += size;
        if (f->type >= JT_ARRAY_OBJECT) {
            f->count_offset = align8(at);
            at = f->count_offset + sizeof(size_t);
        }
    }
    s->name = "generated";
    s->nfields = n;
    s->fields = fields;
    s->size = align8(at);
    return s;
}

struct json_schema *gen_schema(struct arena *a, struct rng *r)
{
    return gen_schema_at(a, r, 0);
}

/* ---- Values ---- */

static const char *string_pieces[64];
static size_t nstring_pieces;

static void string_pieces_init(void)
{
    static const char *const fixed[] = {
        "",
        "a",
        "Hello, World!",
        "\"",
        "\\",
        "/",
        "\x7f",
        "\xc3\xa9",
        "\xe2\x82\xac",
        "\xf0\x9f\x98\x80",
        "\xe2\x80\xa8",
        "\b\f\n\r\t",
        "</script>",
        "null",
        "\\u0000",
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789"};
    static char controls[31][2];
    if (nstring_pieces != 0)
        return;
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        string_pieces[nstring_pieces++] = fixed[i];
    for (int c = 1; c < 0x20; c++) {
        controls[c - 1][0] = (char)c;
        string_pieces[nstring_pieces++] = controls[c - 1];
    }
}

static const char *gen_string(struct arena *a, struct rng *r)
{
    if (rng_below(r, 8) == 0)
        return NULL;
    char buf[1024] = "";
    size_t len = 0;
    for (size_t k = rng_below(r, 7); k > 0; k--) {
        const char *piece = string_pieces[rng_below(r, nstring_pieces)];
        memcpy(buf + len, piece, strlen(piece) + 1);
        len += strlen(piece);
    }
    return arena_strdup(a, buf);
}

static int64_t gen_int(struct rng *r, int64_t lo, int64_t hi)
{
    switch (rng_below(r, 6)) {
    case 0:
        return lo;
    case 1:
        return hi;
    case 2:
        return (int64_t)rng_below(r, 3) - 1;
    case 3:
        return (int64_t)rng_below(r, 10001);
    default:
        /* In unsigned arithmetic: the sum wraps where a signed one would overflow. */
        return (int64_t)((uint64_t)lo + rng_next(r) % ((uint64_t)hi - (uint64_t)lo));
    }
}

static double gen_double(struct rng *r)
{
    static const double special[] = {0.0,
                                     -0.0,
                                     4.9406564584124654e-324, /* the smallest denormal */
                                     2.2250738585072009e-308, /* the largest denormal */
                                     DBL_MIN,
                                     DBL_MAX,
                                     -DBL_MAX,
                                     0.1,
                                     1.0,
                                     -2.5,
                                     1e300,
                                     123456789012345678.0,
                                     9007199254740993.0,
                                     (double)NAN,
                                     (double)INFINITY,
                                     -(double)INFINITY};
    size_t n = sizeof special / sizeof *special;
    size_t pick = rng_below(r, n + 2);
    if (pick < n)
        return special[pick];
    if (pick == n)
        return (double)(int64_t)rng_next(r) / (double)(1 + rng_below(r, 1000));
    /* Any bit pattern: denormals, huge exponents, NaNs with payloads. */
    uint64_t bits = rng_next(r);
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* Array elements left for the struct being generated: trees of schemas listing themselves
 * several times would otherwise grow to thousands of objects. */
static size_t element_budget;

static void gen_fill(struct arena *a, struct rng *r, const struct json_schema *s, char *obj,
                     int depth)
{
    for (size_t i = 0; i < s->nfields; i++) {
        const struct json_field *f = &s->fields[i];
        char *at = obj + f->offset;
        size_t count = depth < 4 ? rng_below(r, 4) : 0;
        count = count < element_budget ? count : element_budget;
        element_budget -= count;
        void *p = NULL;
        switch (f->type) {
        case JT_INT32: {
            int32_t v = (int32_t)gen_int(r, INT32_MIN, INT32_MAX);
            memcpy(at, &v, sizeof v);
            break;
        }
        case JT_INT64:
        case JT_UINT64: {
            int64_t v = gen_int(r, INT64_MIN, INT64_MAX);
            if (f->type == JT_UINT64 && rng_below(r, 3) == 0)
                v = rng_below(r, 2) ? -1 /* UINT64_MAX */ : INT64_MIN /* INT64_MAX + 1 */;
            memcpy(at, &v, sizeof v);
            break;
        }
        case JT_DOUBLE: {
            double v = gen_double(r);
            memcpy(at, &v, sizeof v);
            break;
        }
        case JT_BOOL:
            *(bool *)at = rng_below(r, 2);
            break;
        case JT_STRING: {
            const char *v = gen_string(a, r);
            memcpy(at, &v, sizeof v);
            break;
        }
        case JT_OBJECT:
            gen_fill(a, r, f->schema, at, depth + 1);
            break;
        case JT_ARRAY_OBJECT:
            if (count != 0)
                p = arena_alloc(a, count * f->schema->size);
            for (size_t k = 0; k < count; k++)
                gen_fill(a, r, f->schema, (char *)p + k * f->schema->size, depth + 1);
            break;
        case JT_ARRAY_INT32:
        case JT_ARRAY_INT64:
            count = rng_below(r, 6);
            if (count != 0)
                p = arena_alloc(a, count * 8);
            for (size_t k = 0; k < count; k++) {
                if (f->type == JT_ARRAY_INT32)
                    ((int32_t *)p)[k] = (int32_t)gen_int(r, INT32_MIN, INT32_MAX);
                else
                    ((int64_t *)p)[k] = gen_int(r, INT64_MIN, INT64_MAX);
            }
            break;
        }
        if (f->type >= JT_ARRAY_OBJECT) {
            memcpy(at, &p, sizeof p);
            memcpy(obj + f->count_offset, &count, sizeof count);
        }
    }
}

void *gen_object(struct arena *a, struct rng *r, const struct json_schema *s)
{
    string_pieces_init();
    char *obj = arena_alloc(a, s->size);
    element_budget = 24;
    gen_fill(a, r, s, obj, 0);
    return obj;
}

/* Collects the schemas reachable from s, each once. */
size_t collect_schemas(struct json_schema *s, struct json_schema **out, size_t n, size_t max)
{
    for (size_t i = 0; i < n; i++)
        if (out[i] == s)
            return n;
    cr_assert_lt(n, max);
    out[n++] = s;
    for (size_t i = 0; i < s->nfields; i++)
        if (s->fields[i].schema != NULL)
            n = collect_schemas(s->fields[i].schema, out, n, max);
    return n;
}

/* ---- Comparison with jansson ---- */

static void compare_object(const struct json_schema *s, const char *obj, json_t *j, bool as_real);

/* Integers are exact unless the document holds one above INT64_MAX, which jansson cannot read
 * as an integer: then every number was read as a double, and json_put_u64 is checked against
 * printf separately. */
static void compare_int(json_t *j, int64_t v, bool as_real, const char *name)
{
    if (as_real) {
        cr_assert(json_is_real(j) && json_real_value(j) == (double)v, "%s: %lld", name,
                  (long long)v);
    } else {
        cr_assert(json_is_integer(j) && json_integer_value(j) == v, "%s: expected %lld", name,
                  (long long)v);
    }
}

static void compare_double(json_t *j, double v, const char *name)
{
    if (!isfinite(v)) {
        cr_assert(json_is_null(j), "%s: NaN and infinities are written as null", name);
        return;
    }
    /* Integral values with few digits are written without a decimal point: jansson reads them as
     * integers, exactly. */
    double got = json_is_integer(j) ? (double)json_integer_value(j) : json_real_value(j);
    cr_assert(json_is_number(j) && got == v && (json_is_integer(j) || !signbit(got) == !signbit(v)),
              "%s: expected %.17g, read %.17g", name, v, got);
}

/* Fields of generated structs are read with memcpy: any alignment, no aliasing question. */
static int64_t load_i32(const char *at)
{
    int32_t v;
    memcpy(&v, at, sizeof v);
    return v;
}

static int64_t load_i64(const char *at)
{
    int64_t v;
    memcpy(&v, at, sizeof v);
    return v;
}

static uint64_t load_u64(const char *at)
{
    uint64_t v;
    memcpy(&v, at, sizeof v);
    return v;
}

static double load_double(const char *at)
{
    double v;
    memcpy(&v, at, sizeof v);
    return v;
}

static void compare_value(const struct json_field *f, const char *obj, json_t *j, bool as_real)
{
    const char *at = obj + f->offset;
    const void *p = NULL;
    size_t count = 0;
    if (f->type == JT_STRING || f->type >= JT_ARRAY_OBJECT)
        memcpy(&p, at, sizeof p);
    if (f->type >= JT_ARRAY_OBJECT) {
        memcpy(&count, obj + f->count_offset, sizeof count);
        cr_assert(json_is_array(j) && json_array_size(j) == count, "%s: array of %zu", f->name,
                  count);
    }
    switch (f->type) {
    case JT_INT32:
        compare_int(j, load_i32(at), as_real, f->name);
        break;
    case JT_INT64:
        compare_int(j, load_i64(at), as_real, f->name);
        break;
    case JT_UINT64:
        if (as_real)
            cr_assert(json_is_real(j) && json_real_value(j) == (double)load_u64(at));
        else
            compare_int(j, (int64_t)load_u64(at), false, f->name);
        break;
    case JT_DOUBLE:
        compare_double(j, load_double(at), f->name);
        break;
    case JT_BOOL:
        cr_assert(json_is_boolean(j) && json_is_true(j) == *(const bool *)at, "%s", f->name);
        break;
    case JT_STRING:
        if (p == NULL) {
            cr_assert(json_is_null(j), "%s: a NULL string is null", f->name);
        } else {
            cr_assert(json_is_string(j), "%s: a string", f->name);
            cr_assert(json_string_length(j) == strlen(p) &&
                          memcmp(json_string_value(j), p, strlen(p)) == 0,
                      "%s: the string reads back", f->name);
        }
        break;
    case JT_OBJECT:
        compare_object(f->schema, at, j, as_real);
        break;
    case JT_ARRAY_OBJECT:
        for (size_t k = 0; k < count; k++)
            compare_object(f->schema, (const char *)p + k * f->schema->size, json_array_get(j, k),
                           as_real);
        break;
    case JT_ARRAY_INT32:
        for (size_t k = 0; k < count; k++)
            compare_int(json_array_get(j, k), ((const int32_t *)p)[k], as_real, f->name);
        break;
    case JT_ARRAY_INT64:
        for (size_t k = 0; k < count; k++)
            compare_int(json_array_get(j, k), ((const int64_t *)p)[k], as_real, f->name);
        break;
    }
}

static void compare_object(const struct json_schema *s, const char *obj, json_t *j, bool as_real)
{
    cr_assert(json_is_object(j) && json_object_size(j) == s->nfields, "an object of %zu fields",
              s->nfields);
    for (size_t i = 0; i < s->nfields; i++) {
        json_t *v = json_object_get(j, s->fields[i].name);
        cr_assert_not_null(v, "key %s is present", s->fields[i].name);
        compare_value(&s->fields[i], obj, v, as_real);
    }
}

/* Parses text; falls back to reading numbers as doubles when an integer is too big for
 * jansson's int64. */
static json_t *parse(const struct json_buf *b, bool *as_real)
{
    json_error_t err;
    *as_real = false;
    json_t *j = json_loadb(b->data, b->len, 0, &err);
    if (j == NULL && strstr(err.text, "too big integer") != NULL) {
        *as_real = true;
        j = json_loadb(b->data, b->len, JSON_DECODE_INT_AS_REAL, &err);
    }
    cr_assert_not_null(j, "jansson: %s at byte %d of %.*s", err.text, err.position, (int)b->len,
                       b->data);
    return j;
}

static void compare_encoders(const struct json_buf *a, const struct json_buf *b)
{
    cr_assert(a->len == b->len && memcmp(a->data, b->data, a->len) == 0,
              "interpreter: %.*s\nJIT:         %.*s", (int)a->len, a->data, (int)b->len, b->data);
}

void check_object(const struct json_schema *s, const void *obj, size_t jit_cap)
{
    struct json_buf a, b;
    cr_assert_eq(json_buf_init(&a, 16), 0);
    cr_assert_eq(json_buf_init(&b, jit_cap), 0);
    cr_assert_eq(json_interp_encode(s, obj, &a), 0);
    cr_assert_eq(json_jit_encode(s, obj, &b), 0);
    compare_encoders(&a, &b);
    bool as_real;
    json_t *j = parse(&a, &as_real);
    compare_object(s, obj, j, as_real);
    json_decref(j);
    json_buf_release(&a);
    json_buf_release(&b);
}

void check_array(const struct json_schema *s, const void *objs, size_t n, size_t jit_cap)
{
    struct json_buf a, b;
    cr_assert_eq(json_buf_init(&a, 16), 0);
    cr_assert_eq(json_buf_init(&b, jit_cap), 0);
    cr_assert_eq(json_interp_encode_array(s, objs, n, &a), 0);
    cr_assert_eq(json_jit_encode_array(s, objs, n, &b), 0);
    compare_encoders(&a, &b);
    bool as_real;
    json_t *j = parse(&a, &as_real);
    cr_assert(json_is_array(j) && json_array_size(j) == n);
    for (size_t k = 0; k < n; k++)
        compare_object(s, (const char *)objs + k * s->size, json_array_get(j, k), as_real);
    json_decref(j);
    json_buf_release(&a);
    json_buf_release(&b);
}

/* ---- Disassembly ---- */

#define FN(f) ((const void *)(uintptr_t)(f))

#define EXPECTED_MAX 32

struct expected_call {
    const void *fn;
    bool called;
};

static void expect_call(struct expected_call *list, size_t *n, const void *fn)
{
    for (size_t i = 0; i < *n; i++)
        if (list[i].fn == fn)
            return;
    cr_assert_lt(*n, EXPECTED_MAX, "room for every function a schema calls");
    list[(*n)++] = (struct expected_call){.fn = fn};
}

/*
 * What check_calls needs to know of the machine code, per architecture: whether an instruction
 * is an indirect branch, whether it is a direct jump or call and where to, and what a veneer of
 * the library looks like. Capstone decodes; the displacements are read from the encodings.
 */
enum branch { BRANCH_NONE, BRANCH_JUMP, BRANCH_CALL };

#if defined(__x86_64__)

#define CS_ARCH CS_ARCH_X86
#define CS_MODE CS_MODE_64

static bool indirect_branch(const cs_insn *in)
{
    return in->bytes[0] == 0xff;
}

/* jmp rel32, jcc rel32 and call rel32 (E8: the only call form the JIT may use). */
static enum branch direct_branch(const cs_insn *in, uintptr_t *target)
{
    const uint8_t *b = in->bytes;
    int32_t rel;
    memcpy(&rel, b + in->size - 4, sizeof rel);
    *target = (uintptr_t)(in->address + in->size + (int64_t)rel);
    if (b[0] == 0xe9 || (b[0] == 0x0f && (b[1] & 0xf0) == 0x80))
        return BRANCH_JUMP;
    if (in->id != X86_INS_CALL)
        return BRANCH_NONE;
    cr_assert(in->size == 5 && b[0] == 0xe8, "call rel32 (E8), not %s %s", in->mnemonic,
              in->op_str);
    return BRANCH_CALL;
}

/* Capstone decodes int3. */
static size_t undecoded_trap(const uint8_t *p, size_t left)
{
    (void)p, (void)left;
    return 0;
}

/* jmp qword [rip + 0] and the absolute address after it. */
static bool veneer_target(uintptr_t at, uintptr_t chunk_hi, uintptr_t *target)
{
    static const uint8_t jmp_rip0[6] = {0xff, 0x25, 0, 0, 0, 0};
    if (at + 14 > chunk_hi || memcmp((const void *)at, jmp_rip0, 6) != 0)
        return false;
    memcpy(target, (const uint8_t *)at + 6, sizeof *target);
    return true;
}

#elif defined(__aarch64__)

#define CS_ARCH CS_ARCH_ARM64
#define CS_MODE CS_MODE_ARM

static uint32_t insn_word(const cs_insn *in)
{
    uint32_t w;
    memcpy(&w, in->bytes, sizeof w);
    return w;
}

/* A signed field of bits [lo, lo + bits) of w, in instructions, as a byte displacement. */
static int64_t a64_disp(uint32_t w, unsigned lo, unsigned bits)
{
    int64_t v = (int64_t)((w >> lo) & ((1u << bits) - 1));
    if (v & ((int64_t)1 << (bits - 1)))
        v -= (int64_t)1 << bits;
    return v * 4;
}

/* br, blr (and ret, which is allowed: the functions return). */
static bool indirect_branch(const cs_insn *in)
{
    uint32_t w = insn_word(in) & 0xfffffc1f;
    return w == 0xd61f0000 || w == 0xd63f0000;
}

/* b and bl (imm26), b.cond, cbz/cbnz (imm19), tbz/tbnz (imm14), all counted from themselves. */
static enum branch direct_branch(const cs_insn *in, uintptr_t *target)
{
    uint32_t w = insn_word(in);
    int64_t disp;
    enum branch kind = BRANCH_JUMP;
    if ((w & 0x7c000000) == 0x14000000) {
        disp = a64_disp(w, 0, 26);
        kind = w >> 31 ? BRANCH_CALL : BRANCH_JUMP;
    } else if ((w & 0xff000010) == 0x54000000 || (w & 0x7e000000) == 0x34000000) {
        disp = a64_disp(w, 5, 19);
    } else if ((w & 0x7e000000) == 0x36000000) {
        disp = a64_disp(w, 5, 14);
    } else {
        return BRANCH_NONE;
    }
    *target = (uintptr_t)((int64_t)in->address + disp);
    return kind;
}

/* udf #0 (four zero bytes), which Capstone 4 does not decode: 4 when p holds one. */
static size_t undecoded_trap(const uint8_t *p, size_t left)
{
    static const uint8_t udf0[4] = {0, 0, 0, 0};
    return left >= 4 && memcmp(p, udf0, 4) == 0 ? 4 : 0;
}

/* ldr x16, #8; br x16; and the absolute address after them. */
static bool veneer_target(uintptr_t at, uintptr_t chunk_hi, uintptr_t *target)
{
    static const uint32_t ldr_br[2] = {0x58000050, 0xd61f0200};
    if (at + 16 > chunk_hi || memcmp((const void *)at, ldr_br, 8) != 0)
        return false;
    memcpy(target, (const uint8_t *)at + 8, sizeof *target);
    return true;
}

#endif

size_t check_calls(const struct json_schema *s)
{
    const struct json_compiled *c = s->compiled;
    cr_assert_not_null(c, "the schema is compiled");
    struct expected_call expected[EXPECTED_MAX];
    size_t nexpected = 0;
    /* The array function calls the object function; the grow path, json_buf_reserve. */
    expect_call(expected, &nexpected, FN(c->object));
    expect_call(expected, &nexpected, FN(json_buf_reserve));
    for (size_t i = 0; i < s->nfields; i++) {
        const struct json_field *f = &s->fields[i];
        const struct json_compiled *inner = f->schema ? f->schema->compiled : NULL;
        const void *fn[] = {
            [JT_INT32] = FN(json_put_i32),
            [JT_INT64] = FN(json_put_i64),
            [JT_UINT64] = FN(json_put_u64),
            [JT_DOUBLE] = FN(json_put_double),
            [JT_BOOL] = NULL, /* written inline */
            [JT_STRING] = FN(json_put_string),
            [JT_OBJECT] = inner ? FN(inner->object) : NULL,
            [JT_ARRAY_OBJECT] = inner ? FN(inner->array) : NULL,
            [JT_ARRAY_INT32] = FN(json_put_i32_array),
            [JT_ARRAY_INT64] = FN(json_put_i64_array),
        };
        if (fn[f->type] != NULL)
            expect_call(expected, &nexpected, fn[f->type]);
    }

    uintptr_t code = (uintptr_t)c->code, code_end = code + c->code_size;
    struct code_span span = code_chunk_span(c->chunk);
    uintptr_t chunk_lo = (uintptr_t)span.rx, chunk_hi = chunk_lo + span.size;
    csh cs;
    cs_insn *insn;
    cr_assert_eq(cs_open(CS_ARCH, CS_MODE, &cs), CS_ERR_OK);
    size_t decoded = 0, veneers = 0;
    /* Capstone stops at what it cannot decode: traps it does not know (alignment padding of
     * A64 code is udf #0) are stepped over, anything else ends the walk and fails below. */
    for (;;) {
        const uint8_t *at = (const uint8_t *)c->code + decoded;
        size_t count = cs_disasm(cs, at, c->code_size - decoded, code + decoded, 0, &insn);
        for (size_t i = 0; i < count; i++) {
            const cs_insn *in = &insn[i];
            decoded += in->size;
            cr_assert(!indirect_branch(in), "no indirect branch: %s %s", in->mnemonic, in->op_str);
            uintptr_t target;
            enum branch kind = direct_branch(in, &target);
            if (kind == BRANCH_JUMP)
                cr_assert(target >= code && target < code_end, "jumps stay in the code");
            if (kind != BRANCH_CALL)
                continue;
            if (target >= code_end && target < chunk_hi) {
                cr_assert(veneer_target(target, chunk_hi, &target), "a veneer at %#lx",
                          (unsigned long)target);
                veneers++;
            }
            bool found = false;
            for (size_t k = 0; k < nexpected; k++) {
                if (expected[k].fn == (const void *)target) {
                    expected[k].called = found = true;
                }
            }
            cr_assert(found, "the call at +%#lx goes to %#lx, no function this schema needs",
                      (unsigned long)(in->address - code), (unsigned long)target);
            cr_assert(target < chunk_lo || target >= chunk_hi || target == code ||
                          target == (uintptr_t)c->array,
                      "calls into its own chunk go to its own functions");
        }
        cs_free(insn, count);
        size_t pad = undecoded_trap((const uint8_t *)c->code + decoded, c->code_size - decoded);
        if (pad == 0)
            break;
        decoded += pad;
    }
    cs_close(&cs);
    cr_assert_eq(decoded, c->code_size, "every byte of the code decodes (%zu of %zu)", decoded,
                 c->code_size);
    for (size_t k = 0; k < nexpected; k++)
        cr_assert(expected[k].called, "expected function %zu of %zu (%p) is called", k, nexpected,
                  expected[k].fn);
    return veneers;
}
