/*
 * What the GDB JIT interface costs, and that it stays linear: chunks of one small named function
 * each are sealed (registered) and then freed (unregistered), 1,000 to 10,000 of them, with the
 * interface off and on. Other runtimes' registration walked the list of registered objects and
 * became quadratic; here the cost per chunk must not grow with the count.
 *
 *   debuginfo_scale          the tables, then exit 1 if, of 10,000 chunks registered one after
 *                            the other, the last thousand cost more than twice the first
 *                            (a list walked per registration would make it ten times)
 *
 * Thread CPU time, best of five rounds: this machine is shared. Dual backend: its seal makes no
 * system call, so the interface's own cost is not hidden behind an mprotect.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <code_cache.h>

#define ROUNDS 5

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

struct cost {
    double seal, free; /* ns per chunk */
};

enum { BATCHES = 10, BATCH = 1000 };

/* n chunks: allocate, write, name, seal; then free them all, oldest first. Best of ROUNDS, for
 * the whole and for each batch of BATCH chunks (batch[i]: the i-th thousand). */
static struct cost measure(size_t n, unsigned flags, struct cost batch[BATCHES])
{
    struct cost best = {1e30, 1e30};
    for (int i = 0; i < BATCHES; i++)
        batch[i] = best;
    struct code_chunk **chunks = calloc(n, sizeof *chunks);
    if (chunks == NULL)
        exit(2);
    for (int r = 0; r < ROUNDS; r++) {
        struct code_cache_options opts = {.size = 16 << 20, .flags = CODE_CACHE_DUAL_MAP | flags};
        struct code_cache *cache = code_cache_create(&opts);
        if (cache == NULL) {
            perror("debuginfo_scale: code_cache_create");
            exit(2);
        }
        double t0 = now_ns(), tb = t0;
        for (size_t i = 0; i < n; i++) {
            char name[32];
            snprintf(name, sizeof name, "jit_fn_%zu", i);
            chunks[i] = code_cache_alloc(cache, 64);
            struct code_span fn =
                chunks[i] ? code_chunk_alloc(chunks[i], 16, 16) : (struct code_span){0};
            if (fn.rw == NULL) {
                perror("debuginfo_scale: alloc");
                exit(2);
            }
            memset(fn.rw, 0xc3, fn.size); /* ret */
            if (code_chunk_name(chunks[i], fn.rx, fn.size, name) != 0 ||
                code_chunk_seal(chunks[i]) != 0) {
                perror("debuginfo_scale: name, seal");
                exit(2);
            }
            if ((i + 1) % BATCH == 0 && i / BATCH < BATCHES) {
                double t = now_ns();
                if ((t - tb) / BATCH < batch[i / BATCH].seal)
                    batch[i / BATCH].seal = (t - tb) / BATCH;
                tb = t;
            }
        }
        double t1 = now_ns();
        tb = t1;
        for (size_t i = 0; i < n; i++) {
            code_chunk_free(chunks[i]);
            if ((i + 1) % BATCH == 0 && i / BATCH < BATCHES) {
                double t = now_ns();
                if ((t - tb) / BATCH < batch[i / BATCH].free)
                    batch[i / BATCH].free = (t - tb) / BATCH;
                tb = t;
            }
        }
        double t2 = now_ns();
        code_cache_destroy(cache);
        if ((t1 - t0) / (double)n < best.seal)
            best.seal = (t1 - t0) / (double)n;
        if ((t2 - t1) / (double)n < best.free)
            best.free = (t2 - t1) / (double)n;
    }
    free(chunks);
    return best;
}

int main(void)
{
    static const size_t counts[] = {1000, 2000, 5000, 10000};
    struct cost off[4], on[4], batch[BATCHES], unused[BATCHES];
    printf("ns per chunk (one named 16-byte function, dual backend), best of %d rounds:\n", ROUNDS);
    printf("%8s  %22s  %22s\n", "", "alloc+name+seal", "free");
    printf("%8s  %10s %11s  %10s %11s\n", "chunks", "gdb off", "gdb on", "gdb off", "gdb on");
    for (size_t i = 0; i < 4; i++) {
        off[i] = measure(counts[i], 0, unused);
        on[i] = measure(counts[i], CODE_CACHE_GDB_JIT, i == 3 ? batch : unused);
        printf("%8zu  %10.0f %11.0f  %10.0f %11.0f\n", counts[i], off[i].seal, on[i].seal,
               off[i].free, on[i].free);
    }
    /* The question is whether a registration costs more when many are registered already: a
     * list walked per registration would make the last thousand ten times the first. */
    printf("\nwith gdb on, 10,000 chunks in batches of %d, ns per chunk:\n", BATCH);
    printf("%8s  %15s  %8s\n", "batch", "alloc+name+seal", "free");
    for (int i = 0; i < BATCHES; i++)
        printf("%8d  %15.0f  %8.0f\n", i + 1, batch[i].seal, batch[i].free);
    const struct cost first = batch[0], last = batch[BATCHES - 1];
    if (last.seal > 2 * first.seal + 300 || last.free > 2 * first.free + 300) {
        printf("FAIL: a chunk costs more when more are registered\n");
        return 1;
    }
    printf("linear: the last thousand cost %.2fx (seal) and %.2fx (free) the first\n",
           last.seal / first.seal, last.free / first.free);
    return 0;
}
