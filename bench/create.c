/*
 * bench/create: what code_cache_create's executable-memory probe costs.
 *
 * With the mprotect backend, code_cache_create asks whether the system allows executable memory
 * at all (SELinux execmem, PaX, MemoryDenyWriteExecute): it makes the low guard page r-x and
 * inaccessible again, two mprotect calls on a page that holds no memory. Since the library
 * remembers a yes for the process, only the first create of a process asks; every later create
 * skips the probe. So the program measures two things:
 *
 *   - the first create of a process: this program runs itself again (fork + exec of
 *     /proc/self/exe, a fresh process each time, nothing inherited) and the child times its one
 *     and only code_cache_create on its thread's CPU time (a freshly started process is often
 *     preempted: its wall time ranged from 0.35 to 71 ms on a busy machine), either as it is (the
 * probe runs) or with the probe skipped: mprotect interposed in this program so that while
 * code_cache_create runs every mprotect returns 0 at once, with no system call. The child reports
 * how many calls it skipped (2: the probe's two calls are all of create's mprotect calls). A first
 * create also pays what any first call pays (the library's one-time setup, its first arena, lazy
 * binding), with or without the probe alike;
 *   - later creates, in this process after warm-up: create as it is (the answer remembered, no
 *     probe) against create with mprotect interposed as above, which then skips nothing (the
 *     program says how many calls it skipped: 0.00 per create when the answer is remembered);
 *   - the probe alone, the other way: the same two mprotect calls on a page of a PROT_NONE
 *     reservation made by this program; and, for comparison, another way to ask (map one r-x
 *     page anywhere and unmap it).
 *
 * Every create is timed on its own (the monotonic clock, one sample per create; destroy is not
 * timed), the variants alternate create by create (first creates: child by child), and the
 * figures are medians of all samples, so that a preemption lands on one sample rather than on a
 * figure. Arenas come from the library's pool after the first create, as in any program that
 * creates more than one cache.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "code_cache.h"
#include "bench.h"
#include "count.h"

#define PAGE    ((size_t)4096)
#define CREATES 2000 /* per variant; at least, with BENCH_REPS above 5, reps * 400 */
#define FIRSTS  200  /* first creates (child processes) per variant; reps * 40 above 5 reps */

void create_helper(void);
__attribute__((noinline)) void create_helper(void)
{
    __asm__ volatile("");
}

