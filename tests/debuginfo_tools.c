/*
 * The program that tests/debuginfo_tools.sh runs under perf and gdb: named JIT functions, each
 * with a frame pointer (push rbp; mov rbp, rsp), so that profilers and debuggers can name them
 * and walk past them.
 *
 *   debuginfo_tools spin mprotect|dual   spends its time in jit_spin_alpha, _beta and _gamma
 *                                        (three chunks sealed one after another, so that their
 *                                        mappings merge), then frees alpha and runs
 *                                        jit_spin_delta in the span alpha had
 *   debuginfo_tools gdb mprotect|dual    jit_gdb_outer calls jit_gdb_inner, which calls
 *                                        debuginfo_tools_helper (the place to stop)
 *   debuginfo_tools exit mprotect|dual   writes jit_spin_alpha to the jitdump and exits (for
 *                                        tests/debuginfo: the record the library adds at exit)
 *
 * The tools are turned on by the environment (CODE_CACHE_PERF, CODE_CACHE_GDB), as a user would.
 * x86-64 only: the script skips elsewhere.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <code_cache.h>

static unsigned backend;
/* A chunk per function. Three fill the spin test's cache: mprotect, a page each; dual, 21 of the
 * 64 granules of its one page. */
static size_t granule = 4096, cache_size = 3 * 4096;

