/*
 * examples/jsonjit: the JIT's output is byte-identical to the interpreter's, valid JSON (jansson)
 * holding exactly the struct's values, for the TechEmpower objects and thousands of generated
 * structs; compiled code calls its helpers with call rel32 or bl (Capstone), through veneers when
 * they are out of reach; a full buffer and bad descriptors fail cleanly.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <valgrind/valgrind.h>

#include <code_cache.h>

#include "json.h"
#include "techempower.h"
#include "jsonjit_check.h"

#define FN(f) ((const void *)(uintptr_t)(f))

/* Loops are shortened under valgrind, where JIT code and jansson run ~50 times slower. */
static size_t scaled(size_t native, size_t under_valgrind)
{
    return RUNNING_ON_VALGRIND ? under_valgrind : native;
}

/* ---- A struct with every type, a nested object and a tree ---- */

struct inner {
    int32_t a;
    const char *s;
};

static const struct json_field inner_fields[] = {
    {.name = "a", .offset = offsetof(struct inner, a), .type = JT_INT32},
    {.name = "s", .offset = offsetof(struct inner, s), .type = JT_STRING},
};

static struct json_schema inner_schema = {
    .name = "inner", .size = sizeof(struct inner), .nfields = 2, .fields = inner_fields};

struct node {
    int64_t value;
    struct node *kids;
    size_t nkids;
};

/* A tentative definition, so that the schema can list itself. */
static struct json_schema node_schema;

static const struct json_field node_fields[] = {
    {.name = "value", .offset = offsetof(struct node, value), .type = JT_INT64},
    {.name = "kids",
     .offset = offsetof(struct node, kids),
     .type = JT_ARRAY_OBJECT,
     .schema = &node_schema,
     .count_offset = offsetof(struct node, nkids)},
};

static struct json_schema node_schema = {
    .name = "node", .size = sizeof(struct node), .nfields = 2, .fields = node_fields};

struct all {
    int32_t i32;
    int64_t i64;
    uint64_t u64;
    double d;
    bool yes, no;
    const char *s, *null_s;
    struct inner obj;
    struct inner *arr;
    size_t narr;
    int32_t *ints;
    size_t nints;
    int64_t *longs;
    size_t nlongs;
    struct node tree;
};

#define F(n, member, ...)                                                                          \
    {                                                                                              \
        .name = n, .offset = offsetof(struct all, member), __VA_ARGS__                             \
    }

static struct json_field all_fields[] = {
    F("i32", i32, .type = JT_INT32),
    F("i64", i64, .type = JT_INT64),
    F("u64", u64, .type = JT_UINT64),
    F("d", d, .type = JT_DOUBLE),
    F("yes", yes, .type = JT_BOOL),
    F("no", no, .type = JT_BOOL),
    F("s", s, .type = JT_STRING),
    F("null \"s\"", null_s, .type = JT_STRING),
    F("obj", obj, .type = JT_OBJECT, .schema = &inner_schema),
    F("arr", arr, .type = JT_ARRAY_OBJECT, .schema = &inner_schema,
      .count_offset = offsetof(struct all, narr)),
    F("ints", ints, .type = JT_ARRAY_INT32, .count_offset = offsetof(struct all, nints)),
    F("longs", longs, .type = JT_ARRAY_INT64, .count_offset = offsetof(struct all, nlongs)),
    F("tree", tree, .type = JT_OBJECT, .schema = &node_schema),
};

static struct json_schema all_schema = {
    .name = "all", .size = sizeof(struct all), .nfields = 13, .fields = all_fields};

static struct inner arr_items[] = {{1, "one"}, {-2, "two\ttabs"}};
static int32_t ints[] = {INT32_MIN, -1, 0, INT32_MAX};
static int64_t longs[] = {INT64_MIN, INT64_MAX};
static struct node leaves[] = {{3, NULL, 0}, {4, NULL, 0}};
static struct node branch[] = {{2, leaves, 2}};

static const struct all all_value = {
    .i32 = INT32_MIN,
    .i64 = INT64_MIN,
    .u64 = UINT64_MAX,
    .d = 4.9406564584124654e-324,
    .yes = true,
    .s = "quote \" backslash \\ newline \n bell \a caf\xc3\xa9",
    .obj = {42, ""},
    .arr = arr_items,
    .narr = 2,
    .ints = ints,
    .nints = 4,
    .longs = longs,
    .nlongs = 2,
    .tree = {1, branch, 1},
};

