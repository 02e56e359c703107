/*
 * bench/call: what being within rel32 reach buys at run time, measured rather than assumed.
 *
 *   - A JIT loop calling a C helper: call rel32 (5 bytes, what the cache's placement makes
 *     possible) against movabs rax, imm64; call rax (12 bytes, what a JIT emits when it does not
 *     know where its code lies).
 *   - A JIT loop loading a runtime global: mov rax, [rip + disp32] (7 bytes) against
 *     mov rax, [moffs64] (10 bytes, the "movabs" absolute load).
 *
 * The cache is placed near the whole executable (CODE_CACHE_NEAR_OBJECT), so both the helper and
 * the global are within reach. The loops are written by hand, byte by byte, into one chunk; each
 * is first run against a counting helper to check that it does what it says, then timed against
 * an empty one. Variants are interleaved within each repetition so that a noisy moment hits all
 * of them.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "code_cache.h"
#include "bench.h"

#define ITERATIONS 50000000L

/* The helpers: one that does nothing (timed) and one that counts (checked). */
void call_empty_helper(void);
void call_counting_helper(void);

__attribute__((noinline)) void call_empty_helper(void)
{
    __asm__ volatile("");
}

static volatile unsigned long helper_calls;

__attribute__((noinline)) void call_counting_helper(void)
{
    helper_calls++;
}

/* The runtime global the load loops read. */
volatile uint64_t call_global = 3;

/* ---- A tiny emitter ---- */

struct emit {
    unsigned char *rw, *rx; /* where to write, where it runs */
    size_t at, cap;
};

static void put(struct emit *e, const void *bytes, size_t n)
{
    if (e->at + n > e->cap) {
        fprintf(stderr, "call: chunk too small\n");
        exit(2);
    }
    memcpy(e->rw + e->at, bytes, n);
    e->at += n;
}

static void put_u8(struct emit *e, unsigned v)
{
    unsigned char b = (unsigned char)v;
    put(e, &b, 1);
}

static void put_u32(struct emit *e, uint32_t v)
{
    put(e, &v, sizeof v);
}

static void put_u64(struct emit *e, uint64_t v)
{
    put(e, &v, sizeof v);
}

/* rel32 from the end of a field of 4 bytes at e->at to target; exits if out of reach (the cache
 * promised it is not). */
static void put_rel32(struct emit *e, const void *target)
{
    intptr_t d = (intptr_t)target - (intptr_t)(e->rx + e->at + 4);
    if (d < INT32_MIN || d > INT32_MAX) {
        fprintf(stderr, "call: target %p out of rel32 reach of %p\n", target, e->rx + e->at);
        exit(1);
    }
    put_u32(e, (uint32_t)(int32_t)d);
}

enum kind { CALL_REL32, CALL_ABS, LOAD_RIP, LOAD_ABS, KINDS };

static const char *const kind_name[KINDS] = {"call rel32", "movabs rax, imm64; call rax",
                                             "mov rax, [rip+disp32]", "mov rax, [moffs64]"};

/*
 * Emits one loop function: uint64_t loop(uint64_t n). The call loops call target n times; the
 * load loops return n times the global. Layout of the call loop:
 *
 *     push rbx; mov rbx, rdi
 *   L: <call>; dec rbx; jnz L
 *     pop rbx; ret
 *
 * push rbx keeps the stack 16-byte aligned at each call, as the ABI requires.
 */
static void *emit_loop(struct emit *e, enum kind kind, const void *target)
{
    e->at = (e->at + 63) & ~(size_t)63; /* every loop starts on its own cache line */
    void *entry = e->rx + e->at;
    size_t loop;
    switch (kind) {
    case CALL_REL32:
    case CALL_ABS:
        put(e, "\x53\x48\x89\xfb", 4); /* push rbx; mov rbx, rdi */
        loop = e->at;
        if (kind == CALL_REL32) {
            put_u8(e, 0xe8); /* call rel32 */
            put_rel32(e, target);
        } else {
            put(e, "\x48\xb8", 2); /* movabs rax, imm64 */
            put_u64(e, (uint64_t)(uintptr_t)target);
            put(e, "\xff\xd0", 2); /* call rax */
        }
        put(e, "\x48\xff\xcb", 3); /* dec rbx */
        put_u8(e, 0x75);           /* jnz rel8 */
        put_u8(e, (unsigned)(loop - (e->at + 1)) & 0xff);
        put(e, "\x5b\xc3", 2); /* pop rbx; ret */
        break;
    case LOAD_RIP:
    case LOAD_ABS:
        put(e, "\x31\xc9", 2); /* xor ecx, ecx */
        loop = e->at;
        if (kind == LOAD_RIP) {
            put(e, "\x48\x8b\x05", 3); /* mov rax, [rip + disp32] */
            put_rel32(e, target);
        } else {
            put(e, "\x48\xa1", 2); /* mov rax, [moffs64] */
            put_u64(e, (uint64_t)(uintptr_t)target);
        }
        put(e, "\x48\x01\xc1", 3); /* add rcx, rax */
        put(e, "\x48\xff\xcf", 3); /* dec rdi */
        put_u8(e, 0x75);           /* jnz rel8 */
        put_u8(e, (unsigned)(loop - (e->at + 1)) & 0xff);
        put(e, "\x48\x89\xc8\xc3", 4); /* mov rax, rcx; ret */
        break;
    default:
        abort();
    }
    return entry;
}

