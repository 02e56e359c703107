/*
 * The fault sweep (`make sweep`, then `tests/fault_sweep`): every system call the library makes
 * fails in turn, over fixed scenarios for both backends.
 *
 * For each scenario and each kind of call (mmap, munmap, mprotect, madvise, memfd_create, open,
 * ftruncate, fcntl, fallocate, read of /proc/self/maps, membarrier, prctl), the scenario runs with
 * the Nth call of that kind made by the library failing, for N = 1, 2, ... until a run meets no
 * failure (the scenario makes fewer calls than N). Each run goes through the reference model of
 * tests/model (model.h), which checks after every call that a failing call set the injected
 * errno or one it documents, and that every invariant still holds (no overlap, W^X in both
 * views, the map matches the statistics, find, content, reach...); then the cache must still work
 * (a chunk allocated, written, sealed, run and freed), and after destroy nothing may be left: no
 * mapping of the library's (reservation, view, file), no descriptor, no jemalloc byte.
 *
 * The interposers are tests/fault.c's (mmap, munmap, mprotect, madvise, memfd_create, open,
 * ftruncate, fcntl, fallocate, for the library's calls only), plus three here: read(2) of the
 * library's /proc/self/maps descriptor, syscall(SYS_membarrier, ...) (aarch64), and prctl (the
 * reservation's name in the map).
 *
 *   fault_sweep                  every scenario, every kind; prints the injection points covered
 *   fault_sweep --corpus DIR     writes the scenarios as fuzzing inputs into DIR
 *
 * CODE_CACHE_NO_RANDOM=1 is set, so that placement takes the same path in every run.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fault.h"
#include "helpers.h"
#include "model.h"
#include "proc.h"

/* ---- The two interposers fault.c does not have ---- */

enum extra_kind { EXTRA_READ_MAPS, EXTRA_MEMBARRIER, EXTRA_PRCTL, EXTRA_KINDS };

static struct {
    int kind; /* enum extra_kind, or -1 */
    unsigned nth, calls[EXTRA_KINDS], failures;
    int err;
} extra = {.kind = -1};

static void extra_clear(void)
{
    extra.kind = -1;
    extra.failures = 0;
    memset(extra.calls, 0, sizeof extra.calls);
}

static bool extra_hit(enum extra_kind kind, const void *caller)
{
    if (!test_called_from_library(caller))
        return false;
    unsigned n = ++extra.calls[kind];
    if (extra.kind != (int)kind || n != extra.nth)
        return false;
    extra.failures++;
    errno = extra.err;
    return true;
}

/* Is fd the library's descriptor of /proc/self/maps? */
static bool is_maps(int fd)
{
    char path[64], target[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n <= 0)
        return false;
    target[n] = '\0';
    size_t len = (size_t)n;
    return len > 5 && strcmp(target + len - 5, "/maps") == 0 && strncmp(target, "/proc/", 6) == 0;
}

ssize_t read(int fd, void *buf, size_t count)
{
    const void *caller = __builtin_return_address(0);
    if (test_called_from_library(caller) && is_maps(fd) && extra_hit(EXTRA_READ_MAPS, caller))
        return -1;
    return syscall(SYS_read, fd, buf, count);
}

/* prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME): the name of the reservation in the map, a courtesy
 * that may fail (kernels without CONFIG_ANON_VMA_NAME refuse it with EINVAL). */
int prctl(int option, ...)
{
    va_list ap;
    va_start(ap, option);
    unsigned long a[4];
    for (int i = 0; i < 4; i++)
        a[i] = va_arg(ap, unsigned long);
    va_end(ap);
    if (extra_hit(EXTRA_PRCTL, __builtin_return_address(0)))
        return -1;
    return (int)syscall(SYS_prctl, option, a[0], a[1], a[2], a[3]);
}

/* membarrier has no libc wrapper: the library would call syscall(SYS_membarrier, ...). Every
 * other syscall() goes on to libc's, with the six arguments the kernel takes at most. */