static struct json_jit *jit;

static void setup(void)
{
    jit = json_jit_create(NULL);
    cr_assert_not_null(jit, "json_jit_create: %s", strerror(errno));
}

static void teardown(void)
{
    json_jit_destroy(jit);
}

static void compile(struct json_schema *s)
{
    cr_assert_eq(json_jit_compile(jit, s), 0, "json_jit_compile(%s): %s", s->name, strerror(errno));
}

/* Encodes with the JIT into a fresh buffer and compares with text. */
static void expect_text(const struct json_schema *s, const void *obj, const char *text)
{
    struct json_buf a, b;
    cr_assert_eq(json_buf_init(&a, 1), 0);
    cr_assert_eq(json_buf_init(&b, 1), 0);
    cr_assert_eq(json_interp_encode(s, obj, &a), 0);
    cr_assert_eq(json_jit_encode(s, obj, &b), 0);
    cr_assert(a.len == strlen(text) && memcmp(a.data, text, a.len) == 0,
              "interpreter: %.*s\nexpected:    %s", (int)a.len, a.data, text);
    cr_assert(b.len == strlen(text) && memcmp(b.data, text, b.len) == 0, "JIT: %.*s\nexpected: %s",
              (int)b.len, b.data, text);
    json_buf_release(&a);
    json_buf_release(&b);
}

TestSuite(jsonjit, .init = setup, .fini = teardown);

Test(jsonjit, techempower_json_is_hello_world)
{
    compile(&hello_schema);
    struct hello msg = {"Hello, World!"};
    expect_text(&hello_schema, &msg, "{\"message\":\"Hello, World!\"}");
    check_object(&hello_schema, &msg, 1);
    check_calls(&hello_schema);
}

Test(jsonjit, techempower_queries_rows_match_printf_and_parse_back)
{
    compile(&world_schema);
    struct world rows[20];
    struct rng r = {0x9e3779b97f4a7c15ull};
    char expected[2048] = "[";
    for (int i = 0; i < 20; i++) {
        rows[i].id = (int32_t)rng_below(&r, 10000) + 1;
        rows[i].random_number = (int32_t)rng_below(&r, 10000) + 1;
        snprintf(expected + strlen(expected), sizeof expected - strlen(expected),
                 "%s{\"id\":%" PRId32 ",\"randomNumber\":%" PRId32 "}", i ? "," : "", rows[i].id,
                 rows[i].random_number);
    }
    strcat(expected, "]");
    struct json_buf b;
    cr_assert_eq(json_buf_init(&b, 1), 0);
    cr_assert_eq(json_jit_encode_array(&world_schema, rows, 20, &b), 0);
    cr_assert(b.len == strlen(expected) && memcmp(b.data, expected, b.len) == 0, "%.*s", (int)b.len,
              b.data);
    json_buf_release(&b);
    for (size_t cap = 1; cap < 64; cap += 7)
        check_array(&world_schema, rows, 20, cap);
    check_array(&world_schema, rows, 0, 1);
    check_calls(&world_schema);
}

Test(jsonjit, every_type_nested_objects_and_a_tree_read_back)
{
    compile(&all_schema);
    expect_text(&all_schema, &all_value,
                "{\"i32\":-2147483648,\"i64\":-9223372036854775808,"
                "\"u64\":18446744073709551615,\"d\":4.94065645841247e-324,\"yes\":true,"
                "\"no\":false,\"s\":\"quote \\\" backslash \\\\ newline \\n bell \\u0007 "
                "caf\xc3\xa9\",\"null \\\"s\\\"\":null,\"obj\":{\"a\":42,\"s\":\"\"},"
                "\"arr\":[{\"a\":1,\"s\":\"one\"},{\"a\":-2,\"s\":\"two\\ttabs\"}],"
                "\"ints\":[-2147483648,-1,0,2147483647],"
                "\"longs\":[-9223372036854775808,9223372036854775807],"
                "\"tree\":{\"value\":1,\"kids\":[{\"value\":2,\"kids\":[{\"value\":3,\"kids\":[]},"
                "{\"value\":4,\"kids\":[]}]}]}}");
    for (size_t cap = 1; cap < 600; cap += 37)
        check_object(&all_schema, &all_value, cap);
}

