/*
 * The jsonjit demo: the TechEmpower "json" and "queries" objects, encoded by the interpreter and
 * by the JIT, with where the code landed, how fast each encoder is, why, and what the cache holds.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <code_cache.h>

#include "json.h"
#include "techempower.h"

/* The direct call the JIT uses for its helpers, and the indirect form it is compared with. */
#if defined(__aarch64__)
#define DIRECT_CALL    "bl"
#define DIRECT_REACH   "bl reach (+-128 MiB)"
#define INDIRECT_CALL  "mov x16 (4 instructions) + blr x16"
#define DIRECT_BYTES   4
#define INDIRECT_BYTES 20
#else
#define DIRECT_CALL    "call rel32"
#define DIRECT_REACH   "rel32 reach (+-2 GiB)"
#define INDIRECT_CALL  "movabs rax + call rax"
#define DIRECT_BYTES   5
#define INDIRECT_BYTES 12
#endif

/* The same rows compiled with helper calls through a register, to measure what the direct call
 * itself is worth. */
static struct json_schema world_indirect_schema = {
    .name = "world*", .size = sizeof(struct world), .nfields = 2, .fields = world_fields};

#define ROWS    20
#define OBJECTS 1000000
#define RUNS    7

/* What is timed. Each run times every variant once, one after the other, so that a change in
 * the machine's load (these machines are shared) affects all of them alike. */
enum variant {
    HELLO_INTERP,
    HELLO_JIT,
    QUERIES_INTERP,
    QUERIES_JIT,
    QUERIES_INDIRECT,
    STRING_HELPER,
    NVARIANTS
};

/* CPU time of this thread, not wall time: on a shared machine the time other processes hold the
 * core does not count (their effect on the caches still does). */
static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nanoseconds per object for OBJECTS objects; each response starts from an empty buffer, as a
 * server's would. */
static double time_variant(enum variant v, const struct world *rows, struct json_buf *out)
{
    struct hello msg = {"Hello, World!"};
    int rc = 0;
    double t0 = now_ns();
    switch (v) {
    case HELLO_INTERP:
    case HELLO_JIT:
        for (int i = 0; i < OBJECTS && rc == 0; i++) {
            out->len = 0;
            rc = v == HELLO_JIT ? json_jit_encode(&hello_schema, &msg, out)
                                : json_interp_encode(&hello_schema, &msg, out);
        }
        break;
    case QUERIES_INTERP:
        for (int i = 0; i < OBJECTS / ROWS && rc == 0; i++) {
            out->len = 0;
            rc = json_interp_encode_array(&world_schema, rows, ROWS, out);
        }
        break;
    case QUERIES_JIT:
    case QUERIES_INDIRECT:
        for (int i = 0; i < OBJECTS / ROWS && rc == 0; i++) {
            out->len = 0;
            rc = json_jit_encode_array(v == QUERIES_JIT ? &world_schema : &world_indirect_schema,
                                       rows, ROWS, out);
        }
        break;
    case STRING_HELPER:
        /* The string writer alone: the part of the "json" object both encoders share. */
        for (int i = 0; i < OBJECTS && rc == 0; i++)
            rc = json_put_string(out, out->data, msg.message) == NULL;
        break;
    case NVARIANTS:
        break;
    }
    if (rc != 0) {
        perror("jsonjit: encode");
        exit(1);
    }
    return (now_ns() - t0) / OBJECTS;
}

/* Fills ns[v] with the median of RUNS interleaved runs of each variant. */
static void measure(bool with_jit, const struct world *rows, struct json_buf *out,
                    double ns[NVARIANTS])
{
    double runs[NVARIANTS][RUNS];
    for (int r = 0; r < RUNS; r++) {
        for (int v = 0; v < NVARIANTS; v++) {
            bool jit_variant = v == HELLO_JIT || v == QUERIES_JIT || v == QUERIES_INDIRECT;
            runs[v][r] = jit_variant && !with_jit ? 0 : time_variant(v, rows, out);
        }
    }
    for (int v = 0; v < NVARIANTS; v++) {
        qsort(runs[v], RUNS, sizeof runs[v][0], compare_double);
        ns[v] = runs[v][RUNS / 2];
    }
}