static double one_create(const struct code_cache_options *o, bool skip_probe, bool cpu_time)
{
    if (skip_probe)
        bench_skip_mprotect(true);
    double t0 = cpu_time ? bench_thread_cpu_ns() : bench_now_ns();
    struct code_cache *cache = code_cache_create(o);
    double t = (cpu_time ? bench_thread_cpu_ns() : bench_now_ns()) - t0;
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

/* The child: one create, the first of this process; prints its time and the mprotect calls it
 * skipped. argv: "--first-create", "anywhere" | "near", "probe" | "skip". */
static int first_create_child(const char *where, const char *how)
{
    struct code_cache_options o = {0};
    if (strcmp(where, "near") == 0)
        o.near = (const void *)create_helper;
    bool skip = strcmp(how, "skip") == 0;
    uint64_t skipped0 = bench_skipped_mprotect();
    double t = one_create(&o, skip, true);
    printf("%.0f %llu\n", t, (unsigned long long)(bench_skipped_mprotect() - skipped0));
    return 0;
}

/* Runs this program again as a fresh process for one first create; returns its time, adds the
 * calls it skipped to *skipped. */
static double first_create(const char *where, const char *how, uint64_t *skipped)
{
    int fd[2];
    if (pipe(fd) != 0) {
        perror("create: pipe");
        exit(2);
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("create: fork");
        exit(2);
    }
    if (pid == 0) {
        dup2(fd[1], STDOUT_FILENO);
        close(fd[0]);
        close(fd[1]);
        char *args[] = {(char *)"create", (char *)"--first-create", (char *)where, (char *)how,
                        NULL};
        execv("/proc/self/exe", args);
        _exit(127);
    }
    close(fd[1]);
    char buf[64] = {0};
    size_t got = 0;
    ssize_t n;
    while (got < sizeof buf - 1 && (n = read(fd[0], buf + got, sizeof buf - 1 - got)) > 0)
        got += (size_t)n;
    close(fd[0]);
    int status;
    double t;
    unsigned long long sk;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
        sscanf(buf, "%lf %llu", &t, &sk) != 2) {
        fprintf(stderr, "create: the child (first create, %s, %s) failed\n", where, how);
        exit(2);
    }
    *skipped += sk;
    return t;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--first-create") == 0)
        return first_create_child(argv[2], argv[3]);
    bench_header("bench/create: code_cache_create with and without its exec probe");
    int reps = bench_reps(5);
    size_t creates = reps > 5 ? (size_t)reps * 400 : CREATES;
    size_t firsts = reps > 5 ? (size_t)reps * 40 : FIRSTS;

    /* First creates first: the children are fresh processes, whatever this one has done. */
    struct bench_samples f_any_with = {0}, f_any_without = {0}, f_near_with = {0},
                         f_near_without = {0};
    uint64_t f_skipped_with = 0, f_skipped_without = 0;
    for (size_t i = 0; i < firsts; i++) {
        bench_add(&f_any_with, first_create("anywhere", "probe", &f_skipped_with));
        bench_add(&f_any_without, first_create("anywhere", "skip", &f_skipped_without));
        bench_add(&f_near_with, first_create("near", "probe", &f_skipped_with));
        bench_add(&f_near_without, first_create("near", "skip", &f_skipped_without));
    }
    struct bench_summary faw = bench_summarize(&f_any_with), fao = bench_summarize(&f_any_without),
                         fnw = bench_summarize(&f_near_with),
                         fno = bench_summarize(&f_near_without);
    printf("create: the first code_cache_create (64 MiB) of a fresh process (fork + exec of this "
           "program), thread CPU time, one per process, %zu processes per variant, alternating\n",
           firsts);
    bench_line("create/first of a process, anywhere, probe skipped", "ns", &fao, NULL, NULL);
    bench_line("create/first of a process, anywhere, with the probe", "ns", &faw, "without probe",
               &fao);
    bench_line("create/first of a process, near, probe skipped", "ns", &fno, NULL, NULL);
    bench_line("create/first of a process, near, with the probe", "ns", &fnw, "without probe",
               &fno);
    bench_note("first creates: mprotect calls skipped %.2f per create with the probe skipped "
               "(2.00: the probe's two calls are all of create's), %.2f as it is (nothing skipped)",
               (double)f_skipped_without / (double)(2 * firsts),
               (double)f_skipped_with / (double)(2 * firsts));
    bench_note("first creates, with minus without: anywhere %.0f ns, near %.0f ns",
               faw.median - fao.median, fnw.median - fno.median);
    bench_free(&f_any_with);
    bench_free(&f_any_without);
    bench_free(&f_near_with);
    bench_free(&f_near_without);
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
        one_create(&anywhere, false, false);
        one_create(&near, false, false);
        one_create(&dual, false, false);
    }
    struct bench_samples any_with = {0}, any_without = {0}, near_with = {0}, near_without = {0},
                         alone = {0}, by_mmap = {0}, dual_s = {0};
    uint64_t skipped0 = bench_skipped_mprotect();
    for (size_t i = 0; i < creates; i++) {
        /* Which of the two comes first alternates: the create that follows the dual backend's
         * create and destroy was measured 0.7 us slower, the same code either way. */
        bool swap = (i & 1) != 0;
        bench_add(swap ? &any_without : &any_with, one_create(&anywhere, swap, false));
        bench_add(swap ? &any_with : &any_without, one_create(&anywhere, !swap, false));
        bench_add(&alone, probe_alone(res));
        bench_add(&by_mmap, probe_by_mmap());
        bench_add(swap ? &near_without : &near_with, one_create(&near, swap, false));
        bench_add(swap ? &near_with : &near_without, one_create(&near, !swap, false));
        bench_add(&dual_s, one_create(&dual, false, false));
    }
    uint64_t skipped = bench_skipped_mprotect() - skipped0;

    struct bench_summary aw = bench_summarize(&any_with), ao = bench_summarize(&any_without),
                         nw = bench_summarize(&near_with), no = bench_summarize(&near_without),
                         pa = bench_summarize(&alone), pm = bench_summarize(&by_mmap),
                         du = bench_summarize(&dual_s);
    printf("create: later creates (64 MiB) in one process, the exec probe's answer remembered, "
           "%zu samples per variant, alternating; destroy not timed\n",
           creates);
    bench_line("create/later, anywhere, mprotect interposed", "ns", &ao, NULL, NULL);
    bench_line("create/later, anywhere, as it is (answer remembered)", "ns", &aw, "interposed",
               &ao);
    bench_line("create/later, near, mprotect interposed", "ns", &no, NULL, NULL);
    bench_line("create/later, near, as it is (answer remembered)", "ns", &nw, "interposed", &no);
    bench_line("create/later, anywhere, as it is", "ns", &aw, "first create with the probe", &faw);
    bench_line("create/the probe alone (2 mprotect, PROT_NONE page)", "ns", &pa, "", NULL);
    bench_line("create/(another probe: mmap r-x page + munmap)", "ns", &pm, "", NULL);
    bench_line("create/dual backend, anywhere (no mprotect probe)", "ns", &du, "mprotect backend",
               &aw);
    bench_note("later creates: mprotect calls skipped by the interposer %.2f per create (0.00: "
               "the answer is remembered and no later create probes)",
               (double)skipped / (double)(2 * creates));
    bench_note("later creates, as it is minus interposed: anywhere %.0f ns, near %.0f ns; the "
               "probe alone %.0f ns",
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