Test(jsonjit, integer_limits_are_exact)
{
    compile(&all_schema);
    struct all v = {.i32 = INT32_MAX, .i64 = INT64_MAX, .u64 = 0};
    struct json_buf b;
    cr_assert_eq(json_buf_init(&b, 1), 0);
    cr_assert_eq(json_jit_encode(&all_schema, &v, &b), 0);
    const char *prefix = "{\"i32\":2147483647,\"i64\":9223372036854775807,\"u64\":0,\"d\":0,";
    cr_assert(b.len > strlen(prefix) && memcmp(b.data, prefix, strlen(prefix)) == 0, "%.*s",
              (int)b.len, b.data);
    json_buf_release(&b);
    check_object(&all_schema, &v, 1);
}

/* The integer writers against printf, over the edges and random values of every width. */
Test(jsonjit, integer_writers_match_printf)
{
    struct rng r = {12345};
    char got[32], want[32];
    for (size_t i = 0; i < scaled(200000, 5000); i++) {
        uint64_t u = rng_next(&r) >> rng_below(&r, 64);
        if (i < 4)
            u = (uint64_t[]){0, UINT64_MAX, (uint64_t)INT64_MIN, (uint64_t)INT32_MIN}[i];
        int64_t s64 = (int64_t)u;
        int32_t s32 = (int32_t)u;
        *json_put_u64(got, u) = '\0';
        snprintf(want, sizeof want, "%" PRIu64, u);
        cr_assert_str_eq(got, want);
        *json_put_i64(got, s64) = '\0';
        snprintf(want, sizeof want, "%" PRId64, s64);
        cr_assert_str_eq(got, want);
        *json_put_i32(got, s32) = '\0';
        snprintf(want, sizeof want, "%" PRId32, s32);
        cr_assert_str_eq(got, want);
    }
}

/* The escaping of RFC 8259, written independently of the encoders: {"message":"<in>"}. */
static void hello_text(const char *in, char *out)
{
    static const char shortcuts[][2] = {{'"', '"'},  {'\\', '\\'}, {'\b', 'b'}, {'\f', 'f'},
                                        {'\n', 'n'}, {'\r', 'r'},  {'\t', 't'}};
    strcpy(out, "{\"message\":\"");
    for (const unsigned char *c = (const unsigned char *)in; *c != 0; c++) {
        char *e = out + strlen(out);
        char shortcut = 0;
        for (size_t k = 0; k < 7; k++)
            if ((unsigned char)shortcuts[k][0] == *c)
                shortcut = shortcuts[k][1];
        if (shortcut != 0)
            sprintf(e, "\\%c", shortcut);
        else if (*c < 0x20)
            sprintf(e, "\\u%04x", *c);
        else
            sprintf(e, "%c", *c);
    }
    strcat(out, "\"}");
}