/* The text as it is; for the terminal, a line break after each array element. */
static void print_json(const char *title, const struct json_buf *out, bool row_per_line)
{
    printf("%s (%zu bytes%s):\n  ", title, out->len, row_per_line ? ", one row per line here" : "");
    for (size_t i = 0; i < out->len; i++) {
        putchar(out->data[i]);
        if (row_per_line && out->data[i] == ',' && i > 0 && out->data[i - 1] == '}')
            printf("\n   ");
    }
    printf("\n");
}

static void print_placement(struct json_jit *jit)
{
    struct code_cache_stats st;
    code_cache_get_stats(json_jit_cache(jit), &st);
    uintptr_t helper = (uintptr_t)json_put_i32;
    uintptr_t code = (uintptr_t)world_schema.compiled->code;
    double mib = (double)(code > helper ? code - helper : helper - code) / (1 << 20);
    printf("helpers:    json_put_i32 at %#lx (in this executable)\n", (unsigned long)helper);
    printf("code cache: %zu KiB at %#lx, placed %s\n", st.reserved >> 10, (unsigned long)st.base,
           json_jit_placement(jit));
    printf("distance:   World's code at %#lx is %.1f MiB %s the helpers:\n            %s\n",
           (unsigned long)code, mib, code > helper ? "above" : "below",
           code_cache_reaches(json_jit_cache(jit), (const void *)helper)
               ? "within " DIRECT_REACH ", every helper call is one " DIRECT_CALL
               : "out of " DIRECT_REACH ", helper calls go through veneers");
}

/* Where the JIT's speed-up comes from, and where it does not, from the figures just measured. */
static void print_analysis(const double ns[NVARIANTS])
{
    double queries = ns[QUERIES_INTERP] / ns[QUERIES_JIT];
    double hello = ns[HELLO_INTERP] / ns[HELLO_JIT];
    double calls = ns[QUERIES_INDIRECT] / ns[QUERIES_JIT];
    printf("\nwhy:\n");
    printf("  queries: the JIT is %.2fx as fast%s. The interpreter loops over the fields,\n"
           "    switches on their type, escapes every key and checks the room left per field;\n"
           "    the compiled code checks once per row, stores the keys as immediates and calls\n"
           "    json_put_i32 for the numbers only.\n",
           queries, queries >= 2 ? "" : " (less than 2x)");
    printf("  json: %.2fx. Of the JIT's %.1f ns per object, json_put_string alone takes %.1f to\n"
           "    scan \"Hello, World!\" for characters to escape, in both encoders: compiling\n"
           "    cannot make that part faster.\n",
           hello, ns[HELLO_JIT], ns[STRING_HELPER]);
    printf("  calls: " DIRECT_CALL " took %.1f ns per row, " INDIRECT_CALL " %.1f (%+.0f%%): ",
           ns[QUERIES_JIT], ns[QUERIES_INDIRECT], (calls - 1) * 100);
    if (calls > 0.9 && calls < 1.1)
        printf("the same,\n    within the +-10%% that separates two runs on this machine.\n");
    else
        printf("more than\n    the +-10%% that separates two runs on this machine; run again to "
               "see if it holds.\n");
    printf("    What near placement surely buys is size: %d bytes per call instead of %d (World's\n"
           "    code: %zu bytes instead of %zu) and direct reach to the program's functions and "
           "data.\n",
           DIRECT_BYTES, INDIRECT_BYTES, world_schema.compiled->code_size,
           world_indirect_schema.compiled->code_size);
}

static void print_sizes_and_stats(struct json_jit *jit)
{
    printf("\ncode size per compiled schema (instructions + constant text, one chunk each):\n");
    const struct json_schema *schemas[] = {&hello_schema, &world_schema, &world_indirect_schema};
    for (size_t i = 0; i < 3; i++) {
        const struct json_compiled *c = schemas[i]->compiled;
        printf("  %-7s %4zu + %3zu bytes at %#lx\n", schemas[i]->name, c->code_size, c->data_size,
               (unsigned long)(uintptr_t)c->code);
    }
    struct code_cache_stats st;
    code_cache_get_stats(json_jit_cache(jit), &st);
    printf(
        "\ncache stats: %zu sealed chunks, %zu KiB committed of %zu KiB reserved, %zu KiB free,\n"
        "             %zu protection changes, %zu bytes of bookkeeping in its jemalloc arena\n",
        st.sealed_chunks, st.committed >> 10, st.reserved >> 10, st.free >> 10,
        st.protection_changes, st.meta_bytes);
}

