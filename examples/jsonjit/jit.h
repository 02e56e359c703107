/*
 * What the JIT's two halves share: jit.c (the JIT object, compile order, running the code) and
 * jit_<arch>.c (the code generator of one instruction set).
 */
#ifndef JSONJIT_JIT_H
#define JSONJIT_JIT_H

#include <stdbool.h>
#include <stdint.h>

#include "json.h"

/* Function pointers and data pointers convert through an integer: the code is data to us while
 * we write it, a function once it runs. */
#define FN_ADDR(fn) ((const void *)(uintptr_t)(fn))

struct json_jit {
    struct code_cache *cache;
    bool owns_cache;
    bool indirect_calls;
    struct json_compiled *compiled; /* every schema compiled by this JIT */
    char placement[200];
};

/* Compiles s into one sealed chunk of jit's cache, its nested schemas being compiled already
 * (s itself excepted: a schema may list itself). Links the result into jit->compiled and sets
 * s->compiled. Returns 0, or -1 and errno (ENOMEM, the cache's errno, ENOSYS without a code
 * generator). */
int jit_compile_schema(struct json_jit *jit, struct json_schema *s);

#endif /* JSONJIT_JIT_H */
