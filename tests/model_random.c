/*
 * The model of tests/model/ driven by a PRNG instead of libFuzzer, so that `make check` exercises
 * the model itself, under valgrind: first every input of the fuzzing corpus and every saved
 * regression (tests/fuzz/corpus, tests/fuzz/regressions), then long random sequences.
 *
 *   model_random                      the corpus, the regressions, a method JIT on a dual-mapped
 *                                     cache, then 3 sequences of 200 calls
 *   model_random SEED OPS [COUNT]     COUNT sequences of OPS operations from SEED (reproduce one
 *                                     with the seed printed by a failure, and MODEL_TRACE=1)
 *   model_random FILE...              replay fuzzer inputs (a crash libFuzzer saved)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"

static uint64_t total_ops, total_calls;
static struct model_tcache_counts total_tcache;

static void count_tcache(const struct model *m)
{
    struct model_tcache_counts t;
    model_tcache_counts(m, &t);
    total_tcache.kept += t.kept;
    total_tcache.handed_out += t.handed_out;
    total_tcache.given_back_full += t.given_back_full;
    total_tcache.given_back_no_room += t.given_back_no_room;
    total_tcache.given_back_reset += t.given_back_reset;
}

static void run_bytes(const uint8_t *data, size_t len, unsigned max_ops)
{
    struct model *m = model_new(NULL);
    struct model_input in = {.data = data, .len = len};
    unsigned n = 0;
    while (n < max_ops && model_step(m, &in))
        n++;
    model_exercise(m);
    total_ops += n;
    total_calls += model_calls(m);
    count_tcache(m);
    model_end(m);
}

static void run_seed(uint64_t seed, unsigned ops)
{
    fprintf(stderr, "model_random: seed %llu, %u operations\n", (unsigned long long)seed, ops);
    struct model *m = model_new(NULL);
    struct model_input in = {.endless = true, .rng = seed};
    for (unsigned i = 0; i < ops; i++)
        model_step(m, &in);
    model_exercise(m);
    total_ops += ops;
    total_calls += model_calls(m);
    count_tcache(m);
    model_end(m);
}

/* A method JIT on one dual-mapped cache with thread caches, long enough that kept chunks come back
 * (1,024 frees after they were kept), about 1,700 of them: random sequences rarely get there, as
 * each operation picks its own. Then functions growing from 64 B to 2 KiB: what the thread keeps
 * passes 2 MiB, and the flush stops at a quarantine of over 1 MiB (the next flush then 1 MiB
 * past what is left, not reached here: tests/tcache reaches it); a reset, after which the next
 * flush is past 2 MiB again; the growing sizes once more. 3 x 2,104 functions of 1 B - 2 KiB on
 * a 3 MiB cache near the helper (about 25 s under valgrind). */
static void run_method_jit(void)
{
    const uint8_t create = MODEL_OP(MOP_CREATE), methods = MODEL_OP(MOP_METHODS),
                  reset = MODEL_OP(MOP_RESET);
    const uint8_t bytes[] = {
        create,  0, 11,  6,    0, 5, /* slot 0: 3 MiB, near the helper, default reach, dual */
        methods, 0, 255, 1,          /* 2,104 functions of random sizes, seed 1 */
        methods, 0, 255, 0x80,       /* 2,104 of growing sizes */
        reset,   0,                  /* the thread's kept chunks back, its next flush at 2 MiB */
        methods, 0, 255, 0x81,       /* 2,104 of growing sizes again */
    };
    run_bytes(bytes, sizeof bytes, 64);
}

static unsigned run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "model_random: %s: %s\n", path, strerror(errno));
        exit(1);
    }
    static uint8_t buf[1 << 16];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    run_bytes(buf, len, 4096);
    return 1;
}

static unsigned run_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    unsigned n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || strncmp(e->d_name, "README", 6) == 0)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        n += run_file(path);
    }
    closedir(d);
    return n;
}

int main(int argc, char **argv)
{
#if !defined(__x86_64__)
    /* The model writes and runs x86-64 code (tests/model/jit.h) and knows rel32's reach only. */
    (void)argc, (void)argv;
    puts("model_random: the model emits x86-64 code; skipped on this architecture");
    return 77; /* automake: SKIP */
#endif
    if (argc >= 3 && strspn(argv[1], "0123456789") == strlen(argv[1])) {
        uint64_t seed = strtoull(argv[1], NULL, 10);
        unsigned ops = (unsigned)strtoul(argv[2], NULL, 10);
        unsigned count = argc > 3 ? (unsigned)strtoul(argv[3], NULL, 10) : 1;
        for (unsigned i = 0; i < count; i++)
            run_seed(seed + i, ops);
    } else if (argc > 1) {
        for (int i = 1; i < argc; i++)
            run_file(argv[i]);
    } else {
        const char *srcdir = getenv("srcdir");
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus", srcdir ? srcdir : ".");
        unsigned files = run_dir(dir);
        snprintf(dir, sizeof dir, "%s/tests/fuzz/regressions", srcdir ? srcdir : ".");
        files += run_dir(dir);
        fprintf(stderr, "model_random: %u corpus and regression inputs replayed\n", files);
        struct model_tcache_counts before = total_tcache;
        run_method_jit();
        if (total_tcache.handed_out == before.handed_out) {
            fprintf(stderr, "model_random: the method JIT got no kept chunk back\n");
            return 1;
        }
        if (total_tcache.given_back_full == before.given_back_full ||
            total_tcache.given_back_reset == before.given_back_reset) {
            fprintf(stderr, "model_random: the method JIT's thread cache was not flushed, or not "
                            "reset\n");
            return 1;
        }
        for (uint64_t seed = 1; seed <= 3; seed++)
            run_seed(seed, 200);
    }
    printf("model_random: %llu operations, %llu library calls, every one checked\n",
           (unsigned long long)total_ops, (unsigned long long)total_calls);
    printf("model_random: thread caches: %llu frees kept, %llu kept chunks handed out again, "
           "given back %llu past 2 MiB kept, %llu when an allocation found no room, %llu at "
           "resets\n",
           (unsigned long long)total_tcache.kept, (unsigned long long)total_tcache.handed_out,
           (unsigned long long)total_tcache.given_back_full,
           (unsigned long long)total_tcache.given_back_no_room,
           (unsigned long long)total_tcache.given_back_reset);
    return 0;
}
