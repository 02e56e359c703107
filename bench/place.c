/*
 * bench/place: how long it takes to create a 64 MiB cache within rel32 reach of a helper, in a
 * process whose map holds 100, 1,000, 10,000 and 60,000 mappings, against
 *
 *   - the original post's search, re-implemented here from its description in FACTS.md
 *     (original_search below): its time and how often it fails;
 *   - one read of /proc/self/maps, the floor for any placement that scans the map;
 *
 * and, in a sparse process, proof that the probe fast path reads no map at all: every open of a
 * "maps" file made while code_cache_create runs is counted (open, openat and fopen are
 * interposed below; the program is linked with -rdynamic so the library's calls land here).
 *
 * The slow path is measured too: with CODE_CACHE_NO_RANDOM=1 the library skips its random probes
 * and scans the map. The library may read that variable once per process, so this program runs
 * itself again with it set (--no-random) and prints that part from the child.
 *
 * Layout. The inflation mappings are 1-16 pages, PROT_NONE and PROT_READ alternately (so that
 * neighbours never merge), MAP_NORESERVE, in 16 runs: the +-2 GiB window around the helper is cut
 * into 16 slots of 256 MiB and each slot holds one run of densely packed mappings (0 or 1 page
 * apart) at a random offset. Why runs and not mappings scattered one by one over the window:
 * 1,000 or more mappings scattered uniformly leave no free 64 MiB anywhere within reach (the
 * largest gap shrinks like window/N * ln N), so the only correct answer would be ENOMEM. That
 * case is measured too ("uniform"), for the time it takes to say no.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "code_cache.h"
#include "bench.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define PAGE       ((size_t)4096)
#define GIB        ((uintptr_t)1 << 30)
#define MIB        ((size_t)1 << 20)
#define CACHE_SIZE (64 * MIB)
#define SLOTS      16

/* ---- Counting the library's reads of the map ---- */

static volatile int count_maps_opens; /* on only while code_cache_create runs */
static volatile long maps_opens;

static void note_open(const char *path)
{
    if (!count_maps_opens || path == NULL)
        return;
    size_t len = strlen(path);
    if (len >= 5 && strcmp(path + len - 5, "/maps") == 0)
        __atomic_fetch_add(&maps_opens, 1, __ATOMIC_RELAXED);
}

static mode_t open_mode(int flags, va_list ap)
{
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...);
int openat(int dirfd, const char *path, int flags, ...);

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    note_open(path);
    return (int)syscall(SYS_openat, AT_FDCWD, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    note_open(path);
    return (int)syscall(SYS_openat, dirfd, path, flags, mode);
}

/* The 64-bit names are the same functions on x86-64. */
int open64(const char *path, int flags, ...) __attribute__((alias("open")));
int openat64(int dirfd, const char *path, int flags, ...) __attribute__((alias("openat")));

/* glibc's fopen opens through an internal alias that no interposer sees: catch fopen itself. */
FILE *fopen(const char *path, const char *mode);
FILE *fopen64(const char *path, const char *mode);

FILE *fopen(const char *path, const char *mode)
{
    static FILE *(*real)(const char *, const char *);
    if (real == NULL)
        real = (FILE * (*)(const char *, const char *)) dlsym(RTLD_NEXT, "fopen");
    note_open(path);
    return real(path, mode);
}

FILE *fopen64(const char *path, const char *mode)
{
    static FILE *(*real)(const char *, const char *);
    if (real == NULL)
        real = (FILE * (*)(const char *, const char *)) dlsym(RTLD_NEXT, "fopen64");
    note_open(path);
    return real(path, mode);
}

/* ---- The helper the cache must reach, and the process map ---- */

__attribute__((noinline)) int place_helper(int x);
__attribute__((noinline)) int place_helper(int x)
{
    return x + 1;
}

static char *maps_buf;
static size_t maps_cap = 64 * MIB;

/* One bulk read of /proc/self/maps: the floor of every scan. Returns its length. */
static size_t maps_slurp(void)
{
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) {
        perror("place: /proc/self/maps");
        exit(2);
    }
    size_t len = 0;
    ssize_t n;
    while ((n = read(fd, maps_buf + len, maps_cap - 1 - len)) > 0)
        len += (size_t)n;
    close(fd);
    maps_buf[len] = '\0';
    return len;
}

