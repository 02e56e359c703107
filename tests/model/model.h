/*
 * A reference model of libcodecache's contract (include/code_cache.h), checked after every call.
 *
 * The model decodes a stream of bytes into calls on up to two caches (create with random options
 * and either backend, alloc, functions bumped or emitted through reserve/commit, real x86-64 code
 * written and run, seal, patch, call targets and veneers, find, free, reset, destroy, misuse with
 * live and stale handles), predicts each result from what it knows, and after every call checks
 * the whole state against the kernel's view (/proc/self/maps) and the library's statistics:
 *
 *   - no two live spans overlap; every live span lies inside its cache and within reach of the
 *     cache's target; the cache as a whole reaches it (code_cache_reaches agrees);
 *   - every veneer is reachable from every byte of its chunk and jumps to its target;
 *   - code_cache_find agrees with the model for live, freed and foreign addresses, through both
 *     views of a dual-mapped cache;
 *   - mprotect backend: OPEN chunks rw-, SEALED r-x, every other page --- or rw- (committed ahead
 *     or ready, zero-filled); dual: the RX view r-x where committed and --- elsewhere, never
 *     writable, each page the shared file at its own offset; the RW view one rw- view of the same
 *     file (r-- where CODE_CACHE_DUAL_HARDEN says so), never executable, guard page on each side;
 *     nothing in the process is ever writable and executable at once (outside valgrind, which
 *     keeps rwx mappings of its own);
 *   - every byte of every chunk is what the model expects: fresh memory is zero (mprotect) or
 *     traps (dual), alignment padding and whatever no function or veneer claimed becomes traps at
 *     seal, and sealed code still returns its value when called;
 *   - the statistics agree with the model: in_use, open and sealed counts, chunks_allocated,
 *     never_used, free, free_spans, committed = in_use + committed_ahead + free_ready, and the
 *     bytes the map shows accessible = committed + retired, split exactly between live chunks,
 *     ready spans below the bump pointer and the step committed ahead of it;
 *   - a destroyed cache leaves nothing mapped; at the end no descriptor and no jemalloc byte is
 *     left behind.
 *
 * Failure: the message and the last calls go to standard error and the process aborts (libFuzzer
 * keeps the input that did it). MODEL_TRACE=1 in the environment prints every call.
 *
 * Drivers: tests/fuzz/fuzz.c (libFuzzer), tests/model_random.c (a PRNG, in make check), and the
 * fault sweep, which replays fixed scenarios with a system call made to fail (model.failures).
 */
#ifndef CODE_CACHE_TEST_MODEL_H
#define CODE_CACHE_TEST_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Where the operations come from: the bytes of an input (libFuzzer, a corpus file, a fixed
 * scenario), or, when endless, a PRNG. */
struct model_input {
    const uint8_t *data;
    size_t len, pos;
    bool endless;
    uint64_t rng;
};

/* The operations (first byte of each; the next bytes are its arguments, see model.c). */
enum model_op {
    MOP_CREATE,      /* slot, size, near, reach, flags */
    MOP_DESTROY,     /* slot */
    MOP_RESET,       /* slot */
    MOP_ALLOC,       /* slot, size */
    MOP_FN_RETURN,   /* chunk, align, value: mov eax, imm32; ret */
    MOP_FN_CALL,     /* chunk, target, arg: call rel32 (or through a veneer) */
    MOP_EMIT,        /* chunk, align, length, garbage, veneer during: reserve, write, commit */
    MOP_RESERVE,     /* chunk, align: a reservation left outstanding */
    MOP_COMMIT,      /* chunk, used */
    MOP_CALL_TARGET, /* chunk, target */
    MOP_SEAL,        /* chunk */
    MOP_RUN,         /* chunk: call every function of a sealed chunk */
    MOP_PATCH,       /* chunk, function, kind, value */
    MOP_FIND,        /* slot, address kind, offset */
    MOP_FREE,        /* chunk */
    MOP_STALE,       /* stale handle, what: calls on a freed or reset chunk */
    MOP_MISUSE,      /* slot, what: NULL and bad arguments */
    MOP_NAME,        /* chunk, function: code_chunk_name, once the library has it */
    /* slot, count, seed: a method JIT's burst, 64 - 2,104 functions of up to 2 KiB made, run and
     * freed one at a time (thread caches). Only as a direct byte (MODEL_OP): its weight is 0, so
     * that random bytes decode as they did before it existed (the corpus, the regressions). */
    MOP_METHODS,
    MOP_COUNT
};

/* A byte at or above MODEL_OP_DIRECT selects the operation directly (fixed scenarios); below it,
 * operations come up with the weights of model.c (random bytes). */
#define MODEL_OP_DIRECT 0xe0
#define MODEL_OP(op)    (MODEL_OP_DIRECT + (op))

struct model_config {
    /* Calls that failed because of an injected system call failure so far (the fault sweep's
     * counter), or NULL. A call during which it moves may fail with fault_errno, or any errno
     * documented for it, and the model then learns the outcome from the library instead of
     * predicting it. */
    unsigned (*failures)(void);
    int fault_errno;
    /* A second errno a failing call may report while failures move (0: none): a call that some
     * other system call, failing all the time, made take a fallback that failed in turn reports
     * the first failure's reason. */
    int also_errno;
    /* munmap is made to fail: what the library could not unmap (a trial mapping of its file, a
     * reservation it gave up) stays mapped. The model unmaps it instead of failing. */
    bool munmap_faults;
    /* Fewer checks of memory content (valgrind: the full ones cost milliseconds each). */
    bool light;
};

struct model;

struct model *model_new(const struct model_config *config);
/* Decodes and runs one operation, then checks everything. False when the input is used up. */
bool model_step(struct model *m, struct model_input *in);
/* Every live cache of the model: each chunk's code runs, one more chunk can be allocated,
 * written, sealed, run and freed (after a fault: the cache still works). */
void model_exercise(struct model *m);
/* Destroys every cache, checks that nothing is left mapped, no descriptor open and no jemalloc
 * byte allocated beyond what there was at model_new, and frees the model. */
void model_end(struct model *m);

/* Library calls made so far (for the counts the drivers print). */
uint64_t model_calls(const struct model *m);
/* Live caches (0, 1 or 2). */
unsigned model_caches(const struct model *m);

/* What the thread caches of the model's caches did, as the model predicted it: frees kept,
 * chunks handed out again, chunks given back to the index (past 2 MiB kept, or 1 MiB past what
 * a flush the quarantine stopped left; when an allocation found no room; at a reset). */
struct model_tcache_counts {
    uint64_t kept, handed_out, given_back_full, given_back_no_room, given_back_reset;
};
void model_tcache_counts(const struct model *m, struct model_tcache_counts *out);

#endif