long syscall(long number, ...)
{
    va_list ap;
    va_start(ap, number);
    long a[6];
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
#ifdef SYS_membarrier
    if (number == SYS_membarrier && extra_hit(EXTRA_MEMBARRIER, __builtin_return_address(0)))
        return -1;
#endif
    static long (*real)(long, ...);
    if (real == NULL)
        real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* ---- Kinds of calls ---- */

struct kind {
    const char *name;
    int fault;      /* enum fault_call, or -1 for the extra ones */
    int extra_kind; /* enum extra_kind when fault == -1 */
    int err;        /* what the kernel could answer */
};

static const struct kind kinds[] = {
    {"mmap", FAULT_MMAP, 0, ENOMEM},
    {"munmap", FAULT_MUNMAP, 0, ENOMEM},
    {"mprotect", FAULT_MPROTECT, 0, ENOMEM},
    {"mprotect (exec denied)", FAULT_MPROTECT, 0, EACCES},
    {"madvise", FAULT_MADVISE, 0, EAGAIN},
    {"memfd_create", FAULT_MEMFD_CREATE, 0, EMFILE},
    {"open", FAULT_OPEN, 0, EMFILE},
    {"ftruncate", FAULT_FTRUNCATE, 0, ENOSPC},
    {"fcntl", FAULT_FCNTL, 0, EBUSY},
    {"fallocate", FAULT_FALLOCATE, 0, EOPNOTSUPP},
    {"read of /proc/self/maps", -1, EXTRA_READ_MAPS, EIO},
    {"membarrier", -1, EXTRA_MEMBARRIER, EPERM},
    {"prctl", -1, EXTRA_PRCTL, EINVAL},
};
#define NKINDS (sizeof kinds / sizeof kinds[0])

/* A scenario may have one kind of call fail every time it is made (memfd_create refused, so that
 * the dual backend's tmpfile fallbacks are swept): its failures are not the sweep's. */
static int base_kind = -1;

static unsigned failures_now(void)
{
    unsigned base = base_kind >= 0 ? fault_calls((enum fault_call)base_kind) : 0;
    return fault_failures() - base + extra.failures;
}

/* k == NULL: the scenario's base rule alone. With tests/fault.c's rules, the swept one comes
 * first, so that it judges the calls of its kind. */
static void arm(const struct kind *k, unsigned nth, int base, int base_err)
{
    fault_clear();
    extra_clear();
    if (k != NULL && k->fault >= 0) {
        fault_inject((enum fault_call)k->fault, FAULT_ANY, nth, k->err);
    } else if (k != NULL) {
        extra.kind = k->extra_kind;
        extra.nth = nth;
        extra.err = k->err;
    }
    base_kind = base;
    if (base >= 0)
        fault_also((enum fault_call)base, FAULT_ANY, 0, base_err);
}

static void disarm(void)
{
    fault_clear();
    extra_clear();
    base_kind = -1;
}

/* ---- Scenarios: model inputs, one operation and its argument bytes per line ---- */

struct scenario {
    const char *name;
    uint8_t bytes[1024];
    size_t len;
    int base;     /* a kind of call (enum fault_call) that fails every time, or -1 */
    int base_err; /* and its errno */
};

static void op(struct scenario *s, enum model_op o, ...)
{
    s->bytes[s->len++] = MODEL_OP(o);
    va_list ap;
    va_start(ap, o);
    for (int b; (b = va_arg(ap, int)) >= 0;)
        s->bytes[s->len++] = (uint8_t)b;
    va_end(ap);
}

/* Argument bytes, as model.c reads them (see there): create's selectors index its tables. */
enum {
    SIZE_64K = 3,
    SIZE_256K = 5,
    SIZE_1M = 7,
    SIZE_2M = 13,
    SIZE_64M = 14,
    NEAR_NULL = 0,
    NEAR_HELPER = 6,
    REACH_DEFAULT = 0,
    FLAGS_MPROTECT = 0,
    FLAGS_DUAL = 5,
    FLAGS_HARDEN = 10,
    FLAGS_NEAR_OBJECT = 12,
    ALLOC_SMALL = 0,
    ALLOC_PAGE = 4,
    ALLOC_2PAGES = 5,
    ALLOC_64K = 7,
    ALLOC_REST = 8,
    TARGET_HELPER = 0,
    TARGET_LIBC = 2,
    TARGET_FAR = 3,
};
#define END (-1)

/* A life of a cache: functions bumped and emitted in place, veneers, seal, run, patch, free,
 * reuse, running out of room, reset, and a second cache beside it. */
static void life(struct scenario *s, int size, int near, int flags, int second_flags)
{
    op(s, MOP_CREATE, 0, size, near, REACH_DEFAULT, flags, END);
    op(s, MOP_ALLOC, 0, ALLOC_PAGE, 0, END);               /* A */
    op(s, MOP_FN_CALL, 0, TARGET_HELPER, 0, 0, 0, 9, END); /* in A */
    op(s, MOP_FN_CALL, 0, TARGET_FAR, 0, 0, 0, 7, END);    /* a veneer */
    op(s, MOP_FN_RETURN, 0, 4, 0, 0, 1, 2, END);
    op(s, MOP_SEAL, 0, END);
    op(s, MOP_RUN, 0, END);
    op(s, MOP_PATCH, 0, 1, 0, 0, 0, 0, 42, END);     /* dual: a new value */
    op(s, MOP_ALLOC, 0, ALLOC_64K, 0, END);          /* B */
    op(s, MOP_EMIT, 1, 4, 1, 0, 0, 0, 0, 0, 5, END); /* veneer during the reservation */
    op(s, MOP_FN_CALL, 1, TARGET_LIBC, 0, 0, 0, 3, END);
    op(s, MOP_SEAL, 1, END);
    op(s, MOP_FREE, 0, END); /* A freed */
    for (int i = 0; i < 6; i++)
        op(s, MOP_ALLOC, 0, ALLOC_SMALL, 40 * i, END); /* small ones, in A's span for dual */
    op(s, MOP_ALLOC, 0, ALLOC_REST, 0, END);           /* everything never used */
    op(s, MOP_ALLOC, 0, ALLOC_2PAGES, 0, END);         /* reuse, or ENOSPC */
    op(s, MOP_FN_RETURN, 2, 4, 0, 0, 0, 8, END);
    op(s, MOP_SEAL, 2, END);
    for (int i = 0; i < 4; i++)
        op(s, MOP_FREE, i, END);
    op(s, MOP_FIND, 0, 1, 0, 0, 1, 0, END);
    op(s, MOP_RESET, 0, END);
    op(s, MOP_ALLOC, 0, ALLOC_2PAGES, 0, END);
    op(s, MOP_FN_CALL, 0, TARGET_HELPER, 0, 0, 0, 4, END);
    op(s, MOP_SEAL, 0, END);
    op(s, MOP_CREATE, 1, SIZE_64K, NEAR_NULL, REACH_DEFAULT, second_flags, END);
    op(s, MOP_ALLOC, 1, ALLOC_PAGE, 0, END);
    op(s, MOP_FN_RETURN, 1, 4, 0, 0, 0, 6, END);
    op(s, MOP_SEAL, 1, END);
    op(s, MOP_DESTROY, 0, END);
}

/* The dual backend's batches: more than 4 MiB freed and still committed (CACHE_READY_MAX), given
 * back at once down to the last megabyte freed; then a megabyte ready is reused first. */
static void batches(struct scenario *s)
{
    op(s, MOP_CREATE, 0, SIZE_64M, NEAR_HELPER, REACH_DEFAULT, FLAGS_DUAL, END);
    for (int i = 0; i < 72; i++)
        op(s, MOP_ALLOC, 0, ALLOC_64K, 0, END);
    for (int i = 0; i < 72; i++)
        op(s, MOP_FREE, 0, END);
    op(s, MOP_ALLOC, 0, ALLOC_64K, 0, END);
    op(s, MOP_FN_RETURN, 0, 4, 0, 0, 0, 1, END);
    op(s, MOP_SEAL, 0, END);
}

static unsigned make_scenarios(struct scenario *out)
{
    for (unsigned i = 0; i < 8; i++)
        out[i].base = -1;
    unsigned n = 0;
    out[n] = (struct scenario){.name = "mprotect, near a helper", .base = -1};
    life(&out[n++], SIZE_256K, NEAR_HELPER, FLAGS_MPROTECT, FLAGS_MPROTECT);
    out[n] = (struct scenario){.name = "mprotect, anywhere, near an object", .base = -1};
    life(&out[n++], SIZE_256K, NEAR_NULL, FLAGS_MPROTECT, FLAGS_NEAR_OBJECT);
    out[n] = (struct scenario){.name = "dual, near a helper", .base = -1};
    life(&out[n++], SIZE_256K, NEAR_HELPER, FLAGS_DUAL, FLAGS_DUAL);
    out[n] = (struct scenario){.name = "dual, anywhere, hardened", .base = -1};
    life(&out[n++], SIZE_256K, NEAR_NULL, FLAGS_HARDEN, FLAGS_HARDEN);
    out[n] = (struct scenario){.name = "dual, batches given back", .base = -1};
    batches(&out[n++]);
    /* seccomp refusing memfd_create: the file is an unlinked tmpfile of /dev/shm or $TMPDIR. */
    out[n] = (struct scenario){.name = "dual on a tmpfile (memfd_create refused)",
                               .base = FAULT_MEMFD_CREATE,
                               .base_err = EPERM};
    life(&out[n++], SIZE_256K, NEAR_HELPER, FLAGS_DUAL, FLAGS_DUAL);
    return n;
}

/* ---- The sweep ---- */

static unsigned long long stray_unmapped;

/* Mappings the library may have left: inaccessible reservations and shared (file) mappings that
 * were not there before the run. Only a refused munmap can leave one (the library cannot undo
 * what munmap will not undo): then they are unmapped here and counted, else the run fails. */
static void check_leaks(const struct proc_maps *before, const char *scenario, const struct kind *k,
                        unsigned nth)
{
    struct proc_maps after;
    if (proc_maps_read(&after) != 0) {
        perror("fault sweep: /proc/self/maps");
        exit(1);
    }
    for (size_t i = 0; i < after.n; i++) {
        const struct proc_mapping *x = &after.v[i];
        if (strcmp(x->prot, "---p") != 0 && x->prot[3] != 's')
            continue;
        bool old = false;
        for (size_t j = 0; j < before->n && !old; j++)
            old = before->v[j].lo == x->lo && before->v[j].hi == x->hi &&
                  strcmp(before->v[j].prot, x->prot) == 0;
        if (old)
            continue;
        if (k == NULL || k->fault != FAULT_MUNMAP) {
            fprintf(stderr,
                    "fault sweep: FAILED: %s, %s #%u failing: %#lx-%#lx %s %s left mapped\n",
                    scenario, k != NULL ? k->name : "nothing", nth, (unsigned long)x->lo,
                    (unsigned long)x->hi, x->prot, x->path);
            exit(1);
        }
        munmap((void *)x->lo, x->hi - x->lo);
        stray_unmapped++;
    }
    proc_maps_free(&after);
}

/* A run of a scenario; true when an injected failure was met. */
static bool run(const struct scenario *s, const struct kind *k, unsigned nth)
{
    struct proc_maps before;
    if (proc_maps_read(&before) != 0) {
        perror("fault sweep: /proc/self/maps");
        exit(1);
    }
    struct model_config config = {.failures = failures_now,
                                  .fault_errno = k != NULL ? k->err : s->base_err,
                                  .also_errno = s->base >= 0 ? s->base_err : 0,
                                  .munmap_faults = k != NULL && k->fault == FAULT_MUNMAP};
    struct model *m = model_new(&config);
    arm(k, nth, s->base, s->base_err);
    struct model_input in = {.data = s->bytes, .len = s->len};
    while (model_step(m, &in))
        ;
    bool met = failures_now() > 0;
    disarm();
    /* Whatever happened, the caches still work, and destroying them leaves nothing. */
    model_exercise(m);
    model_end(m);
    check_leaks(&before, s->name, k, nth);
    proc_maps_free(&before);
    return met;
}

int main(int argc, char **argv)
{
    static struct scenario scenarios[8];
    const unsigned nscen = make_scenarios(scenarios);
    if (argc == 3 && strcmp(argv[1], "--corpus") == 0) {
        for (unsigned i = 0; i < nscen; i++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/scenario-%u", argv[2], i);
            FILE *f = fopen(path, "wb");
            if (f == NULL || fwrite(scenarios[i].bytes, 1, scenarios[i].len, f) != scenarios[i].len)
                return 1;
            fclose(f);
        }
        return 0;
    }
    setenv("CODE_CACHE_NO_RANDOM", "1", 1);

    unsigned long long points = 0, uncalled = 0;
    for (unsigned si = 0; si < nscen; si++) {
        const struct scenario *s = &scenarios[si];
        /* Once without failures (but the scenario's own): the baseline. */
        run(s, NULL, 0);
        printf("fault sweep: %s:", s->name);
        for (size_t ki = 0; ki < NKINDS; ki++) {
            const struct kind *k = &kinds[ki];
            if (s->base >= 0 && k->fault == s->base) {
                printf(" %s (always)%s", k->name, ki + 1 < NKINDS ? "," : "\n");
                continue;
            }
            unsigned nth = 1;
            while (run(s, k, nth))
                nth++;
            unsigned covered = nth - 1;
            points += covered;
            if (covered == 0)
                uncalled++;
            printf(" %s %u%s", k->name, covered, ki + 1 < NKINDS ? "," : "\n");
            fflush(stdout);
        }
    }
    printf("fault sweep: %llu injection points covered over %u scenarios and %zu kinds of call "
           "(%llu kind-scenario pairs make no such call), each a documented errno, every "
           "invariant held, nothing leaked (but %llu mappings a refused munmap left), the caches "
           "worked afterwards\n",
           points, nscen, NKINDS, uncalled, stray_unmapped);
    return 0;
}