Test(jsonjit, every_escape_follows_rfc_8259)
{
    compile(&hello_schema);
    /* Every byte from 1 to 0x7f, then UTF-8 that must pass through unchanged. */
    char in[160], expected[1024];
    size_t n = 0;
    for (int c = 1; c < 0x80; c++)
        in[n++] = (char)c;
    strcpy(in + n, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xe2\x80\xa8");
    hello_text(in, expected);
    cr_assert(strstr(expected, "\\u001f\x20!\\\"#") != NULL, "the reference escapes: %s", expected);
    struct hello msg = {in};
    expect_text(&hello_schema, &msg, expected);
    check_object(&hello_schema, &msg, 1);
    struct hello null_msg = {NULL};
    expect_text(&hello_schema, &null_msg, "{\"message\":null}");
}

/* json_put_string tests 8 bytes at a time: a byte to escape must be found at every position of
 * a word, next to the bytes closest to the ones that need escaping. */
Test(jsonjit, escapes_are_found_at_every_position_of_a_word)
{
    compile(&hello_schema);
    static const char specials[] = {'\x01', '\x1f', '"', '\\', '\n'};
    static const char neighbours[] = {' ', '!', '#', '[', ']', '\x7f', '\x80', '\xff'};
    char in[40], expected[256];
    for (size_t s = 0; s < sizeof specials; s++) {
        for (size_t len = 1; len < 26; len++) {
            for (size_t at = 0; at < len; at++) {
                for (size_t i = 0; i < len; i++)
                    in[i] = neighbours[(i + len) % sizeof neighbours];
                in[at] = specials[s];
                in[len] = '\0';
                hello_text(in, expected);
                struct hello msg = {in};
                expect_text(&hello_schema, &msg, expected);
            }
        }
    }
}

struct number {
    double d;
};

static const struct json_field number_fields[] = {
    {.name = "d", .offset = 0, .type = JT_DOUBLE},
};

static struct json_schema number_schema = {
    .name = "number", .size = sizeof(struct number), .nfields = 1, .fields = number_fields};

Test(jsonjit, doubles_round_trip_and_non_finite_ones_are_null)
{
    compile(&number_schema);
    static const struct {
        double d;
        const char *text;
    } cases[] = {
        {0.1, "0.1"},
        {1.0, "1"},
        {-0.0, "-0"},
        {1.0 / 3, "0.3333333333333333"},
        {4.9406564584124654e-324, "4.94065645841247e-324"},
        {2.2250738585072009e-308, "2.225073858507201e-308"},
        {DBL_MAX, "1.7976931348623157e+308"},
        {-1e300, "-1e+300"},
        {9007199254740993.0, "9007199254740992"},
        {(double)NAN, "null"},
        {-(double)NAN, "null"},
        {(double)INFINITY, "null"},
        {-(double)INFINITY, "null"},
    };
    char expected[64];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct number v = {cases[i].d};
        snprintf(expected, sizeof expected, "{\"d\":%s}", cases[i].text);
        expect_text(&number_schema, &v, expected);
        check_object(&number_schema, &v, 1);
    }
    /* Random bit patterns: every finite one reads back exactly (check_object). */
    struct rng r = {777};
    for (size_t i = 0; i < scaled(20000, 500); i++) {
        uint64_t bits = rng_next(&r);
        struct number v;
        memcpy(&v.d, &bits, sizeof v.d);
        check_object(&number_schema, &v, 1 + i % 40);
    }
}

Test(jsonjit, generated_structs_match_the_interpreter_byte_for_byte)
{
    /* One cache for all the JITs of this test, which free their chunks as they go. 16 MiB, which
     * is plenty: on aarch64 the window of a cache that must reach the whole test program is the
     * +-128 MiB of bl around it, and another cache (the example's, 4 MiB) is already there. With
     * 64 MiB, that one at a uniformly random spot left no gap 3 runs in 80 under qemu-aarch64;
     * a narrow window now places caches near the ends of gaps (tests/place.c,
     * a_narrow_window_keeps_room_for_a_larger_cache). */
    struct code_cache_options opts = {
        .size = 16 << 20, .near = FN(json_put_i32), .flags = CODE_CACHE_NEAR_OBJECT};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "code_cache_create: %s", strerror(errno));
    struct rng r = {0x2545f4914f6cdd1dull};
    size_t nschemas = scaled(600, 150), per_schema = scaled(8, 6), structs = 0, calls_checked = 0;
    for (size_t k = 0; k < nschemas; k++) {
        struct arena a = {0};
        struct json_jit *local = json_jit_create(cache);
        cr_assert_not_null(local);
        struct json_schema *s = gen_schema(&a, &r);
        cr_assert_eq(json_jit_compile(local, s), 0, "schema %zu: %s", k, strerror(errno));
        struct json_schema *all[256];
        size_t n = collect_schemas(s, all, 0, 256);
        for (size_t i = 0; i < n; i++) {
            cr_assert_eq(check_calls(all[i]), 0, "no veneer: the cache is near the helpers");
            calls_checked++;
        }
        void *objs = arena_alloc(&a, per_schema * (s->size ? s->size : 1));
        for (size_t i = 0; i < per_schema; i++) {
            char *obj = gen_object(&a, &r, s);
            memcpy((char *)objs + i * s->size, obj, s->size);
            check_object(s, obj, 1 + rng_below(&r, 100));
            structs++;
        }
        check_array(s, objs, per_schema, 1 + rng_below(&r, 100));
        json_jit_destroy(local);
        cr_assert_null(s->compiled, "destroying the JIT forgets its code");
        arena_release(&a);
    }
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.sealed_chunks + st.open_chunks, 0, "every chunk was freed");
    code_cache_destroy(cache);
    cr_log_info("%zu generated structs in %zu schemas, %zu compiled schemas disassembled", structs,
                nschemas, calls_checked);
}