struct map_summary {
    size_t lines;
    size_t largest_gap;  /* largest free span within [lo, hi) */
    size_t fitting_gaps; /* free spans within [lo, hi) that can hold the cache */
};

static struct map_summary maps_summarize(uintptr_t lo, uintptr_t hi)
{
    struct map_summary s = {0};
    size_t len = maps_slurp();
    uintptr_t prev = lo;
    for (char *p = maps_buf; p < maps_buf + len;) {
        char *nl = memchr(p, '\n', (size_t)(maps_buf + len - p));
        if (nl == NULL)
            break;
        uintptr_t start = strtoul(p, NULL, 16), end = strtoul(strchr(p, '-') + 1, NULL, 16);
        s.lines++;
        if (end > lo && start < hi) {
            uintptr_t gap_end = start < hi ? start : hi;
            if (gap_end > prev) {
                size_t gap = gap_end - prev;
                if (gap > s.largest_gap)
                    s.largest_gap = gap;
                if (gap >= CACHE_SIZE + 2 * PAGE)
                    s.fitting_gaps++;
            }
        }
        if (end > prev)
            prev = end;
        p = nl + 1;
    }
    if (hi > prev) {
        size_t gap = hi - prev;
        if (gap > s.largest_gap)
            s.largest_gap = gap;
        if (gap >= CACHE_SIZE + 2 * PAGE)
            s.fitting_gaps++;
    }
    return s;
}

/* ---- Inflating the map ---- */

struct region {
    uintptr_t start;
    size_t len;
};

struct layout {
    struct region *regions; /* what to unmap afterwards */
    size_t count, cap;
};

static void layout_add(struct layout *l, uintptr_t start, size_t len)
{
    if (l->count == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->regions = realloc(l->regions, l->cap * sizeof *l->regions);
        if (l->regions == NULL) {
            perror("place: realloc");
            exit(2);
        }
    }
    l->regions[l->count++] = (struct region){start, len};
}

static void layout_remove(struct layout *l)
{
    for (size_t i = 0; i < l->count; i++)
        munmap((void *)l->regions[i].start, l->regions[i].len);
    l->count = 0;
}

/* Reserves [a - PAGE, a + len + PAGE) with NOREPLACE, so that nothing touches [a, a + len), then
 * gives the two guard pages back. False when anything is in the way. */
static bool claim_isolated(uintptr_t a, size_t len)
{
    void *want = (void *)(a - PAGE);
    void *p = mmap(want, len + 2 * PAGE, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED)
        return false;
    if (p != want) {
        fprintf(stderr, "place: MAP_FIXED_NOREPLACE was not honoured; cannot build layouts\n");
        exit(2);
    }
    munmap(want, PAGE);
    munmap((void *)(a + len), PAGE);
    return true;
}

/* The window the inflation spreads over: +-2 GiB around the helper. */
static void helper_window(uintptr_t *lo, uintptr_t *hi)
{
    uintptr_t h = (uintptr_t)place_helper & ~(uintptr_t)(PAGE - 1);
    *lo = h > 2 * GIB + PAGE ? h - 2 * GIB : PAGE;
    *hi = h + 2 * GIB;
}

