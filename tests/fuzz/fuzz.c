/*
 * The libFuzzer target: each input is a sequence of operations on one or two caches, decoded and
 * checked by the model of tests/model/ (model.h says what is checked after every call). Built by
 * `make fuzz` with clang, AddressSanitizer and UndefinedBehaviorSanitizer, the library compiled in
 * with the same instrumentation so that coverage guides the fuzzer through it.
 *
 *   tests/fuzz/fuzz CORPUS_DIR -max_total_time=SECONDS     (README: "Reliability")
 *
 * A crash leaves crash-<sha1> in the current directory: replay it with
 * `MODEL_TRACE=1 tests/fuzz/fuzz crash-<sha1>` (or tests/model_random crash-<sha1>), and once the
 * bug is fixed, keep it in tests/fuzz/regressions/, which `make check` replays.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "model.h"

/* Operations per input: enough to fill a cache and reuse it, few enough to run fast. */
#define FUZZ_MAX_OPS 512

static unsigned long long fuzz_inputs, fuzz_ops, fuzz_calls;

static void fuzz_report(void)
{
    fprintf(stderr, "fuzz: %llu inputs, %llu operations, %llu library calls checked\n", fuzz_inputs,
            fuzz_ops, fuzz_calls);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    atexit(fuzz_report);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct model *m = model_new(NULL);
    struct model_input in = {.data = data, .len = size};
    unsigned n = 0;
    while (n < FUZZ_MAX_OPS && model_step(m, &in))
        n++;
    model_exercise(m);
    fuzz_inputs++;
    fuzz_ops += n;
    fuzz_calls += model_calls(m);
    model_end(m);
    return 0;
}
