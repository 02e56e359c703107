/*
 * bench/create: what code_cache_create's executable-memory probe costs.
 *
 * With the mprotect backend, code_cache_create asks once whether the system allows executable
 * memory at all (SELinux execmem, PaX, MemoryDenyWriteExecute): it makes the low guard page r-x
 * and inaccessible again, two mprotect calls on a page that holds no memory. Measured here:
 *
 *   - create with the probe: code_cache_create as it is (64 MiB, anywhere; and 64 MiB near a
 *     helper of this program, the usual call);
 *   - create without the probe: the same calls, with mprotect interposed in this program so that
 *     while code_cache_create runs every mprotect returns 0 at once, with no system call. The
 *     probe's two calls are the only mprotect calls create makes: the program counts the calls
 *     it skipped, and says so if that is not 2 per create;
 *   - the probe alone, the other way: the same two mprotect calls on a page of a PROT_NONE
 *     reservation made by this program; and, for comparison, another way to ask (map one r-x
 *     page anywhere and unmap it).
 *
 * Every create is timed on its own (the monotonic clock, one sample per create; destroy is not
 * timed), the variants alternate create by create, and the figures are medians of all samples,
 * so that a preemption lands on one sample rather than on a figure. Arenas come from the
 * library's pool after the first create, as in any program that creates more than one cache.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "code_cache.h"
#include "bench.h"
#include "count.h"

#define PAGE    ((size_t)4096)
#define CREATES 2000 /* per variant; at least, with BENCH_REPS above 5, reps * 400 */

void create_helper(void);
__attribute__((noinline)) void create_helper(void)
{
    __asm__ volatile("");
}

static double one_create(const struct code_cache_options *o, bool skip_probe)
{
    if (skip_probe)
        bench_skip_mprotect(true);
    double t0 = bench_now_ns();
    struct code_cache *cache = code_cache_create(o);
    double t = bench_now_ns() - t0;
    bench_skip_mprotect(false);
    if (cache == NULL) {
        perror("create: code_cache_create");
        exit(2);
    }
    code_cache_destroy(cache);
    return t;
}

static double probe_alone(void *page)
{
    double t0 = bench_now_ns();
    if (mprotect(page, PAGE, PROT_READ | PROT_EXEC) != 0 || mprotect(page, PAGE, PROT_NONE) != 0) {
        perror("create: mprotect");
        exit(2);
    }
    return bench_now_ns() - t0;
}

/* Another way to ask the same question, for comparison: map one r-x page anywhere, unmap it. */
static double probe_by_mmap(void)
{
    double t0 = bench_now_ns();
    void *p = mmap(NULL, PAGE, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || munmap(p, PAGE) != 0) {
        perror("create: mmap r-x");
        exit(2);
    }
    return bench_now_ns() - t0;
}

int main(void)
{
    bench_header("bench/create: code_cache_create with and without its exec probe");
    int reps = bench_reps(5);
    size_t creates = reps > 5 ? (size_t)reps * 400 : CREATES;
    /* A PROT_NONE reservation like the cache's, so that the page's two calls split and merge a
     * mapping as the probe does on the guard page. */
    size_t res_len = 64 << 20;
    unsigned char *res = mmap(NULL, res_len + 2 * PAGE, PROT_NONE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (res == MAP_FAILED) {
        perror("create: mmap");
        return 2;
    }
    struct code_cache_options anywhere = {0};
    struct code_cache_options near = {.near = (const void *)create_helper};
    struct code_cache_options dual = {.flags = CODE_CACHE_DUAL_MAP};
    /* Warm: the arena pool, the placement code's first reads. */
    for (int i = 0; i < 20; i++) {
        one_create(&anywhere, false);
        one_create(&near, false);
        one_create(&dual, false);
    }
    struct bench_samples any_with = {0}, any_without = {0}, near_with = {0}, near_without = {0},
                         alone = {0}, by_mmap = {0}, dual_s = {0};
    uint64_t skipped0 = bench_skipped_mprotect();
    for (size_t i = 0; i < creates; i++) {
        bench_add(&any_with, one_create(&anywhere, false));
        bench_add(&any_without, one_create(&anywhere, true));
        bench_add(&alone, probe_alone(res));
        bench_add(&by_mmap, probe_by_mmap());
        bench_add(&near_with, one_create(&near, false));
        bench_add(&near_without, one_create(&near, true));
        bench_add(&dual_s, one_create(&dual, false));
    }
    uint64_t skipped = bench_skipped_mprotect() - skipped0;

    struct bench_summary aw = bench_summarize(&any_with), ao = bench_summarize(&any_without),
                         nw = bench_summarize(&near_with), no = bench_summarize(&near_without),
                         pa = bench_summarize(&alone), pm = bench_summarize(&by_mmap),
                         du = bench_summarize(&dual_s);
    printf("create: one code_cache_create (64 MiB) per sample, %zu samples per variant, "
           "alternating; destroy not timed\n",
           creates);
    bench_line("create/anywhere, probe skipped (interposed)", "ns", &ao, NULL, NULL);
    bench_line("create/anywhere, with the exec probe", "ns", &aw, "without probe", &ao);
    bench_line("create/near a helper, probe skipped (interposed)", "ns", &no, NULL, NULL);
    bench_line("create/near a helper, with the exec probe", "ns", &nw, "without probe", &no);
    bench_line("create/the probe alone (2 mprotect, PROT_NONE page)", "ns", &pa, "", NULL);
    bench_line("create/(another probe: mmap r-x page + munmap)", "ns", &pm, "", NULL);
    bench_line("create/dual backend, anywhere (no mprotect probe)", "ns", &du, "mprotect backend",
               &aw);
    bench_note("mprotect calls skipped while creating without the probe: %.2f per create (the "
               "probe's two calls are all of create's mprotect calls when this says 2.00)",
               (double)skipped / (double)(2 * creates));
    bench_note("with minus without: anywhere %.0f ns, near %.0f ns; the probe alone %.0f ns",
               aw.median - ao.median, nw.median - no.median, pa.median);
    bench_free(&any_with);
    bench_free(&any_without);
    bench_free(&near_with);
    bench_free(&near_without);
    bench_free(&alone);
    bench_free(&by_mmap);
    bench_free(&dual_s);
    munmap(res, res_len + 2 * PAGE);
    return 0;
}