static void die(const char *what)
{
    fprintf(stderr, "debuginfo_tools: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void put32(unsigned char *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
}

/* A chunk of one granule holding one named function: the code is copied in, named, sealed. */
static struct code_chunk *emit(struct code_cache *cache, const unsigned char *code, size_t len,
                               const char *name, void **fn)
{
    struct code_chunk *chunk = code_cache_alloc(cache, granule);
    if (chunk == NULL)
        die("code_cache_alloc");
    struct code_span span = code_chunk_alloc(chunk, len, 16);
    if (span.rw == NULL)
        die("code_chunk_alloc");
    memcpy(span.rw, code, len);
    if (code_chunk_name(chunk, span.rx, len, name) != 0 || code_chunk_seal(chunk) != 0)
        die(name);
    *fn = span.rx;
    return chunk;
}

/* push rbp; mov rbp, rsp; mov ecx, n; 1: dec ecx; jnz 1b; mov eax, id; pop rbp; ret */
static struct code_chunk *emit_spin(struct code_cache *cache, const char *name, uint32_t id,
                                    int (**fn)(void))
{
    unsigned char code[] = {0x55, 0x48, 0x89, 0xe5, 0xb9, 0, 0, 0, 0,    0xff,
                            0xc9, 0x75, 0xfc, 0xb8, 0,    0, 0, 0, 0x5d, 0xc3};
    put32(code + 5, 1000000);
    put32(code + 14, id);
    void *p;
    struct code_chunk *chunk = emit(cache, code, sizeof code, name, &p);
    *fn = (int (*)(void))(uintptr_t)p;
    return chunk;
}

static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs each function in turn until seconds of CPU time went by. */
static void spin(int (**fns)(void), size_t n, double seconds)
{
    double end = cpu_seconds() + seconds;
    volatile int sink = 0;
    while (cpu_seconds() < end)
        for (size_t i = 0; i < n; i++)
            for (int k = 0; k < 4; k++)
                sink += fns[i]();
    (void)sink;
}

static int run_spin(void)
{
    /* Once alpha is freed, the next chunk can only be alpha's span. */
    struct code_cache_options opts = {.size = cache_size, .flags = backend};
    struct code_cache *cache = code_cache_create(&opts);
    if (cache == NULL)
        die("code_cache_create");
    int (*fns[3])(void);
    struct code_chunk *alpha = emit_spin(cache, "jit_spin_alpha", 1, &fns[0]);
    emit_spin(cache, "jit_spin_beta", 2, &fns[1]);
    emit_spin(cache, "jit_spin_gamma", 3, &fns[2]);
    spin(fns, 3, 1.5);
    void *old = (void *)(uintptr_t)fns[0];
    code_chunk_free(alpha);
    emit_spin(cache, "jit_spin_delta", 4, &fns[0]);
    if ((void *)(uintptr_t)fns[0] != old) {
        fprintf(stderr, "debuginfo_tools: delta at %p, not in alpha's span %p\n",
                (void *)(uintptr_t)fns[0], old);
        return 1;
    }
    spin(fns, 1, 0.5);
    printf("jit_spin_delta reuses %p (pid %ld)\n", old, (long)getpid());
    code_cache_destroy(cache);
    return 0;
}

static int run_exit(void)
{
    struct code_cache_options opts = {.size = cache_size,
                                      .flags = backend | CODE_CACHE_PERF_JITDUMP};
    struct code_cache *cache = code_cache_create(&opts);
    if (cache == NULL)
        die("code_cache_create");
    int (*fn)(void);
    emit_spin(cache, "jit_spin_alpha", 1, &fn);
    code_cache_destroy(cache);
    return 0; /* exit() runs the library's destructor, which ends the jitdump */
}

/* Where gdb stops: called by JIT code (global, so that gdb finds it by name). */
int debuginfo_tools_helper(int x);
__attribute__((noinline)) int debuginfo_tools_helper(int x)
{
    __asm__ volatile("" ::: "memory");
    return x + 1;
}

/* push rbp; mov rbp, rsp; mov edi, 41; call target; pop rbp; ret */
static int (*emit_caller(struct code_cache *cache, const char *name, const void *target))(void)
{
    struct code_chunk *chunk = code_cache_alloc(cache, granule);
    if (chunk == NULL)
        die("code_cache_alloc");
    const void *via = code_chunk_call_target(chunk, target);
    struct code_span span = code_chunk_alloc(chunk, 16, 16);
    if (via == NULL || span.rw == NULL)
        die("code_chunk_call_target");
    unsigned char code[16] = {0x55, 0x48, 0x89, 0xe5, 0xbf, 41, 0,    0,
                              0,    0xe8, 0,    0,    0,    0,  0x5d, 0xc3};
    put32(code + 10, (uint32_t)((intptr_t)via - ((intptr_t)span.rx + 14)));
    memcpy(span.rw, code, sizeof code);
    if (code_chunk_name(chunk, span.rx, sizeof code, name) != 0 || code_chunk_seal(chunk) != 0)
        die(name);
    return (int (*)(void))(uintptr_t)span.rx;
}

static int run_gdb(void)
{
    struct code_cache_options opts = {
        .size = 1 << 20, .near = (const void *)(uintptr_t)debuginfo_tools_helper, .flags = backend};
    struct code_cache *cache = code_cache_create(&opts);
    if (cache == NULL)
        die("code_cache_create");
    int (*inner)(void) =
        emit_caller(cache, "jit_gdb_inner", (const void *)(uintptr_t)debuginfo_tools_helper);
    int (*outer)(void) = emit_caller(cache, "jit_gdb_outer", (const void *)(uintptr_t)inner);
    int r = outer();
    printf("jit_gdb_outer returned %d\n", r);
    code_cache_destroy(cache);
    return r == 42 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[2], "mprotect") != 0 && strcmp(argv[2], "dual") != 0)) {
        fprintf(stderr, "usage: debuginfo_tools spin|gdb mprotect|dual\n");
        return 2;
    }
    if (strcmp(argv[2], "dual") == 0) {
        backend = CODE_CACHE_DUAL_MAP;
        granule = 21 * 64;
        cache_size = 4096;
    }
    if (strcmp(argv[1], "spin") == 0)
        return run_spin();
    if (strcmp(argv[1], "gdb") == 0)
        return run_gdb();
    if (strcmp(argv[1], "exit") == 0)
        return run_exit();
    return 2;
}