/* SLOTS runs of packed mappings, one per 256 MiB slot of the window (see the top comment). */
static void inflate_runs(struct layout *l, size_t mappings, uint64_t seed)
{
    uintptr_t lo, hi;
    helper_window(&lo, &hi);
    size_t slot = (hi - lo) / SLOTS / PAGE * PAGE;
    struct bench_rng rng;
    bench_rng_seed(&rng, seed);
    size_t left = mappings;
    size_t *pages = malloc((mappings + 1) * sizeof *pages);
    unsigned char *gaps = malloc(mappings + 1);
    if (pages == NULL || gaps == NULL) {
        perror("place: malloc");
        exit(2);
    }
    for (int i = 0; i < SLOTS && left > 0; i++) {
        size_t k = left / (size_t)(SLOTS - i);
        if (i == SLOTS - 1)
            k = left;
        if (k == 0)
            continue;
        size_t extent = 0;
        for (size_t j = 0; j < k; j++) {
            pages[j] = 1 + bench_rng_below(&rng, 16);
            gaps[j] = j + 1 < k ? (unsigned char)bench_rng_below(&rng, 2) : 0;
            extent += (pages[j] + gaps[j]) * PAGE;
        }
        if (extent + 2 * PAGE >= slot)
            continue; /* cannot happen below ~29,000 mappings per slot; the count check says so */
        uintptr_t a = 0;
        for (int tries = 0; tries < 256 && a == 0; tries++) {
            uintptr_t cand = lo + (uintptr_t)i * slot + PAGE +
                             bench_rng_below(&rng, (slot - extent - 2 * PAGE) / PAGE) * PAGE;
            if (claim_isolated(cand, extent))
                a = cand;
        }
        if (a == 0)
            continue; /* the slot is taken (the executable, the heap): the next slots take more */
        layout_add(l, a, extent);
        uintptr_t at = a;
        for (size_t j = 0; j < k; j++) {
            /* Alternate protections: two neighbours never merge into one line. */
            if (j % 2 == 1 && mprotect((void *)at, pages[j] * PAGE, PROT_READ) != 0) {
                perror("place: mprotect (inflation)");
                exit(2);
            }
            at += pages[j] * PAGE;
            if (gaps[j] != 0 && munmap((void *)at, gaps[j] * PAGE) != 0) {
                perror("place: munmap (inflation)");
                exit(2);
            }
            at += gaps[j] * PAGE;
        }
        left -= k;
    }
    free(pages);
    free(gaps);
}

/* Mappings scattered one by one, uniformly over the window: no room left for the cache. */
static void inflate_uniform(struct layout *l, size_t mappings, uint64_t seed)
{
    uintptr_t lo, hi;
    helper_window(&lo, &hi);
    struct bench_rng rng;
    bench_rng_seed(&rng, seed);
    for (size_t j = 0; j < mappings;) {
        size_t len = (1 + bench_rng_below(&rng, 16)) * PAGE;
        uintptr_t a = lo + PAGE + bench_rng_below(&rng, (hi - lo - len - 2 * PAGE) / PAGE) * PAGE;
        if (!claim_isolated(a, len))
            continue;
        if (j % 2 == 1)
            mprotect((void *)a, len, PROT_READ);
        layout_add(l, a, len);
        j++;
    }
}

/* ---- The original post's search, re-implemented from FACTS.md ---- */

struct original_result {
    bool ok;        /* a region within reach was mapped */
    bool timed_out; /* gave up at the deadline: counted as a failure */
    long rescans;   /* rewinds of /proc/self/maps */
    int eexist;     /* mmap calls that failed with EEXIST */
    void *addr;
};

/*
 * What FACTS.md describes, as literally as it can be read: read /proc/self/maps with fopen and
 * fgets, line by line; find the mapping holding the symbol; try the region ending right where
 * that mapping starts; on every line whose mapping lies entirely inside the candidate region
 * (the only conflict the search notices), move the candidate down one page and rewind the file;
 * when a whole pass finds no conflict, mmap with MAP_FIXED_NOREPLACE; on EEXIST move down one page
 * and try again, up to 32 times. Only downwards. We add what the post lacks so that the
 * comparison is fair to it rather than to us: the same mmap flags as the library, a failure (not a
 * success) when the result is out of reach, and a deadline so the benchmark finishes.
 */
static struct original_result original_search(const void *sym, size_t size, double deadline_ns)
{
    struct original_result r = {0};
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL)
        return r;
    char line[512];
    uintptr_t s = (uintptr_t)sym, start, end, cand = 0;
    bool found = false;
    while (fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, "%lx-%lx", &start, &end) != 2)
            continue;
        if (s >= start && s < end) {
            cand = start - size;
            found = true;
            break;
        }
    }
    int tries = 0;
    while (found) {
        if (cand < PAGE || cand > s || s - cand > 2 * GIB - size) {
            break; /* fell off the bottom of the address space, or out of reach */
        }
        if (bench_now_ns() > deadline_ns) {
            r.timed_out = true;
            break;
        }
        bool conflict = false;
        rewind(f);
        r.rescans++;
        while (fgets(line, sizeof line, f) != NULL) {
            if (sscanf(line, "%lx-%lx", &start, &end) != 2)
                continue;
            if (start >= cand && end <= cand + size) {
                conflict = true;
                break;
            }
        }
        if (conflict) {
            cand -= PAGE;
            continue;
        }
        void *p = mmap((void *)cand, size, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
        if (p != MAP_FAILED) {
            if (p == (void *)cand) {
                r.ok = true;
                r.addr = p;
            } else {
                munmap(p, size);
            }
            break;
        }
        if (errno != EEXIST)
            break;
        r.eexist++;
        if (++tries >= 32)
            break;
        cand -= PAGE;
    }
    fclose(f);
    return r;
}

