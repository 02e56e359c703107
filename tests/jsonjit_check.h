/*
 * What tests/jsonjit.c checks with: random descriptors and structs, the comparison of the two
 * encoders' output with each other and (through jansson) with the struct's values, and the
 * Capstone check of the helper calls in compiled code.
 */
#ifndef JSONJIT_CHECK_H
#define JSONJIT_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"

/* Every allocation of a generated schema or struct, freed at once. */
struct arena {
    void **blocks;
    size_t n, cap;
};

void *arena_alloc(struct arena *a, size_t size); /* zeroed; the test fails if out of memory */
void arena_release(struct arena *a);

/* xorshift64*: reproducible from its seed, which failure messages print. */
struct rng {
    uint64_t s;
};

uint64_t rng_next(struct rng *r);
size_t rng_below(struct rng *r, size_t n);

/* A random descriptor: up to 8 fields of every type, keys that need escaping, nested schemas up
 * to 3 levels, sometimes a schema listing itself (a tree). */
struct json_schema *gen_schema(struct arena *a, struct rng *r);
/* A random struct of that schema: integer limits, every escape, NULL strings, empty arrays,
 * denormals, NaN and infinities. */
void *gen_object(struct arena *a, struct rng *r, const struct json_schema *s);

/* Collects into out[n..max) the schemas reachable from s that are not there yet, each once;
 * returns the new count. */
size_t collect_schemas(struct json_schema *s, struct json_schema **out, size_t n, size_t max);

/* Encodes obj with both encoders (the JIT into a buffer starting at jit_cap bytes, so that its
 * grow path runs), asserts byte-identical output, parses it with jansson and compares every
 * field with the struct's value. */
void check_object(const struct json_schema *s, const void *obj, size_t jit_cap);
/* The same for an array of n structs. */
void check_array(const struct json_schema *s, const void *objs, size_t n, size_t jit_cap);

/* Disassembles the compiled code of s with Capstone and asserts that every call is the direct one
 * (x86-64 E8 rel32, A64 bl) to one of the functions this schema needs (a helper, a nested schema's
 * code, its own object function), directly or through a veneer in its chunk, that each of those is
 * called, and that no branch is indirect. Returns the number of calls that went through a veneer.
 */
size_t check_calls(const struct json_schema *s);

#endif
