/*
 * What the benchmark programs share: a monotonic clock, samples summarised as median, min and
 * max, and one output line per figure with its ratio to a baseline measured in the same run.
 * These machines are noisy (FACTS.md), so a figure is never one number: a reader compares the
 * medians and ratios, and the min/max say how far to trust them.
 */
#ifndef BENCH_H
#define BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Nanoseconds on CLOCK_MONOTONIC. */
double bench_now_ns(void);

/* Nanoseconds of CPU time of the calling thread, user and system (CLOCK_THREAD_CPUTIME_ID): what
 * a single-threaded loop costs, without the time the machine gave to other processes. */
double bench_thread_cpu_ns(void);

/* A growable array of samples of one figure, in its unit (ns, bytes...). */
struct bench_samples {
    double *v;
    size_t n, cap;
};

void bench_add(struct bench_samples *s, double value);
void bench_clear(struct bench_samples *s);
void bench_free(struct bench_samples *s);

struct bench_summary {
    double median, min, max;
    size_t n;
};

/* Median, min and max; all zero for an empty set. */
struct bench_summary bench_summarize(const struct bench_samples *s);

/* Repetitions per figure: BENCH_REPS from the environment, at least 5, default dflt. */
int bench_reps(int dflt);

/* True when the environment variable is set to something other than "" or "0". */
bool bench_env_flag(const char *name);

/* The header every program prints first: program name, CPU, cores, kernel, load average, date,
 * so that a results table can always be traced back to a machine and a moment. */
void bench_header(const char *program);

/*
 * One figure, one line:
 *
 *   name   median   min   max   n   ratio to the baseline
 *
 * Times (unit "ns") are scaled to ns, us, ms or s. The ratio is median / baseline median; when
 * the figure is the smaller one the line also says how many times faster (or smaller) it is.
 * base_name NULL: the figure is itself a baseline, printed without a ratio; "": a figure that
 * has no baseline (a count, a size).
 */
void bench_line(const char *name, const char *unit, const struct bench_summary *fig,
                const char *base_name, const struct bench_summary *base);

/* A free-form note under the figures (what was skipped and why, what a number means). */
void bench_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* xorshift64*: a small deterministic generator, so that a layout can be reproduced from a seed. */
struct bench_rng {
    uint64_t state;
};

void bench_rng_seed(struct bench_rng *r, uint64_t seed);
uint64_t bench_rng_next(struct bench_rng *r);
/* Uniform in [0, n), n > 0. */
uint64_t bench_rng_below(struct bench_rng *r, uint64_t n);

/* Lines of /proc/self/maps: the number of mappings of the process (vm.max_map_count bounds it). */
size_t bench_count_mappings(void);

/* The code the allocation benchmarks write, a real function: mov eax, imm32; ret; then int3 up
 * to size (at least 6 bytes, at most 4096). The immediate is the function's index. */
void bench_code_template(unsigned char *tmpl, size_t size);

static inline void bench_write_function(void *at, const unsigned char *tmpl, size_t size,
                                        uint32_t index)
{
    memcpy(at, tmpl, size);
    memcpy((unsigned char *)at + 1, &index, sizeof index);
}

/* Calls the function at rx and exits with a message unless it returns index: a variant that did
 * not produce runnable code fails instead of looking fast. */
void bench_check_function(const void *rx, uint32_t index, const char *who);

/* Keeps a value alive in the eyes of the optimiser. */
#define BENCH_KEEP(x) __asm__ volatile("" : : "g"(x) : "memory")

#ifdef __cplusplus
}
#endif

#endif /* BENCH_H */