/* ---- Measuring ---- */

struct level {
    const char *name;
    size_t lines; /* total lines wanted in /proc/self/maps; 0: no inflation */
    bool uniform;
};

static double baseline_budget_ns; /* what is left for the original search, all levels */
static const double baseline_deadline_ns = 15e9; /* per attempt */

static struct code_cache *create_near_helper(void)
{
    struct code_cache_options o = {.size = CACHE_SIZE, .near = (const void *)place_helper};
    return code_cache_create(&o);
}

static void run_level(const struct level *lv, int reps, bool no_random, size_t base_lines)
{
    struct bench_samples lib = {0}, floor = {0}, orig = {0}, opens = {0};
    int lib_fail = 0, lib_errno = 0, orig_fail = 0, orig_timeouts = 0, orig_runs = 0;
    int orig_met_eexist = 0;
    long rescans = 0, eexist = 0;
    size_t lines_lo = (size_t)-1, lines_hi = 0, largest_lo = (size_t)-1, fitting_lo = (size_t)-1;
    bool run_orig =
        !no_random && !lv->uniform && (lv->lines <= 10000 || bench_env_flag("BENCH_FULL"));
    uintptr_t wlo, whi;
    helper_window(&wlo, &whi);

    for (int rep = 0; rep < reps; rep++) {
        struct layout l = {0};
        size_t want = lv->lines > base_lines ? lv->lines - base_lines : 0;
        uint64_t seed = (uint64_t)lv->lines * 1000 + (uint64_t)rep + (lv->uniform ? 7 : 0);
        if (lv->uniform)
            inflate_uniform(&l, want, seed);
        else if (want > 0)
            inflate_runs(&l, want, seed);
        struct map_summary ms = maps_summarize(wlo, whi);
        lines_lo = ms.lines < lines_lo ? ms.lines : lines_lo;
        lines_hi = ms.lines > lines_hi ? ms.lines : lines_hi;
        largest_lo = ms.largest_gap < largest_lo ? ms.largest_gap : largest_lo;
        fitting_lo = ms.fitting_gaps < fitting_lo ? ms.fitting_gaps : fitting_lo;

        /* Three creates and three reads per layout, interleaved so that noise hits both. */
        for (int k = 0; k < 3; k++) {
            maps_opens = 0;
            count_maps_opens = 1;
            double t0 = bench_now_ns();
            struct code_cache *c = create_near_helper();
            double t1 = bench_now_ns();
            count_maps_opens = 0;
            if (c == NULL) {
                lib_fail++;
                lib_errno = errno;
            } else {
                if (!code_cache_reaches(c, (const void *)place_helper)) {
                    fprintf(stderr, "place: the cache does not reach the helper\n");
                    exit(1);
                }
                code_cache_destroy(c);
            }
            bench_add(&lib, t1 - t0);
            bench_add(&opens, (double)maps_opens);
            t0 = bench_now_ns();
            maps_slurp();
            bench_add(&floor, bench_now_ns() - t0);
        }

        if (run_orig && baseline_budget_ns > 0) {
            double t0 = bench_now_ns();
            double limit = baseline_deadline_ns < baseline_budget_ns ? baseline_deadline_ns
                                                                     : baseline_budget_ns;
            struct original_result r =
                original_search((const void *)place_helper, CACHE_SIZE, t0 + limit);
            double t = bench_now_ns() - t0;
            baseline_budget_ns -= t;
            orig_runs++;
            rescans += r.rescans;
            eexist += r.eexist;
            orig_met_eexist += r.eexist > 0;
            if (r.ok)
                munmap(r.addr, CACHE_SIZE);
            else
                orig_fail++;
            if (r.timed_out)
                orig_timeouts++;
            bench_add(&orig, t);
        }
        layout_remove(&l);
    }

    char name[128];
    struct bench_summary fs = bench_summarize(&floor);
    struct bench_summary ls = bench_summarize(&lib);
    struct bench_summary os = bench_summarize(&orig);
    struct bench_summary cs = bench_summarize(&opens);
    const char *tag = no_random ? " NO_RANDOM" : "";
    printf("place %s: %zu-%zu lines in /proc/self/maps; within +-2 GiB of the helper the "
           "largest free gap is >= %zu MiB, gaps that fit the cache >= %zu\n",
           lv->name, lines_lo, lines_hi, largest_lo / MIB, fitting_lo);
    snprintf(name, sizeof name, "place/%s/read-maps-once", lv->name);
    bench_line(name, "ns", &fs, NULL, NULL);
    snprintf(name, sizeof name, "place/%s/libcodecache%s", lv->name, tag);
    bench_line(name, "ns", &ls, "read-maps-once", &fs);
    if (os.n > 0) {
        bench_line(name, "ns", &ls, "original-search", &os);
        snprintf(name, sizeof name, "place/%s/original-search", lv->name);
        bench_line(name, "ns", &os, "read-maps-once", &fs);
    }
    snprintf(name, sizeof name, "place/%s/libcodecache%s maps opened", lv->name, tag);
    bench_line(name, "opens", &cs, "", NULL);
    if (lib_fail > 0)
        bench_note("libcodecache failed %d of %zu creates (%s)%s", lib_fail, ls.n,
                   strerror(lib_errno),
                   lv->uniform ? ": expected, no gap within reach can hold 64 MiB" : "");
    else
        bench_note("libcodecache failed 0 of %zu creates", ls.n);
    if (orig_runs > 0)
        bench_note("original search failed %d of %d runs (%d stopped at the deadline of %.0f s); "
                   "%.0f rewinds and %.1f EEXIST per run on average; %d runs met EEXIST, which "
                   "would all fail if its retry repeated the same search instead of moving on",
                   orig_fail, orig_runs, orig_timeouts, baseline_deadline_ns / 1e9,
                   (double)rescans / orig_runs, (double)eexist / orig_runs, orig_met_eexist);
    else if (!no_random && lv->uniform)
        bench_note("original search not run: no gap fits, it would walk down page by page "
                   "until its deadline");
    else if (!no_random && !run_orig)
        bench_note("original search not run at %s mappings (~30 s a run in FACTS.md; "
                   "BENCH_FULL=1 runs it)",
                   lv->name);
    else if (!no_random)
        bench_note("original search not run: its time budget is spent");
    bench_free(&lib);
    bench_free(&floor);
    bench_free(&orig);
    bench_free(&opens);
}