Test(jsonjit, helper_calls_are_direct_call_rel32_near_the_helpers)
{
    compile(&hello_schema);
    compile(&world_schema);
    compile(&all_schema);
    struct json_schema *schemas[] = {&hello_schema, &world_schema, &all_schema, &inner_schema,
                                     &node_schema};
    for (size_t i = 0; i < 5; i++) {
        cr_assert(code_cache_reaches(json_jit_cache(jit), schemas[i]->compiled->code));
        cr_assert_eq(check_calls(schemas[i]), 0, "%s: no veneer near the helpers",
                     schemas[i]->name);
    }
    cr_assert(code_cache_reaches(json_jit_cache(jit), FN(json_put_i32)));
    cr_assert(code_cache_reaches(json_jit_cache(jit), FN(json_buf_reserve)));
}

Test(jsonjit, helpers_out_of_reach_are_called_through_veneers)
{
    /* A cache that cannot reach the helpers: placed near an address 8 GiB above them. */
    struct code_cache_options opts = {.size = 1 << 20,
                                      .near = (const char *)FN(json_put_i32) + ((size_t)8 << 30)};
    struct code_cache *far = code_cache_create(&opts);
    cr_assert_not_null(far, "code_cache_create: %s", strerror(errno));
    cr_assert_not(code_cache_reaches(far, FN(json_put_i32)));
    struct json_jit *far_jit = json_jit_create(far);
    cr_assert_not_null(far_jit);
    cr_assert_eq(json_jit_compile(far_jit, &all_schema), 0, "%s", strerror(errno));
    cr_assert_gt(check_calls(&all_schema), 0, "helpers are called through veneers");
    cr_assert_gt(check_calls(&node_schema), 0);
    for (size_t cap = 1; cap < 600; cap += 61)
        check_object(&all_schema, &all_value, cap);
    json_jit_destroy(far_jit);
    code_cache_destroy(far);
}

/* With a limit, at every size: success with the whole text, or ENOBUFS and nothing changed. */
Test(jsonjit, a_full_buffer_fails_cleanly_at_every_size)
{
    compile(&all_schema);
    struct json_buf ref;
    cr_assert_eq(json_buf_init(&ref, 1), 0);
    cr_assert_eq(json_interp_encode(&all_schema, &all_value, &ref), 0);
    int (*encoders[2])(const struct json_schema *, const void *,
                       struct json_buf *) = {json_interp_encode, json_jit_encode};
    for (int e = 0; e < 2; e++) {
        for (size_t limit = 1; limit <= ref.len + 64; limit++) {
            struct json_buf b;
            cr_assert_eq(json_buf_init(&b, 1), 0);
            b.data[0] = 'P';
            b.len = 1;
            b.limit = limit;
            errno = 0;
            int rc = encoders[e](&all_schema, &all_value, &b);
            if (rc == 0) {
                cr_assert(b.len == 1 + ref.len && memcmp(b.data + 1, ref.data, ref.len) == 0);
                cr_assert_leq(b.cap, limit);
            } else {
                cr_assert_eq(rc, -1);
                cr_assert_eq(errno, ENOBUFS, "encoder %d, limit %zu: %s", e, limit,
                             strerror(errno));
                cr_assert(b.len == 1 && b.data[0] == 'P', "nothing written on failure");
                cr_assert_lt(limit, 1 + ref.len + 64, "enough room always succeeds");
            }
            cr_assert(rc != 0 || limit > ref.len, "the text does not fit in %zu bytes", limit);
            json_buf_release(&b);
        }
    }
    json_buf_release(&ref);
}

Test(jsonjit, one_sealed_chunk_per_schema_and_destroy_forgets_them)
{
    compile(&all_schema);
    compile(&all_schema); /* already compiled: nothing new */
    struct code_cache_stats st;
    code_cache_get_stats(json_jit_cache(jit), &st);
    cr_assert_eq(st.sealed_chunks, 3, "all, inner and node: one chunk each");
    cr_assert_eq(st.open_chunks, 0);
    cr_assert_not_null(inner_schema.compiled);
    json_jit_destroy(jit);
    cr_assert_null(all_schema.compiled);
    cr_assert_null(inner_schema.compiled);
    cr_assert_null(node_schema.compiled);
    struct json_buf b;
    cr_assert_eq(json_buf_init(&b, 1), 0);
    errno = 0;
    cr_assert_eq(json_jit_encode(&all_schema, &all_value, &b), -1);
    cr_assert_eq(errno, EINVAL, "an uncompiled schema cannot be run");
    json_buf_release(&b);
    jit = json_jit_create(NULL);
    cr_assert_not_null(jit);
}