static bool same_text(const struct json_buf *a, const struct json_buf *b)
{
    return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

int main(void)
{
    struct world rows[ROWS];
    struct hello msg = {"Hello, World!"};
    struct json_buf a, b;
    /* A fixed seed, so that every run prints the same rows; ids and numbers in 1..10000 like
     * the benchmark's World table. */
    uint32_t seed = 12345;
    for (int i = 0; i < ROWS; i++) {
        seed = seed * 1103515245u + 12345u;
        rows[i].id = (int32_t)((seed >> 8) % 10000 + 1);
        seed = seed * 1103515245u + 12345u;
        rows[i].random_number = (int32_t)((seed >> 8) % 10000 + 1);
    }
    if (json_buf_init(&a, 4096) != 0 || json_buf_init(&b, 4096) != 0) {
        perror("jsonjit: json_buf_init");
        return 1;
    }

    struct json_jit *jit = NULL, *indirect = NULL;
    if (!json_jit_supported()) {
        printf("jsonjit: no code generator for this architecture (x86-64 and aarch64 only): "
               "showing the interpreter alone.\n\n");
    } else if ((jit = json_jit_create(NULL)) == NULL && errno == EACCES) {
        printf("jsonjit: this system refuses executable memory (code_cache_create: EACCES;\n"
               "  SELinux execmem, a seccomp filter, MemoryDenyWriteExecute...): showing the\n"
               "  interpreter alone.\n\n");
    } else {
        /* The second JIT shares the first one's cache: the same placement, other call forms. */
        indirect = jit != NULL ? json_jit_create(json_jit_cache(jit)) : NULL;
        if (indirect != NULL)
            json_jit_set_indirect_calls(indirect, true);
        if (indirect == NULL || json_jit_compile(jit, &hello_schema) != 0 ||
            json_jit_compile(jit, &world_schema) != 0 ||
            json_jit_compile(indirect, &world_indirect_schema) != 0) {
            fprintf(stderr, "jsonjit: cannot compile: %s\n", strerror(errno));
            return 1;
        }
        print_placement(jit);
        printf("\n");
    }

    if (json_interp_encode(&hello_schema, &msg, &a) != 0)
        return 1;
    print_json("TechEmpower \"json\"", &a, false);
    if (jit != NULL && (json_jit_encode(&hello_schema, &msg, &b) != 0 || !same_text(&a, &b)))
        return printf("JIT output: DIFFERENT\n"), 1;
    a.len = b.len = 0;
    if (json_interp_encode_array(&world_schema, rows, ROWS, &a) != 0)
        return 1;
    print_json("TechEmpower \"queries\", 20 rows", &a, true);
    if (jit != NULL) {
        bool same = json_jit_encode_array(&world_schema, rows, ROWS, &b) == 0 && same_text(&a, &b);
        b.len = 0;
        same = same && json_jit_encode_array(&world_indirect_schema, rows, ROWS, &b) == 0 &&
               same_text(&a, &b);
        printf("JIT output: %s\n", same ? "byte-identical to the interpreter's" : "DIFFERENT");
        if (!same)
            return 1;
    }

    double ns[NVARIANTS];
    measure(jit != NULL, rows, &b, ns);
    printf("\nns per object (median of %d runs of %d objects each):\n", RUNS, OBJECTS);
    printf("  %-26s %8s %8s %9s\n", "", "interp", jit ? "JIT" : "", jit ? "speed-up" : "");
    if (jit == NULL) {
        printf("  %-26s %8.1f\n  %-26s %8.1f\n", "json (1 string field)", ns[HELLO_INTERP],
               "queries (World rows)", ns[QUERIES_INTERP]);
    } else {
        printf("  %-26s %8.1f %8.1f %8.2fx\n", "json (1 string field)", ns[HELLO_INTERP],
               ns[HELLO_JIT], ns[HELLO_INTERP] / ns[HELLO_JIT]);
        printf("  %-26s %8.1f %8.1f %8.2fx\n", "queries (World rows)", ns[QUERIES_INTERP],
               ns[QUERIES_JIT], ns[QUERIES_INTERP] / ns[QUERIES_JIT]);
        printf("  %-26s %8s %8.1f %9s\n", "queries, indirect calls", "", ns[QUERIES_INDIRECT], "");
        print_analysis(ns);
        print_sizes_and_stats(jit);
        json_jit_destroy(indirect);
        json_jit_destroy(jit);
    }
    json_buf_release(&a);
    json_buf_release(&b);
    return 0;
}
