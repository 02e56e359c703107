/*
 * Timing, summaries and the one-line-per-figure output of the benchmark programs (bench.h).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

double bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

double bench_thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

void bench_add(struct bench_samples *s, double value)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        double *v = realloc(s->v, cap * sizeof *v);
        if (v == NULL) {
            perror("bench: realloc");
            exit(2);
        }
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = value;
}

void bench_clear(struct bench_samples *s)
{
    s->n = 0;
}

void bench_free(struct bench_samples *s)
{
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

static int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

struct bench_summary bench_summarize(const struct bench_samples *s)
{
    struct bench_summary r = {0};
    if (s->n == 0)
        return r;
    double *v = malloc(s->n * sizeof *v);
    if (v == NULL) {
        perror("bench: malloc");
        exit(2);
    }
    memcpy(v, s->v, s->n * sizeof *v);
    qsort(v, s->n, sizeof *v, bench_cmp_double);
    r.n = s->n;
    r.min = v[0];
    r.max = v[s->n - 1];
    r.median = s->n % 2 ? v[s->n / 2] : (v[s->n / 2 - 1] + v[s->n / 2]) / 2;
    free(v);
    return r;
}

int bench_reps(int dflt)
{
    const char *e = getenv("BENCH_REPS");
    int reps = e != NULL ? atoi(e) : dflt;
    return reps < 5 ? 5 : reps;
}

bool bench_env_flag(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && *v != '\0' && strcmp(v, "0") != 0;
}

/* The first line of a file that starts with key, value after the colon, or "?". */
static void bench_read_field(const char *path, const char *key, char *out, size_t len)
{
    snprintf(out, len, "?");
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    char line[512];
    size_t klen = strlen(key);
    while (fgets(line, sizeof line, f) != NULL) {
        if (klen > 0 && strncmp(line, key, klen) != 0)
            continue;
        char *v = klen > 0 ? strchr(line, ':') : line;
        if (v == NULL)
            continue;
        if (klen > 0)
            v++;
        while (*v == ' ' || *v == '\t')
            v++;
        size_t n = strcspn(v, "\n");
        if (n >= len)
            n = len - 1;
        memcpy(out, v, n);
        out[n] = '\0';
        break;
    }
    fclose(f);
}

void bench_header(const char *program)
{
    char cpu[128], distro[64], load[64], maxmap[32];
    bench_read_field("/proc/cpuinfo", "model name", cpu, sizeof cpu);
    bench_read_field("/etc/debian_version", "", distro, sizeof distro);
    bench_read_field("/proc/loadavg", "", load, sizeof load);
    bench_read_field("/proc/sys/vm/max_map_count", "", maxmap, sizeof maxmap);
    struct utsname u;
    if (uname(&u) != 0)
        snprintf(u.release, sizeof u.release, "?");
    time_t now = time(NULL);
    char date[64];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S %Z", localtime(&now));
    printf("# %s -- %s\n", program, date);
    printf("# cpu: %s, %ld online; kernel %s; Debian %s; vm.max_map_count %s; loadavg %s\n", cpu,
           sysconf(_SC_NPROCESSORS_ONLN), u.release, distro, maxmap, load);
    printf("# %-52s %10s %10s %10s %4s  %s\n", "figure", "median", "min", "max", "n",
           "ratio of medians to its baseline");
    fflush(stdout);
}

/* A value in the figure's unit, scaled for reading: times to ns/us/ms/s, other units as they are.
 * Three significant digits, without the exponent notation %g falls into at 1000. */
static void bench_format(char *out, size_t len, double v, const char *unit)
{
    static const char *const time_units[] = {"ns", "us", "ms", "s"};
    if (strcmp(unit, "ns") == 0) {
        size_t u = 0;
        while (u < 3 && v >= 999.5) {
            v /= 1e3;
            u++;
        }
        unit = time_units[u];
    }
    snprintf(out, len, v >= 99.95 ? "%.0f %s" : "%.3g %s", v, unit);
}

void bench_line(const char *name, const char *unit, const struct bench_summary *fig,
                const char *base_name, const struct bench_summary *base)
{
    char med[32], lo[32], hi[32], ratio[160] = "";
    bench_format(med, sizeof med, fig->median, unit);
    bench_format(lo, sizeof lo, fig->min, unit);
    bench_format(hi, sizeof hi, fig->max, unit);
    if (fig->n == 0) {
        printf("  %-52s %10s %10s %10s %4s  (not measured)\n", name, "-", "-", "-", "0");
        fflush(stdout);
        return;
    }
    if (base_name != NULL && base_name[0] == '\0') {
        /* A figure without a baseline: a count or a size read on its own. */
    } else if (base_name != NULL && base != NULL && base->n > 0 && base->median > 0) {
        double r = fig->median / base->median;
        if (r < 0.995 && r > 0)
            snprintf(ratio, sizeof ratio, "%.3gx %s (%.3gx less)", r, base_name, 1 / r);
        else
            snprintf(ratio, sizeof ratio, "%.3gx %s", r, base_name);
    } else if (base_name != NULL) {
        snprintf(ratio, sizeof ratio, "(baseline %s not measured)", base_name);
    } else {
        snprintf(ratio, sizeof ratio, "(baseline)");
    }
    printf("  %-52s %10s %10s %10s %4zu  %s\n", name, med, lo, hi, fig->n, ratio);
    fflush(stdout);
}

void bench_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("  note: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    fflush(stdout);
}

void bench_rng_seed(struct bench_rng *r, uint64_t seed)
{
    /* Zero is the one state xorshift never leaves. */
    r->state = seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull;
    if (r->state == 0)
        r->state = 1;
}

uint64_t bench_rng_next(struct bench_rng *r)
{
    uint64_t x = r->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->state = x;
    return x * 0x2545f4914f6cdd1dull;
}

uint64_t bench_rng_below(struct bench_rng *r, uint64_t n)
{
    /* The modulo bias is below 2^-40 for every n used here (n < 2^24 pages). */
    return bench_rng_next(r) % n;
}

size_t bench_count_mappings(void)
{
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[65536];
    size_t lines = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        for (ssize_t i = 0; i < n; i++)
            lines += buf[i] == '\n';
    close(fd);
    return lines;
}

void bench_code_template(unsigned char *tmpl, size_t size)
{
    memset(tmpl, 0xcc, size);
    tmpl[0] = 0xb8; /* mov eax, imm32 */
    tmpl[5] = 0xc3; /* ret */
}

void bench_check_function(const void *rx, uint32_t index, const char *who)
{
    uint32_t (*fn)(void);
    memcpy(&fn, &rx, sizeof fn);
    if (fn() != index) {
        fprintf(stderr, "bench: %s: function %u returned the wrong value\n", who, index);
        exit(1);
    }
}