typedef uint64_t (*loop_fn)(uint64_t);

static loop_fn as_loop(void *entry)
{
    loop_fn f;
    memcpy(&f, &entry, sizeof f);
    return f;
}

int main(void)
{
    bench_header("bench/call: direct vs absolute calls and loads from the cache");
    int reps = bench_reps(7);
    struct code_cache_options o = {
        .size = 1 << 20, .near = (const void *)call_empty_helper, .flags = CODE_CACHE_NEAR_OBJECT};
    struct code_cache *cache = code_cache_create(&o);
    if (cache == NULL) {
        perror("call: code_cache_create");
        return 2;
    }
    if (!code_cache_reaches(cache, (const void *)call_empty_helper) ||
        !code_cache_reaches(cache, (const void *)&call_global)) {
        fprintf(stderr, "call: the cache does not reach the helper and the global\n");
        return 1;
    }
    struct code_chunk *chunk = code_cache_alloc(cache, 4096);
    if (chunk == NULL) {
        perror("call: code_cache_alloc");
        return 2;
    }
    /* Where a call to each helper should go: the helper itself, since it is within reach. */
    const void *empty = code_chunk_call_target(chunk, (const void *)call_empty_helper);
    const void *counting = code_chunk_call_target(chunk, (const void *)call_counting_helper);
    if (empty != (const void *)call_empty_helper ||
        counting != (const void *)call_counting_helper) {
        fprintf(stderr, "call: a helper of the executable needs a veneer\n");
        return 1;
    }
    struct code_span s = code_chunk_alloc(chunk, 2048, 64);
    struct emit e = {.rw = s.rw, .rx = s.rx, .cap = s.size};
    loop_fn timed[KINDS], checked[2];
    size_t bytes[KINDS];
    for (int k = 0; k < KINDS; k++) {
        const void *target = k < LOAD_RIP ? empty : (const void *)&call_global;
        void *entry = emit_loop(&e, (enum kind)k, target);
        timed[k] = as_loop(entry);
        bytes[k] = (size_t)(e.rx + e.at - (unsigned char *)entry);
    }
    checked[0] = as_loop(emit_loop(&e, CALL_REL32, counting));
    checked[1] = as_loop(emit_loop(&e, CALL_ABS, counting));
    if (code_chunk_seal(chunk) != 0) {
        perror("call: code_chunk_seal");
        return 2;
    }

    /* The loops do what they say before anything is timed. */
    for (int k = 0; k < 2; k++) {
        helper_calls = 0;
        checked[k](1000);
        if (helper_calls != 1000) {
            fprintf(stderr, "call: the %s loop made %lu calls, not 1000\n", kind_name[k],
                    helper_calls);
            return 1;
        }
    }
    if (timed[LOAD_RIP](1000) != 3000 || timed[LOAD_ABS](1000) != 3000) {
        fprintf(stderr, "call: a load loop read the wrong value\n");
        return 1;
    }

    struct bench_samples ns[KINDS] = {{0}};
    for (int rep = 0; rep < reps; rep++) {
        for (int k = 0; k < KINDS; k++) {
            double t0 = bench_now_ns();
            uint64_t r = timed[k](ITERATIONS);
            bench_add(&ns[k], (bench_now_ns() - t0) / ITERATIONS);
            BENCH_KEEP(r);
        }
    }
    struct bench_summary sum[KINDS];
    for (int k = 0; k < KINDS; k++)
        sum[k] = bench_summarize(&ns[k]);
    printf("call: %ld iterations per repetition, ns per iteration (loop overhead included)\n",
           ITERATIONS);
    bench_line("call/helper/movabs rax, imm64; call rax", "ns", &sum[CALL_ABS], NULL, NULL);
    bench_line("call/helper/call rel32", "ns", &sum[CALL_REL32], "movabs+call-rax", &sum[CALL_ABS]);
    bench_line("call/global/mov rax, [moffs64]", "ns", &sum[LOAD_ABS], NULL, NULL);
    bench_line("call/global/mov rax, [rip+disp32]", "ns", &sum[LOAD_RIP], "moffs64-load",
               &sum[LOAD_ABS]);
    bench_note("code size per call site: 5 bytes (call rel32) vs 12 (movabs + call rax); per "
               "load: 7 bytes (rip-relative) vs 10 (moffs64); loops emitted: %zu/%zu/%zu/%zu "
               "bytes",
               bytes[CALL_REL32], bytes[CALL_ABS], bytes[LOAD_RIP], bytes[LOAD_ABS]);
    for (int k = 0; k < KINDS; k++)
        bench_free(&ns[k]);
    code_cache_destroy(cache);
    return 0;
}