static size_t current_lines(void)
{
    uintptr_t lo, hi;
    helper_window(&lo, &hi);
    return maps_summarize(lo, hi).lines;
}

int main(int argc, char **argv)
{
    bool no_random = argc > 1 && strcmp(argv[1], "--no-random") == 0;
    maps_buf = malloc(maps_cap);
    if (maps_buf == NULL) {
        perror("place: malloc");
        return 2;
    }
    if (!no_random)
        bench_header("bench/place: create a 64 MiB cache within rel32 reach of a helper");
    /* Nine layouts per level by default: the original search's time depends a lot on the
     * layout, so its median needs more than five of them. */
    int reps = bench_reps(9);
    baseline_budget_ns = (bench_env_flag("BENCH_FULL") ? 600 : 60) * 1e9;

    /* The first create makes the cache's jemalloc arena; later ones reuse it from the pool. */
    code_cache_destroy(create_near_helper());
    size_t base = current_lines();

    static const struct level levels[] = {
        {"sparse", 0, false},           {"100", 100, false},
        {"1000", 1000, false},          {"10000", 10000, false},
        {"10000-uniform", 10000, true}, {"60000", 60000, false},
    };
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
        run_level(&levels[i], reps, no_random, base);

    if (!no_random) {
        /* The slow path, in a fresh process that has CODE_CACHE_NO_RANDOM=1 from the start. */
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            setenv("CODE_CACHE_NO_RANDOM", "1", 1);
            execl("/proc/self/exe", argv[0], "--no-random", (char *)NULL);
            perror("place: exec");
            _exit(2);
        }
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0)
            bench_note("the CODE_CACHE_NO_RANDOM=1 run failed");
    }
    free(maps_buf);
    return 0;
}