/* Two schemas containing each other: a cycle the JIT cannot compile (only self-reference). */
static struct json_schema cycle_b;
static const struct json_field cycle_a_fields[] = {
    {.name = "b", .offset = 0, .type = JT_OBJECT, .schema = &cycle_b},
};
static struct json_schema cycle_a = {
    .name = "a", .size = 8, .nfields = 1, .fields = cycle_a_fields};
static const struct json_field cycle_b_fields[] = {
    {.name = "a", .offset = 0, .type = JT_ARRAY_OBJECT, .schema = &cycle_a, .count_offset = 8},
};
static struct json_schema cycle_b = {
    .name = "b", .size = 16, .nfields = 1, .fields = cycle_b_fields};

Test(jsonjit, bad_descriptors_are_rejected_with_einval)
{
    errno = 0;
    cr_assert_eq(json_jit_compile(jit, &cycle_a), -1);
    cr_assert_eq(errno, EINVAL);
    cr_assert_null(cycle_a.compiled);
    cr_assert_null(cycle_b.compiled);

    struct json_field bad[] = {{.name = NULL, .type = JT_INT32},
                               {.name = "t", .type = (enum json_field_type)0},
                               {.name = "o", .type = JT_OBJECT, .schema = NULL},
                               {.name = "x", .type = JT_INT32, .offset = (size_t)1 << 40}};
    for (size_t i = 0; i < 4; i++) {
        struct json_schema s = {.name = "bad", .size = 8, .nfields = 1, .fields = &bad[i]};
        errno = 0;
        cr_assert_eq(json_jit_compile(jit, &s), -1, "bad field %zu", i);
        cr_assert_eq(errno, EINVAL);
        cr_assert_null(s.compiled);
    }
    struct code_cache_stats st;
    code_cache_get_stats(json_jit_cache(jit), &st);
    cr_assert_eq(st.sealed_chunks + st.open_chunks, 0, "nothing was left behind");
    cr_assert_eq(json_jit_compile(NULL, &hello_schema), -1);
    cr_assert_eq(errno, EINVAL);
}

/* The demo's comparison mode: the same bytes with helper calls through a register, and code that
 * is bigger by the 7 bytes each call site gains. */
Test(jsonjit, indirect_calls_write_the_same_bytes)
{
    compile(&world_schema);
    struct json_jit *indirect = json_jit_create(json_jit_cache(jit));
    cr_assert_not_null(indirect);
    json_jit_set_indirect_calls(indirect, true);
    static struct json_schema world_copy = {
        .name = "world*", .size = sizeof(struct world), .nfields = 2, .fields = world_fields};
    cr_assert_eq(json_jit_compile(indirect, &world_copy), 0);
    struct world rows[3] = {{1, INT32_MIN}, {INT32_MAX, 0}, {-1, 10000}};
    check_array(&world_copy, rows, 3, 1);
    struct json_buf a, b;
    cr_assert_eq(json_buf_init(&a, 1), 0);
    cr_assert_eq(json_buf_init(&b, 1), 0);
    cr_assert_eq(json_jit_encode_array(&world_schema, rows, 3, &a), 0);
    cr_assert_eq(json_jit_encode_array(&world_copy, rows, 3, &b), 0);
    cr_assert(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
    /* Five call sites (json_put_i32 twice, json_buf_reserve for each of the three capacity
     * checks) gain 7 bytes each (movabs + call rax for call rel32; on aarch64 16: movz, three
     * movk and blr for bl); the padding between the two functions may absorb up to 15. */
#if defined(__aarch64__)
    const size_t gain = 16;
#else
    const size_t gain = 7;
#endif
    size_t direct = world_schema.compiled->code_size, far = world_copy.compiled->code_size;
    cr_assert_geq(far, direct + 5 * gain - 15, "%zu bytes calling through a register, %zu direct",
                  far, direct);
    json_buf_release(&a);
    json_buf_release(&b);
    json_jit_destroy(indirect);
}
