/*
 * The model's operations: each decodes its arguments, predicts the library's answer from the
 * model's state and the contract in code_cache.h, makes the call, compares, and updates the
 * model. check.c then checks the whole state (see model.h for the list).
 *
 * Predictions are exact: where the contract says what happens (which errno, where a chunk goes,
 * what a span holds), the model says it too. During a call in which the fault sweep made a system
 * call fail (config.failures moved), a failure with the injected errno or a documented one is
 * accepted instead, and the model takes the outcome from the library's statistics.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <valgrind/valgrind.h>

#include "jit.h"
#include "model_internal.h"
#include "proc.h"

/* errno before every call: a failure that leaves it untouched did not set it. */
#define ERRNO_UNSET 0x7ead

#define X86_REACH ((size_t)1 << 31)
#define MIB       ((size_t)1 << 20)

/* ---- Failure reports ---- */

void model_trace(struct model *m, const char *fmt, ...)
{
    char *line = m->trace[m->ntrace++ % 16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof m->trace[0], fmt, ap);
    va_end(ap);
    static int verbose = -1;
    if (verbose < 0) {
        const char *v = getenv("MODEL_TRACE");
        verbose = v != NULL && *v != '\0' && *v != '0';
    }
    if (verbose)
        fprintf(stderr, "model: #%llu %s\n", (unsigned long long)m->calls, line);
}

void model_fail(struct model *m, const char *fmt, ...)
{
    fprintf(stderr, "\nmodel: FAILED after %llu library calls: ", (unsigned long long)m->calls);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nmodel: the last operations, oldest first:\n");
    unsigned first = m->ntrace > 16 ? m->ntrace - 16 : 0;
    for (unsigned i = first; i < m->ntrace; i++)
        fprintf(stderr, "  %s\n", m->trace[i % 16]);
    for (unsigned s = 0; s < MODEL_SLOTS; s++) {
        if (!m->live[s])
            continue;
        struct code_cache_stats st;
        code_cache_get_stats(m->cache[s].h, &st);
        fprintf(stderr,
                "model: cache %u (%s) base %#lx reserved %zu: in_use %zu committed %zu ahead %zu "
                "ready %zu free %zu never_used %zu retired %zu spans %zu open %zu sealed %zu; "
                "model: %u chunks, bump %zu%s\n",
                s, st.backend, (unsigned long)st.base, st.reserved, st.in_use, st.committed,
                st.committed_ahead, st.free_ready, st.free, st.never_used, st.retired,
                st.free_spans, st.open_chunks, st.sealed_chunks, m->cache[s].nchunks,
                m->cache[s].bump, m->cache[s].tainted ? " (tainted)" : "");
    }
    fflush(stderr);
    abort();
}

/* ---- Known library bugs ---- */

/*
 * Library bugs the model found and that are reported, each with a failing regression test
 * (tests/bug_*.c, in XFAIL_TESTS). The model tolerates them (and counts them) so that fuzzing goes
 * on past them; MODEL_STRICT=1 in the environment makes them failures again. Remove an entry once
 * the library is fixed.
 */
static const char *const known_bugs[] = {
    NULL, /* none open: the last one (commit-einval, tests/commit_errno.c) is fixed */
};
static unsigned long long known_bug_hits[sizeof known_bugs / sizeof known_bugs[0]];

__attribute__((unused)) static bool model_known_bug(struct model *m, const char *id)
{
    static int strict = -1;
    if (strict < 0) {
        const char *v = getenv("MODEL_STRICT");
        strict = v != NULL && *v != '\0' && *v != '0';
    }
    for (size_t i = 0; known_bugs[i] != NULL; i++)
        if (strcmp(known_bugs[i], id) == 0) {
            if (strict)
                return false;
            if (known_bug_hits[i]++ == 0)
                fprintf(stderr,
                        "model: known library bug '%s' met (tolerated; MODEL_STRICT=1 "
                        "makes it fatal)\n",
                        id);
            model_trace(m, "known bug %s", id);
            return true;
        }
    return false;
}

/* ---- Input ---- */

static uint8_t in_byte(struct model_input *in)
{
    if (in->endless) {
        uint64_t z = (in->rng += 0x9e3779b97f4a7c15u);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
        return (uint8_t)((z ^ (z >> 31)) >> 24);
    }
    return in->pos < in->len ? in->data[in->pos++] : 0;
}

static uint32_t in_u32(struct model_input *in)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v = v << 8 | in_byte(in);
    return v;
}

/* ---- Things for the code to call ---- */

__attribute__((noinline)) static int model_helper(int x)
{
    return (int)(3u * (unsigned)x + 1u);
}

static int model_global;

static int model_abs(int x)
{
    return abs(x);
}

bool model_reaches(uintptr_t lo, uintptr_t hi, uintptr_t t, size_t r)
{
    /* Origins (the end of a 5-byte call) run from lo + 5 to hi; each must satisfy
     * -r <= t - o <= r - 1. */
    if (hi < lo + 5)
        return false;
    __int128 first = (__int128)lo + 5, last = (__int128)hi, target = (__int128)t;
    return target - first <= (__int128)r - 1 && target - last >= -(__int128)r;
}

/* A page of our own, far from the executable, holding lea eax, [rdi + rdi + 5]; ret. */
static int (*model_far_function(void))(int)
{
    static const unsigned char code[] = {0x8d, 0x44, 0x3f, 0x05, 0xc3};
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *p = mmap((void *)((uintptr_t)1 << 45), page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    memcpy(p, code, sizeof code);
    if (mprotect(p, page, PROT_READ | PROT_EXEC) != 0) {
        munmap(p, page);
        return NULL;
    }
    return (int (*)(int))p;
}

/* A target chosen by a byte, and what calling it computes. */
static int (*model_target(struct model *m, uint8_t b))(int)
{
    switch (b % 4) {
    case 0:
    case 1:
        return model_helper;
    case 2:
        return model_abs;
    default:
        return m->far != NULL ? m->far : model_helper;
    }
}

/* ---- Calls ---- */

static unsigned model_failures(const struct model *m)
{
    return m->cfg.failures != NULL ? m->cfg.failures() : 0;
}

/* Brackets every library call: errno poisoned before, injected failures noticed after. */
#define CALL(m, expr)                                                                              \
    do {                                                                                           \
        unsigned failures_before_ = model_failures(m);                                             \
        (m)->calls++;                                                                              \
        errno = ERRNO_UNSET;                                                                       \
        expr;                                                                                      \
        if (model_failures(m) != failures_before_)                                                 \
            (m)->fault_now = true;                                                                 \
    } while (0)

/* A call failed: it must have failed with want, or (during an injected failure) with the injected
 * errno or one of the extra ones the call documents for failing system calls. */
static void expect_errno(struct model *m, const char *call, int got, int want)
{
    if (want != 0 && got == want)
        return;
    if (m->fault_now && (got == m->cfg.fault_errno || got == ENOMEM ||
                         (m->cfg.also_errno != 0 && got == m->cfg.also_errno)))
        return;
    if (got == ERRNO_UNSET)
        model_fail(m, "%s failed without setting errno (expected %s)", call, strerror(want));
    model_fail(m, "%s failed with %s (%d), expected %s (%d)", call, strerror(got), got,
               want ? strerror(want) : "success", want);
}

/* An unexpected failure is only excused by an injected one. */
static void expect_success(struct model *m, const char *call, int got)
{
    expect_errno(m, call, got, 0);
}

/* ---- Picking chunks ---- */

static unsigned model_live_chunks(const struct model *m)
{
    unsigned n = 0;
    for (unsigned s = 0; s < MODEL_SLOTS; s++)
        if (m->live[s])
            n += m->cache[s].nchunks;
    return n;
}

static struct mchunk *model_pick(struct model *m, uint8_t b)
{
    unsigned n = model_live_chunks(m);
    if (n == 0)
        return NULL;
    unsigned i = b % n;
    for (unsigned s = 0; s < MODEL_SLOTS; s++) {
        if (!m->live[s])
            continue;
        if (i < m->cache[s].nchunks)
            return m->cache[s].chunk[i];
        i -= m->cache[s].nchunks;
    }
    return NULL;
}

static struct mcache *model_pick_cache(struct model *m, uint8_t b)
{
    unsigned s = b % MODEL_SLOTS;
    if (m->live[s])
        return &m->cache[s];
    if (m->live[1 - s])
        return &m->cache[1 - s];
    return NULL;
}

struct mchunk *model_owner(struct mcache *c, size_t off)
{
    for (unsigned i = 0; i < c->nchunks; i++)
        if (off - c->chunk[i]->off < c->chunk[i]->size)
            return c->chunk[i];
    return NULL;
}

static size_t align_up(size_t x, size_t a)
{
    return (x + a - 1) & ~(a - 1);
}

static uintptr_t chunk_rx(const struct mchunk *ch)
{
    return ch->cache->base + ch->off;
}

static unsigned char *chunk_rw(const struct mchunk *ch)
{
    return (unsigned char *)(ch->cache->rw_base + ch->off);
}

static void chunk_release(struct mcache *c, unsigned index)
{
    struct mchunk *ch = c->chunk[index];
    free(ch->shadow);
    free(ch);
    c->chunk[index] = c->chunk[--c->nchunks];
}

/* ---- Create and destroy ---- */

struct object_range {
    uintptr_t addr, lo, hi;
    bool found;
};

static int object_visit(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct object_range *r = data;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    bool contains = false;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t a = info->dlpi_addr + ph->p_vaddr, b = a + ph->p_memsz;
        lo = a < lo ? a : lo;
        hi = b > hi ? b : hi;
        contains |= r->addr >= a && r->addr < b;
    }
    if (contains) {
        r->lo = lo;
        r->hi = hi;
        r->found = true;
    }
    return contains;
}

static void destroy_cache(struct model *m, unsigned slot)
{
    struct mcache *c = &m->cache[slot];
    model_trace(m, "destroy cache %u", slot);
    CALL(m, code_cache_destroy(c->h));
    while (c->nchunks > 0)
        chunk_release(c, c->nchunks - 1);
    model_kept_forget(c);
    model_stale_drop_cache(m, c);
    m->live[slot] = false;
    const uintptr_t page = c->page;
    check_destroyed(m, c->base - page, c->base + c->reserved + page, "the region");
    if (c->dual && c->rw_known)
        check_destroyed(m, c->rw_base - page, c->rw_base + c->reserved + page, "the RW view");
}

/* Creates a cache in slot from four selector bytes; valid_only keeps to options that must work
 * (a cache that an operation needs). */
static void create_cache(struct model *m, unsigned slot, const uint8_t sel[4], bool valid_only)
{
    static const size_t reaches[] = {0, 0,        0,        0,   0,         0,
                                     0, 16 * MIB, 16 * MIB, MIB, X86_REACH, X86_REACH + 4096};
    /* The first twelve must work (valid_only); then misuse. CODE_CACHE_PERF_MAP and
     * CODE_CACHE_PERF_JITDUMP are left out: they write files and keep a descriptor open for the
     * process, which the model's leak checks would count. */
    static const unsigned flag_sets[] = {0,
                                         0,
                                         0,
                                         CODE_CACHE_GDB_JIT,
                                         0,
                                         CODE_CACHE_DUAL_MAP,
                                         CODE_CACHE_DUAL_MAP,
                                         CODE_CACHE_DUAL_MAP,
                                         CODE_CACHE_DUAL_MAP | CODE_CACHE_GDB_JIT,
                                         CODE_CACHE_DUAL_MAP,
                                         CODE_CACHE_DUAL_MAP | CODE_CACHE_DUAL_HARDEN,
                                         CODE_CACHE_DUAL_MAP | CODE_CACHE_DUAL_HARDEN,
                                         CODE_CACHE_NEAR_OBJECT,
                                         CODE_CACHE_DUAL_MAP | CODE_CACHE_NEAR_OBJECT,
                                         CODE_CACHE_DUAL_HARDEN,
                                         0x80,
                                         CODE_CACHE_BTI,
                                         CODE_CACHE_DUAL_MAP | CODE_CACHE_BTI};
    static const size_t sizes[] = {4096, 8192,  16384, 65536,           65536, 262144,  262144, MIB,
                                   MIB,  12288, 24576, 3 * MIB + 12345, 100,   2 * MIB, 0,      1};
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const unsigned nsizes = valid_only ? 9 : 16, nnear = valid_only ? 13 : 16,
                   nreach = valid_only ? 1 : 12, nflags = valid_only ? 12 : 18;
    struct code_cache_options o = {0};
    o.reach = reaches[sel[2] % nreach];
    /* Thread caches on (where they work) for half of the caches. */
    o.flags = flag_sets[sel[3] % nflags] | (sel[1] & 0x10 ? CODE_CACHE_NO_THREAD_CACHE : 0);
    const size_t reach = o.reach ? o.reach : X86_REACH;
    unsigned si = sel[0] % nsizes;
    o.size = sizes[si];
    if (si == 15)
        o.size = 2 * reach + 1; /* too large for the reach: EINVAL */
    unsigned ni = sel[1] % nnear;
    if (ni < 6)
        o.near = NULL;
    else if (ni < 11)
        o.near = (const void *)model_helper;
    else if (ni < 13)
        o.near = &model_global;
    else if (ni == 13)
        o.near = m->far != NULL ? (const void *)m->far : (const void *)model_helper;
    else if (ni == 14)
        o.near = (const void *)UINTPTR_MAX;
    else
        o.near = (const void *)(((uintptr_t)1 << 47) - page - 1);
    const uint8_t size_sel = (uint8_t)si, near_sel = (uint8_t)ni;
    if (m->live[slot])
        destroy_cache(m, slot);

    /* The contract's answer, as far as it can be known in advance. */
    const size_t size = o.size ? o.size : 64 * MIB;
    /* CODE_CACHE_BTI is EINVAL on x86-64 (no BTI): not among the flags that work. */
    const unsigned known = CODE_CACHE_NEAR_OBJECT | CODE_CACHE_DUAL_MAP | CODE_CACHE_DUAL_HARDEN |
                           CODE_CACHE_PERF_MAP | CODE_CACHE_PERF_JITDUMP | CODE_CACHE_GDB_JIT |
                           CODE_CACHE_NO_THREAD_CACHE;
    uintptr_t tlo = (uintptr_t)o.near, thi = tlo + 1;
    int want = 0;
    bool may_fail = false; /* ENOMEM or ERANGE are possible: the window may be full or clipped */
    struct object_range obj = {.addr = (uintptr_t)o.near};
    if ((o.flags & ~known) ||
        ((o.flags & CODE_CACHE_DUAL_HARDEN) && !(o.flags & CODE_CACHE_DUAL_MAP)) ||
        o.reach > X86_REACH || ((o.flags & CODE_CACHE_NEAR_OBJECT) && o.near == NULL) ||
        size > 2 * reach) {
        want = EINVAL;
    } else if (o.near != NULL && thi == 0) {
        want = ERANGE;
    } else if (o.flags & CODE_CACHE_NEAR_OBJECT) {
        dl_iterate_phdr(object_visit, &obj);
        if (!obj.found)
            want = EINVAL;
        else
            tlo = obj.lo, thi = obj.hi;
    }
    const size_t map_size = align_up(size, page) + 2 * page;
    if (want == 0 && o.near != NULL) {
        if (map_size + (thi - tlo) > 2 * reach + 5)
            want = EINVAL;
        else if (reach < 64 * MIB || map_size + (thi - tlo) > reach / 2 || size_sel == 14 ||
                 o.near == (const void *)m->far || near_sel == 15)
            may_fail = true;
    }

    model_trace(m, "create slot %u size %zu near %p reach %#zx flags %#x: expect %s%s", slot,
                o.size, o.near, o.reach, o.flags, want ? strerror(want) : "success",
                may_fail ? " (or ENOMEM/ERANGE)" : "");
    struct code_cache *h;
    CALL(m, h = code_cache_create(&o));
    int err = errno;
    if (h == NULL) {
        if (want == 0 && may_fail && (err == ENOMEM || err == ERANGE))
            return;
        if (want == 0)
            expect_success(m, "code_cache_create", err);
        else
            expect_errno(m, "code_cache_create", err, want);
        return;
    }
    if (want != 0)
        model_fail(m, "code_cache_create succeeded; expected %s", strerror(want));

    struct mcache *c = &m->cache[slot];
    *c = (struct mcache){0};
    c->h = h;
    c->dual = (o.flags & CODE_CACHE_DUAL_MAP) != 0;
    c->harden = (o.flags & CODE_CACHE_DUAL_HARDEN) != 0;
    c->tcache =
        c->dual && !c->harden && !(o.flags & CODE_CACHE_NO_THREAD_CACHE) && model_tcache_works();
    c->page = page;
    c->granule = c->dual ? 64 : page;
    c->reach = reach;
    c->near = o.near;
    c->has_target = o.near != NULL;
    c->tlo = tlo;
    c->thi = thi;
    c->content_due = true;
    struct code_cache_stats st;
    code_cache_get_stats(h, &st);
    c->base = st.base;
    c->reserved = st.reserved;
    if (st.reserved != align_up(size, page))
        model_fail(m, "reserved %zu for a size of %zu", st.reserved, size);
    if (!c->dual) {
        c->rw_base = c->base;
        c->rw_known = true;
    }
    m->live[slot] = true;
    if (c->dual)
        check_find_rw_view(m, c);
}

static void op_create(struct model *m, struct model_input *in)
{
    unsigned slot = in_byte(in) % MODEL_SLOTS;
    uint8_t sel[4] = {in_byte(in), in_byte(in), in_byte(in), in_byte(in)};
    /* An empty slot first: a create replaces a cache only when both are taken. */
    if (m->live[slot] && !m->live[1 - slot])
        slot = 1 - slot;
    create_cache(m, slot, sel, false);
}

/* A cache for an operation that needs one, when there is none. */
static struct mcache *need_cache(struct model *m, struct model_input *in)
{
    uint8_t b = in_byte(in);
    struct mcache *c = model_pick_cache(m, b);
    if (c != NULL)
        return c;
    uint8_t sel[4] = {in_byte(in), in_byte(in), in_byte(in), in_byte(in)};
    create_cache(m, 0, sel, true);
    return m->live[0] ? &m->cache[0] : NULL;
}

static void op_destroy(struct model *m, struct model_input *in)
{
    unsigned slot = in_byte(in) % MODEL_SLOTS;
    if (m->live[slot])
        destroy_cache(m, slot);
}

/* ---- Reset ---- */

static void op_reset(struct model *m, struct model_input *in)
{
    struct mcache *c = model_pick_cache(m, in_byte(in));
    if (c == NULL)
        return;
    model_trace(m, "reset cache at %#lx (%u chunks)", (unsigned long)c->base, c->nchunks);
    int rc;
    CALL(m, rc = code_cache_reset(c->h));
    /* Before anything else, failing or not, it took back what the thread keeps. */
    model_kept_give_back_all(m, c, &m->tcache.given_back_reset);
    if (rc != 0) {
        expect_success(m, "code_cache_reset", errno);
        return; /* nothing changed (checked by check_all) */
    }
    const size_t ahead = c->fifo_count;
    while (c->nchunks > 0) {
        struct mchunk *ch = c->chunk[c->nchunks - 1];
        if (m->nstale < MODEL_MAX_STALE)
            m->stale[m->nstale++] = (struct mstale){.h = ch->h,
                                                    .cache = c,
                                                    .off = ch->off,
                                                    .size = ch->size,
                                                    .ahead = ahead,
                                                    .pops_at = c->pops};
        c->fifo_count++;
        chunk_release(c, c->nchunks - 1);
    }
    c->bump = 0;
    c->nretired = 0;
    c->tainted = false;
    c->content_due = true;
}

/* ---- Alloc ---- */

/* The lowest-first runs of granules below the bump pointer that no live chunk or retired span
 * holds: the freed spans. Calls visit(start, end) for each; returns their number. */
static int kept_by_offset(const void *a, const void *b)
{
    const struct mkept *x = a, *y = b;
    return (x->off > y->off) - (x->off < y->off);
}

static size_t model_free_runs(struct mcache *c, void (*visit)(void *, size_t, size_t), void *arg)
{
    /* What the thread cache keeps is out of the index too: walked along in address order. */
    struct mkept *kept = NULL;
    if (c->nkept > 0) {
        kept = malloc(c->nkept * sizeof *kept);
        if (kept == NULL)
            abort();
        memcpy(kept, c->kept, c->nkept * sizeof *kept);
        qsort(kept, c->nkept, sizeof *kept, kept_by_offset);
    }
    unsigned next_kept = 0;
    size_t runs = 0, start = SIZE_MAX;
    for (size_t off = 0; off < c->bump;) {
        struct mchunk *ch = model_owner(c, off);
        while (next_kept < c->nkept && kept[next_kept].off + kept[next_kept].size <= off)
            next_kept++;
        const struct mkept *k = ch == NULL && next_kept < c->nkept && kept[next_kept].off <= off
                                    ? &kept[next_kept]
                                    : NULL;
        size_t step = ch != NULL  ? ch->off + ch->size - off
                      : k != NULL ? k->off + k->size - off
                                  : c->granule;
        bool busy = ch != NULL || k != NULL || model_retired_span(c, off);
        if (!busy && start == SIZE_MAX)
            start = off;
        if (busy && start != SIZE_MAX) {
            runs++;
            if (visit)
                visit(arg, start, off);
            start = SIZE_MAX;
        }
        off += step;
    }
    if (start != SIZE_MAX) {
        runs++;
        if (visit)
            visit(arg, start, c->bump);
    }
    free(kept);
    return runs;
}

size_t model_holes(struct mcache *c)
{
    return model_free_runs(c, NULL, NULL);
}

struct fit {
    size_t n;
    bool any;
    size_t lo[64], hi[64];
    unsigned count;
};

static void fit_visit(void *arg, size_t start, size_t end)
{
    struct fit *f = arg;
    if (end - start >= f->n) {
        f->any = true;
        if (f->count < 64) {
            f->lo[f->count] = start;
            f->hi[f->count] = end;
            f->count++;
        }
    }
}

/* code_cache_alloc of a size chosen by sel and extra, checked; the new chunk or NULL. */
static struct mchunk *alloc_sized(struct model *m, struct mcache *c, size_t size);

static struct mchunk *alloc_chunk(struct model *m, struct mcache *c, uint8_t sel, uint8_t extra)
{
    if (c == NULL || c->nchunks == MODEL_MAX_CHUNKS)
        return NULL;
    size_t size;
    switch (sel % 12) {
    case 0:
    case 1:
        size = 1 + extra % 64;
        break;
    case 2:
    case 3:
        size = 100 + (size_t)extra * 8;
        break;
    case 4:
        size = c->page;
        break;
    case 5:
        size = 2 * c->page + 1;
        break;
    case 6:
        size = 16384;
        break;
    case 7:
        size = 65536;
        break;
    case 8: /* exactly what is left above the bump pointer */
        size = c->reserved - c->bump;
        break;
    case 9:
        size = c->reserved;
        break;
    case 10:
        size = extra & 1 ? c->reserved + 1 : SIZE_MAX;
        break;
    default:
        size = extra & 1 ? 0 : 1 + (size_t)extra * 64;
        break;
    }
    /* Chunks the model would have to shadow byte by byte are kept to a few MiB. */
    if (size > 4 * MIB && size <= c->reserved)
        size = 4 * MIB;
    return alloc_sized(m, c, size);
}

/* code_cache_alloc(size), checked; the new chunk or NULL. */
static struct mchunk *alloc_sized(struct model *m, struct mcache *c, size_t size)
{

    /* The contract: never-used space first, unless 512 freed spans wait, or a megabyte of freed
     * spans waits still committed ("ready", lib/cache.c's CACHE_READY_QUARANTINE): then the lowest
     * ready span that fits; else the lowest freed span that fits (a ready one before a cold one:
     * which is which the model does not know, so with a megabyte ready either is accepted). */
    struct code_cache_stats ready_now;
    code_cache_get_stats(c->h, &ready_now);
    /* The index's ready bytes: what the thread cache keeps is not in it. */
    const bool ready_reused = ready_now.free_ready >= MODEL_READY_QUARANTINE + c->kept_bytes;
    int want = 0;
    bool inside = false; /* a record was taken before failing */
    const size_t n = size == 0 || size > c->reserved ? 0 : align_up(size, c->granule);
    struct fit fit = {.n = n};
    size_t holes = 0;
    bool at_bump = false;
    /* A kept chunk of this size whose quarantine is over comes back first, without the lock. */
    const struct mkept *due = n != 0 ? model_kept_due(c, n) : NULL;
    const size_t due_off = due != NULL ? due->off : 0;
    const struct code_chunk *due_h = due != NULL ? due->h : NULL;
    /* Otherwise the record is taken first: from the FIFO of freed ones if enough wait. */
    const bool from_fifo = due == NULL && c->fifo_count > MODEL_QUARANTINE;
    bool drained = false;
    if (size == 0) {
        want = EINVAL;
    } else if (size > c->reserved) {
        want = ENOSPC;
    } else if (due == NULL) {
        holes = model_free_runs(c, fit_visit, &fit);
        const bool fresh = n <= c->reserved - c->bump;
        const bool crowded = holes >= MODEL_QUARANTINE_HOLES;
        inside = true;
        if (fresh && (!crowded || !fit.any)) {
            at_bump = true;
        } else if (!fit.any && c->nkept > 0) {
            /* No room: what the thread keeps goes back to the index, and the search again. */
            model_kept_give_back_all(m, c, &m->tcache.given_back_no_room);
            drained = true;
            fit = (struct fit){.n = n};
            holes = model_free_runs(c, fit_visit, &fit);
        }
        if (!at_bump && !fit.any)
            want = ENOSPC;
    }
    model_trace(m, "alloc %zu in cache %#lx: expect %s%s", size, (unsigned long)c->base,
                want      ? strerror(want)
                : due     ? "the kept chunk"
                : at_bump ? "at the bump pointer"
                          : "in a freed span",
                drained ? " (after taking back what the thread kept)" : "");
    struct code_cache_stats before;
    code_cache_get_stats(c->h, &before);
    struct code_chunk *h;
    CALL(m, h = code_cache_alloc(c->h, size));
    int err = errno;
    /* A failure before the search may have come before the thread's chunks were taken back. */
    if (drained && m->fault_now)
        c->tainted = true;
    if (h == NULL) {
        if (want == 0 && c->tainted && err == ENOSPC)
            want = ENOSPC;
        if (want == 0)
            expect_success(m, "code_cache_alloc", err);
        else
            expect_errno(m, "code_cache_alloc", err, want);
        if (inside && !from_fifo)
            c->fifo_count++; /* the record taken for it waits at the head of the FIFO */
        return NULL;
    }
    if (want != 0)
        model_fail(m, "code_cache_alloc(%zu) succeeded; expected %s", size, strerror(want));
    struct code_span span;
    CALL(m, span = code_chunk_span(h));
    const size_t off = (uintptr_t)span.rx - c->base;
    if (span.size != n || off % c->granule != 0 || off + n > c->reserved)
        model_fail(m, "alloc(%zu): span rx %p size %zu; expected %zu bytes inside [%#lx, +%zu)",
                   size, span.rx, span.size, n, (unsigned long)c->base, c->reserved);
    if (!c->rw_known) {
        c->rw_base = (uintptr_t)span.rw - off;
        c->rw_known = true;
    }
    if ((uintptr_t)span.rw != c->rw_base + off)
        model_fail(m, "alloc: span rw %p, expected %#lx", span.rw,
                   (unsigned long)(c->rw_base + off));
    const bool exact = !c->tainted && !m->fault_now;
    const bool popped = model_alloc_record(m, c, h, off, from_fifo);
    if (exact && (popped != (due != NULL) || (popped && (h != due_h || off != due_off))))
        model_fail(m, "alloc(%zu): %s at offset %zu; expected %s", size,
                   popped ? "a kept chunk" : "a new one", off,
                   due != NULL ? "the oldest kept chunk of that size" : "no kept chunk");
    /* A span the thread keeps is nobody else's. (Once the model is unsure of what it keeps, the
     * library says: the span was not kept.) */
    for (unsigned i = 0; !popped && i < c->nkept;) {
        if (c->kept[i].off < off + n && off < c->kept[i].off + c->kept[i].size) {
            if (exact)
                model_fail(m, "alloc(%zu) at offset %zu overlaps a chunk the thread keeps at %zu",
                           size, off, c->kept[i].off);
            model_kept_remove(c, i);
        } else {
            i++;
        }
    }
    if (exact && !popped) {
        /* With a megabyte ready, a ready span that fits comes before the bump pointer. */
        if (at_bump && ready_reused && fit.any && off != c->bump)
            at_bump = false;
        if (at_bump && off != c->bump)
            model_fail(m, "alloc(%zu) at offset %zu, expected the bump pointer %zu", size, off,
                       c->bump);
        if (!at_bump) {
            bool in_run = false;
            for (unsigned i = 0; i < fit.count; i++)
                in_run |= off >= fit.lo[i] && off + n <= fit.hi[i];
            if (!in_run && fit.count < 64)
                model_fail(m, "alloc(%zu) at offset %zu: not inside a freed span that fits", size,
                           off);
        }
    }
    if (model_owner(c, off) != NULL || model_owner(c, off + n - 1) != NULL)
        model_fail(m, "alloc(%zu) at offset %zu overlaps a live chunk", size, off);

    struct mchunk *ch = calloc(1, sizeof *ch);
    ch->shadow = malloc(n);
    if (ch == NULL || ch->shadow == NULL)
        model_fail(m, "out of memory for the model");
    ch->h = h;
    ch->cache = c;
    ch->state = MS_OPEN;
    ch->off = off;
    ch->size = n;
    ch->floor = (uint32_t)n;
    /* Fresh memory: zero (mprotect) or traps (dual), code_cache_alloc's documented content. */
    memset(ch->shadow, c->dual ? TRAP : 0, n);
    ch->touched = true;
    c->chunk[c->nchunks++] = ch;
    if (off + n > c->bump)
        c->bump = off + n;
    c->content_due = true;
    return ch;
}

static void op_alloc(struct model *m, struct model_input *in)
{
    struct mcache *c = need_cache(m, in);
    const uint8_t sel = in_byte(in), extra = in_byte(in);
    alloc_chunk(m, c, sel, extra);
}

/* A chunk for an operation that needs one: a live one, or a new one. */
static struct mchunk *need_chunk(struct model *m, struct model_input *in)
{
    uint8_t b = in_byte(in);
    struct mchunk *ch = model_pick(m, b);
    if (ch != NULL)
        return ch;
    struct mcache *c = need_cache(m, in);
    return alloc_chunk(m, c, (uint8_t)(b % 4), in_byte(in));
}

/* ---- Functions ---- */

static const size_t aligns[] = {0, 1, 2, 8, 16, 64, 4096, 3, 8192, 16, 8};

static size_t pick_align(uint8_t b)
{
    return aligns[b % (sizeof aligns / sizeof aligns[0])];
}

static bool bad_align(size_t align, size_t page)
{
    return (align & (align - 1)) != 0 || align > page;
}

/* code_chunk_alloc's answer: 0 (with *offset) or the errno. */
static int predict_alloc(const struct mchunk *ch, size_t size, size_t align, uint32_t *offset)
{
    if (align == 0)
        align = 1;
    if (size == 0 || bad_align(align, ch->cache->page))
        return EINVAL;
    if (ch->state != MS_OPEN)
        return EPERM;
    if (ch->reserving)
        return EBUSY;
    size_t o = align_up(ch->used, align);
    if (o > ch->floor || size > ch->floor - o)
        return ENOSPC;
    *offset = (uint32_t)o;
    return 0;
}

/* Claims [used, offset + size) in the model: the padding becomes traps. */
static void claim(struct mchunk *ch, uint32_t offset, uint32_t size)
{
    if (offset > ch->used)
        memset(ch->shadow + ch->used, TRAP, offset - ch->used);
    ch->used = offset + size;
    ch->touched = true;
}

static bool chunk_alloc_checked(struct model *m, struct mchunk *ch, size_t size, size_t align,
                                uint32_t *offset)
{
    int want = predict_alloc(ch, size, align, offset);
    struct code_span span;
    CALL(m, span = code_chunk_alloc(ch->h, size, align));
    if (span.rw == NULL) {
        expect_errno(m, "code_chunk_alloc", errno, want);
        return false;
    }
    if (want != 0)
        model_fail(m, "code_chunk_alloc(%zu, %zu) succeeded; expected %s", size, align,
                   strerror(want));
    if ((uintptr_t)span.rx != chunk_rx(ch) + *offset || span.rw != chunk_rw(ch) + *offset ||
        span.size != size)
        model_fail(m, "code_chunk_alloc(%zu, %zu): span %p/%p size %zu, expected offset %u", size,
                   align, span.rw, span.rx, span.size, *offset);
    claim(ch, *offset, (uint32_t)size);
    return true;
}

/* Writes bytes at offset through the RW view, and into the shadow. */
static void chunk_write(struct mchunk *ch, uint32_t offset, const void *bytes, size_t len)
{
    memcpy(chunk_rw(ch) + offset, bytes, len);
    memcpy(ch->shadow + offset, bytes, len);
    ch->touched = true;
}

static void add_fn(struct mchunk *ch, struct mfn fn)
{
    if (ch->nfn < MODEL_MAX_FNS)
        ch->fn[ch->nfn++] = fn;
}

/* mov eax, imm32; nop...; ret: a function of exactly len bytes (len >= 6). */
static void write_return(struct mchunk *ch, uint32_t offset, uint32_t len, int value)
{
    unsigned char code[64];
    unsigned char *buf = len <= sizeof code ? code : malloc(len);
    jit_return(buf, len, value);
    chunk_write(ch, offset, buf, len);
    if (buf != code)
        free(buf);
}

static void op_fn_return(struct model *m, struct model_input *in)
{
    struct mchunk *ch = need_chunk(m, in);
    size_t align = pick_align(in_byte(in));
    int value = (int)in_u32(in);
    if (ch == NULL || ch->nfn == MODEL_MAX_FNS)
        return;
    model_trace(m, "fn_return in chunk at %#lx (used %u floor %u) align %zu",
                (unsigned long)chunk_rx(ch), ch->used, ch->floor, align);
    uint32_t offset;
    if (!chunk_alloc_checked(m, ch, JIT_RETURN_SIZE, align, &offset))
        return;
    write_return(ch, offset, 6, value);
    add_fn(ch, (struct mfn){.off = offset, .len = 6, .kind = FN_RETURN, .value = value});
}

/* code_chunk_call_target's answer: the address (NULL + *err). */
static uintptr_t predict_target(struct mchunk *ch, uintptr_t t, int *err, bool *new_veneer)
{
    const struct mcache *c = ch->cache;
    const uintptr_t lo = chunk_rx(ch), hi = lo + ch->size;
    *err = 0;
    *new_veneer = false;
    if (t == 0) {
        *err = EINVAL;
        return 0;
    }
    if (model_reaches(lo, hi, t, c->reach))
        return t;
    for (unsigned i = 0; i < ch->nven; i++)
        if ((uintptr_t)ch->ven[i].target == t)
            return lo + ch->ven[i].off;
    if (ch->state != MS_OPEN) {
        *err = EPERM;
        return 0;
    }
    if (ch->floor - ch->used < CODE_CACHE_VENEER_SIZE) {
        *err = ENOSPC;
        return 0;
    }
    uint32_t floor = ch->floor - CODE_CACHE_VENEER_SIZE;
    if (!model_reaches(lo, hi, lo + floor, c->reach)) {
        *err = ERANGE;
        return 0;
    }
    *new_veneer = true;
    return lo + floor;
}

/* call_target checked against the prediction; the model learns the veneer. 0 on failure. */
static uintptr_t call_target_checked(struct model *m, struct mchunk *ch, const void *target)
{
    int want;
    bool fresh;
    uintptr_t expect = predict_target(ch, (uintptr_t)target, &want, &fresh);
    const void *got;
    CALL(m, got = code_chunk_call_target(ch->h, target));
    if (got == NULL) {
        expect_errno(m, "code_chunk_call_target", errno, want);
        return 0;
    }
    if ((uintptr_t)got != expect)
        model_fail(m, "code_chunk_call_target(%p) = %p, expected %#lx%s", target, got,
                   (unsigned long)expect, want ? " (a failure)" : "");
    if (fresh) {
        ch->floor -= CODE_CACHE_VENEER_SIZE;
        unsigned char v[CODE_CACHE_VENEER_SIZE] = {0xff, 0x25, 0, 0, 0, 0};
        uint64_t abs_target = (uint64_t)(uintptr_t)target;
        memcpy(v + 6, &abs_target, 8);
        memset(v + 14, TRAP, 2);
        memcpy(ch->shadow + ch->floor, v, sizeof v);
        ch->touched = true;
        if (ch->nven < MODEL_MAX_VEN)
            ch->ven[ch->nven++] = (struct mveneer){target, ch->floor};
        else
            model_fail(m, "the model holds at most %d veneers per chunk", MODEL_MAX_VEN);
    }
    return expect;
}

static void op_fn_call(struct model *m, struct model_input *in)
{
    struct mchunk *ch = need_chunk(m, in);
    int (*callee)(int) = model_target(m, in_byte(in));
    int arg = (int)(in_u32(in) % 100000);
    if (ch == NULL || ch->nfn == MODEL_MAX_FNS || ch->nven == MODEL_MAX_VEN)
        return;
    model_trace(m, "fn_call %p in chunk at %#lx (used %u floor %u)", (void *)callee,
                (unsigned long)chunk_rx(ch), ch->used, ch->floor);
    uintptr_t t = call_target_checked(m, ch, (const void *)callee);
    if (t == 0)
        return;
    uint32_t offset;
    if (!chunk_alloc_checked(m, ch, JIT_CALL_SIZE, 16, &offset))
        return;
    unsigned char buf[JIT_CALL_SIZE];
    if (!jit_call(buf, chunk_rx(ch) + offset, (const void *)t, arg))
        model_fail(m, "call target %#lx is not in rel32 reach of %#lx, though the library said so",
                   (unsigned long)t, (unsigned long)(chunk_rx(ch) + offset));
    chunk_write(ch, offset, buf, sizeof buf);
    add_fn(ch,
           (struct mfn){
               .off = offset, .len = JIT_CALL_SIZE, .kind = FN_CALL, .arg = arg, .callee = callee});
}

/* ---- Reserve and commit ---- */

/* code_chunk_reserve checked: true with the reservation's offset and size. */
static bool reserve_checked(struct model *m, struct mchunk *ch, size_t align)
{
    int want = 0;
    size_t a = align ? align : 1, o = align_up(ch->used, a);
    if (bad_align(a, ch->cache->page))
        want = EINVAL;
    else if (ch->state != MS_OPEN)
        want = EPERM;
    else if (o >= ch->floor)
        want = ENOSPC;
    struct code_span span;
    CALL(m, span = code_chunk_reserve(ch->h, align));
    if (span.rw == NULL) {
        expect_errno(m, "code_chunk_reserve", errno, want);
        return false;
    }
    if (want != 0)
        model_fail(m, "code_chunk_reserve(%zu) succeeded; expected %s", align, strerror(want));
    if ((uintptr_t)span.rx != chunk_rx(ch) + o || span.rw != chunk_rw(ch) + o ||
        span.size != ch->floor - o)
        model_fail(m, "code_chunk_reserve(%zu): %p size %zu, expected offset %zu size %zu", align,
                   span.rx, span.size, o, ch->floor - o);
    ch->reserving = true;
    ch->res_off = (uint32_t)o;
    ch->res_size = (uint32_t)(ch->floor - o);
    return true;
}

/* code_chunk_commit checked: true when it claimed used bytes. */
static bool commit_checked(struct model *m, struct mchunk *ch, size_t used)
{
    int want = 0;
    if (ch->state != MS_OPEN || !ch->reserving)
        want = EPERM;
    else if (used > ch->res_size)
        want = EINVAL; /* more than the reservation */
    else if (used > ch->floor - ch->res_off)
        want = ENOSPC; /* into a veneer placed during the reservation */
    int rc;
    CALL(m, rc = code_chunk_commit(ch->h, used));
    if (rc != 0) {
        /* More than reserved, and into a veneer as well: both errors are right. */
        if (want == EINVAL && errno == ENOSPC && ch->floor - ch->res_off < ch->res_size)
            return false;
        expect_errno(m, "code_chunk_commit", errno, want);
        return false;
    }
    if (want != 0)
        model_fail(m,
                   "code_chunk_commit(%zu) succeeded; expected %s (reservation of %u at %u, "
                   "floor %u)",
                   used, strerror(want), ch->res_size, ch->res_off, ch->floor);
    claim(ch, ch->res_off, (uint32_t)used);
    ch->reserving = false;
    return true;
}

static void op_emit(struct model *m, struct model_input *in)
{
    struct mchunk *ch = need_chunk(m, in);
    size_t align = pick_align(in_byte(in));
    uint8_t len_sel = in_byte(in), garbage = in_byte(in), veneer = in_byte(in);
    int value = (int)in_u32(in);
    if (ch == NULL || ch->nfn == MODEL_MAX_FNS || ch->nven == MODEL_MAX_VEN)
        return;
    model_trace(m, "emit in chunk at %#lx (used %u floor %u) align %zu len %u veneer %u",
                (unsigned long)chunk_rx(ch), ch->used, ch->floor, align, len_sel, veneer % 4);
    if (!reserve_checked(m, ch, align))
        return;
    const uint32_t room = ch->res_size;
    uint32_t len;
    switch (len_sel % 6) {
    case 0:
        len = 6;
        break;
    case 1:
        len = 6 + len_sel % 50;
        break;
    case 2:
        len = room; /* all of it */
        break;
    case 3:
        len = room + 1; /* more than reserved: EINVAL */
        break;
    case 4:
        len = 0;
        break;
    default:
        len = 1 + len_sel % 5; /* too short for a function: claimed, never run */
        break;
    }
    uint32_t written = len < room ? len : room;
    if (written >= 6)
        write_return(ch, ch->res_off, written, value);
    else if (written > 0) {
        unsigned char junk[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        chunk_write(ch, ch->res_off, junk, written);
    }
    /* Code that went further than it claims: the bytes past what is committed are junk, and
     * become traps at seal. */
    uint32_t extra = garbage % 3 == 0 ? garbage % 40 : 0;
    if (extra > room - written)
        extra = room - written;
    if (extra > 0) {
        unsigned char junk[40];
        memset(junk, 0x5a, sizeof junk);
        chunk_write(ch, ch->res_off + written, junk, extra);
    }
    /* A veneer asked for during the reservation takes its top. */
    if (veneer % 4 == 0 && m->far != NULL)
        call_target_checked(m, ch, (const void *)m->far);
    if (commit_checked(m, ch, len) && written >= 6 && len == written &&
        ch->res_off + len <= ch->floor)
        add_fn(ch,
               (struct mfn){.off = ch->used - len, .len = len, .kind = FN_RETURN, .value = value});
}

static void op_reserve(struct model *m, struct model_input *in)
{
    struct mchunk *ch = need_chunk(m, in);
    size_t align = pick_align(in_byte(in));
    if (ch == NULL)
        return;
    model_trace(m, "reserve in chunk at %#lx align %zu (left outstanding)",
                (unsigned long)chunk_rx(ch), align);
    reserve_checked(m, ch, align);
}

static void op_commit(struct model *m, struct model_input *in)
{
    struct mchunk *ch = need_chunk(m, in);
    uint8_t sel = in_byte(in);
    if (ch == NULL)
        return;
    size_t used = sel % 4 == 0   ? 0
                  : sel % 4 == 1 ? ch->res_size
                  : sel % 4 == 2 ? sel % 16
                                 : SIZE_MAX;
    model_trace(m, "commit %zu in chunk at %#lx (reserving %d)", used, (unsigned long)chunk_rx(ch),
                ch->reserving);
    commit_checked(m, ch, used);
}

static void op_call_target(struct model *m, struct model_input *in)
{
    struct mchunk *ch = need_chunk(m, in);
    uint8_t sel = in_byte(in);
    if (ch == NULL || ch->nven == MODEL_MAX_VEN)
        return;
    const void *target = sel % 5 == 4 ? NULL : (const void *)model_target(m, sel);
    model_trace(m, "call_target %p in chunk at %#lx", target, (unsigned long)chunk_rx(ch));
    call_target_checked(m, ch, target);
}

/* ---- Seal, run, patch ---- */

void model_run_chunk(struct model *m, struct mchunk *ch)
{
    for (unsigned i = 0; i < ch->nfn; i++) {
        const struct mfn *fn = &ch->fn[i];
        /* valgrind 3.19 dies of SIGSEGV (its own) running a ret that is the last byte of a page
         * followed by one it cannot read: its decoder reads a byte ahead (measured with a page of
         * our own: any function, ending there or one byte before). Not the library's doing. */
        if (m->valgrind && (ch->off + fn->off + fn->len) % ch->cache->page == 0)
            continue;
        int (*code)(void) = (int (*)(void))(chunk_rx(ch) + fn->off);
        int want = fn->kind == FN_RETURN ? fn->value : fn->callee(fn->arg);
        int got = code();
        if (got != want)
            model_fail(m, "the function at %p returned %d, expected %d", (void *)code, got, want);
    }
}

static void seal_checked(struct model *m, struct mchunk *ch)
{
    int want = ch->state == MS_SEALED || ch->reserving ? EBUSY : 0;
    model_trace(m, "seal chunk at %#lx: expect %s", (unsigned long)chunk_rx(ch),
                want ? strerror(want) : "success");
    struct mcache *c = ch->cache;
    struct code_cache_stats before, after;
    code_cache_get_stats(c->h, &before);
    int rc;
    CALL(m, rc = code_chunk_seal(ch->h));
    code_cache_get_stats(c->h, &after);
    if (want == 0 && !ch->reserving) /* the traps are written before the protection changes */
        memset(ch->shadow + ch->used, TRAP, ch->floor - ch->used);
    ch->touched = true;
    if (rc != 0) {
        expect_errno(m, "code_chunk_seal", errno, want);
        return;
    }
    if (want != 0)
        model_fail(m, "code_chunk_seal succeeded; expected %s", strerror(want));
    ch->state = MS_SEALED;
    /* The dual backend seals with no system call; the mprotect one with exactly one mprotect. */
    size_t calls = after.system_calls - before.system_calls;
    size_t prots = after.protection_changes - before.protection_changes;
    if (!m->fault_now && !c->harden &&
        (c->dual ? calls != 0 || prots != 0 : calls != 1 || prots != 1))
        model_fail(m, "seal made %zu system calls and %zu protection changes (%s backend)", calls,
                   prots, c->dual ? "dual" : "mprotect");
    check_chunk_content(m, ch);
    model_run_chunk(m, ch);
}

static void op_seal(struct model *m, struct model_input *in)
{
    struct mchunk *ch = need_chunk(m, in);
    if (ch != NULL)
        seal_checked(m, ch);
}

static void op_run(struct model *m, struct model_input *in)
{
    struct mchunk *ch = model_pick(m, in_byte(in));
    if (ch == NULL || ch->state != MS_SEALED)
        return;
    model_trace(m, "run the %u functions of chunk at %#lx", ch->nfn, (unsigned long)chunk_rx(ch));
    model_run_chunk(m, ch);
}

static void op_patch(struct model *m, struct model_input *in)
{
    struct mchunk *ch = need_chunk(m, in);
    uint8_t fsel = in_byte(in), kind = in_byte(in);
    int value = (int)in_u32(in);
    if (ch == NULL)
        return;
    const struct mcache *c = ch->cache;
    uintptr_t at;
    size_t len;
    unsigned char bytes[64];
    struct mfn *fn = ch->nfn > 0 ? &ch->fn[fsel % ch->nfn] : NULL;
    switch (kind % 6) {
    case 0: /* a function's immediate: what it returns, or its argument */
        if (fn == NULL)
            return;
        at = chunk_rx(ch) + fn->off +
             (fn->kind == FN_RETURN ? JIT_RETURN_VALUE_AT : JIT_CALL_ARG_AT);
        len = 4;
        if (fn->kind == FN_CALL)
            value %= 100000; /* an argument every callee takes without overflow */
        memcpy(bytes, &value, 4);
        break;
    case 1: /* bytes rewritten with what they hold: any range of the chunk */
    case 2:
        at = chunk_rx(ch) + (size_t)(value & 0x7fffffff) % ch->size;
        len = 1 + (size_t)fsel % 64;
        if (len > chunk_rx(ch) + ch->size - at)
            len = chunk_rx(ch) + ch->size - at;
        memcpy(bytes, ch->shadow + (at - chunk_rx(ch)), len);
        break;
    case 3: /* past the end */
        at = chunk_rx(ch) + ch->size - 2;
        len = 4;
        memset(bytes, TRAP, len);
        break;
    case 4: /* before the start */
        at = chunk_rx(ch) - 1;
        len = 2;
        memset(bytes, TRAP, len);
        break;
    default: /* nothing */
        at = chunk_rx(ch);
        len = 0;
        break;
    }
    int want = 0;
    if (len == 0)
        want = EINVAL;
    else if (!c->dual)
        want = ENOTSUP;
    else if (ch->state != MS_SEALED)
        want = EPERM;
    else if (at < chunk_rx(ch) || at + len > chunk_rx(ch) + ch->size)
        want = EINVAL;
    model_trace(m, "patch %zu bytes at %#lx of chunk at %#lx: expect %s", len, (unsigned long)at,
                (unsigned long)chunk_rx(ch), want ? strerror(want) : "success");
    int rc;
    CALL(m, rc = code_chunk_patch(ch->h, (void *)at, bytes, len));
    if (rc != 0) {
        expect_errno(m, "code_chunk_patch", errno, want);
        return;
    }
    if (want != 0)
        model_fail(m, "code_chunk_patch succeeded; expected %s", strerror(want));
    memcpy(ch->shadow + (at - chunk_rx(ch)), bytes, len);
    ch->touched = true;
    if (kind % 6 == 0) {
        if (fn->kind == FN_RETURN)
            fn->value = value;
        else
            fn->arg = value;
    }
    model_run_chunk(m, ch);
}

/* ---- Find ---- */

static void op_find(struct model *m, struct model_input *in)
{
    struct mcache *c = model_pick_cache(m, in_byte(in));
    uint8_t kind = in_byte(in);
    uint32_t r = in_u32(in);
    if (c == NULL)
        return;
    uintptr_t addr;
    const struct mchunk *want = NULL;
    bool rw_view = c->dual && c->rw_known && (kind & 0x80);
    const uintptr_t view = rw_view ? c->rw_base : c->base;
    int local = 0;
    switch (kind % 6) {
    case 0:
    case 1:
    case 2: /* anywhere in the region: a live chunk, a freed span or never-used space */
        addr = view + r % c->reserved;
        want = model_owner(c, r % c->reserved);
        break;
    case 3:
        addr = view - 1 - r % c->page; /* the low guard page */
        break;
    case 4:
        addr = view + c->reserved + r % c->page; /* the high guard page */
        break;
    default: /* foreign addresses */
        addr = r % 3 == 0 ? (uintptr_t)model_helper : r % 3 == 1 ? (uintptr_t)&local : 0;
        break;
    }
    model_trace(m, "find %#lx in cache %#lx", (unsigned long)addr, (unsigned long)c->base);
    struct code_chunk *got;
    CALL(m, got = code_cache_find(c->h, (const void *)addr));
    if (got != (want != NULL ? want->h : NULL))
        model_fail(m, "code_cache_find(%#lx) = %p, expected %p", (unsigned long)addr, (void *)got,
                   want != NULL ? (void *)want->h : NULL);
    bool reaches;
    CALL(m, reaches = code_cache_reaches(c->h, (const void *)addr));
    if (reaches != model_reaches(c->base, c->base + c->reserved, addr, c->reach))
        model_fail(m, "code_cache_reaches(%#lx) = %d", (unsigned long)addr, reaches);
}

/* ---- Free ---- */

static void free_checked(struct model *m, struct mchunk *ch)
{
    struct mcache *c = ch->cache;
    model_trace(m, "free chunk at %#lx size %zu", (unsigned long)chunk_rx(ch), ch->size);
    struct code_cache_stats before, after;
    code_cache_get_stats(c->h, &before);
    CALL(m, code_chunk_free(ch->h));
    code_cache_get_stats(c->h, &after);
    if (after.retired != before.retired) {
        /* Only an injected failure makes a free retire the span. */
        if (!m->fault_now)
            model_fail(m, "free retired %zu bytes without a failure",
                       after.retired - before.retired);
        if (after.retired - before.retired == ch->size && c->nretired < MODEL_MAX_RETIRED)
            c->retired[c->nretired++] = (struct mspan){ch->off, ch->size};
        else
            c->tainted = true;
    }
    model_freed_record(m, c, ch->h, ch->off, ch->size, ch->nven == 0 && !ch->named);
    for (unsigned i = 0; i < c->nchunks; i++)
        if (c->chunk[i] == ch) {
            chunk_release(c, i);
            break;
        }
    c->content_due = true;
}

static void op_free(struct model *m, struct model_input *in)
{
    struct mchunk *ch = need_chunk(m, in);
    if (ch != NULL)
        free_checked(m, ch);
}

/* A method JIT on one cache: one function at a time, allocated and freed, of 1 B - 2 KiB (the
 * sizes thread caches keep), enough of them (64 - 2,104) that kept chunks come back once 1,024
 * frees followed them, and, in a small cache, that allocations find no room and take back what
 * the thread keeps. Every fourth is written, sealed and run before its free: with every one, the
 * fuzzer ran 477 inputs in 120 s instead of 614 (without this operation at all, about 1,900).
 * With the seed's top bit, the sizes grow from one granule to 2 KiB over the run instead: no
 * size comes back within its quarantine, so what the thread keeps passes 2 MiB, and the flush
 * meets a quarantine of over 1 MiB (the next flush then 1 MiB past what is left). */
static void op_methods(struct model *m, struct model_input *in)
{
    struct mcache *c = need_cache(m, in);
    const uint8_t count = in_byte(in), seed = in_byte(in);
    if (c == NULL)
        return;
    const unsigned functions = 64 + 8u * count;
    uint32_t rng = seed * 2654435761u + 1;
    model_trace(m, "methods: %u functions on cache %#lx", functions, (unsigned long)c->base);
    for (unsigned i = 0; i < functions && c->nchunks < MODEL_MAX_CHUNKS; i++) {
        rng = rng * 1103515245u + 12345u;
        const size_t granules = MODEL_TCACHE_CHUNK_MAX / 64;
        const size_t size = seed & 0x80 ? 64 * (1 + i * granules / functions) - (rng >> 16) % 64
                                        : 1 + (rng >> 16) % MODEL_TCACHE_CHUNK_MAX;
        struct mchunk *ch = alloc_sized(m, c, size);
        if (ch == NULL)
            continue; /* ENOSPC, predicted */
        uint32_t offset;
        if (i % 4 == 0 && chunk_alloc_checked(m, ch, JIT_RETURN_SIZE, 1, &offset)) {
            write_return(ch, offset, JIT_RETURN_SIZE, (int)rng);
            add_fn(ch, (struct mfn){.off = offset,
                                    .len = JIT_RETURN_SIZE,
                                    .kind = FN_RETURN,
                                    .value = (int)rng});
            seal_checked(m, ch);
        }
        free_checked(m, ch);
    }
}

/* ---- Stale handles and misuse ---- */

static void op_stale(struct model *m, struct model_input *in)
{
    uint8_t b = in_byte(in), what = in_byte(in);
    model_stale_prune(m);
    if (m->nstale == 0)
        return;
    const struct mstale *s = &m->stale[b % m->nstale];
    const struct mcache *c = s->cache;
    model_trace(m, "stale handle %p (was at offset %zu): call %u", (void *)s->h, s->off, what % 8);
    int rc = 0, want;
    switch (what % 8) {
    case 0:
        CALL(m, rc = code_chunk_seal(s->h));
        want = EPERM;
        break;
    case 1: {
        struct code_span span;
        CALL(m, span = code_chunk_alloc(s->h, 8, 8));
        rc = span.rw == NULL ? -1 : 0;
        want = EPERM;
        break;
    }
    case 2: {
        struct code_span span;
        CALL(m, span = code_chunk_reserve(s->h, 1));
        rc = span.rw == NULL ? -1 : 0;
        want = EPERM;
        break;
    }
    case 3:
        CALL(m, rc = code_chunk_commit(s->h, 0));
        want = EPERM;
        break;
    case 4: {
        struct code_span span;
        CALL(m, span = code_chunk_span(s->h));
        if (span.rw != NULL)
            model_fail(m, "code_chunk_span of a freed chunk: %p", span.rw);
        return;
    }
    case 5: {
        unsigned char trap = TRAP;
        CALL(m, rc = code_chunk_patch(s->h, (void *)(c->base + s->off), &trap, 1));
        want = c->dual ? EPERM : ENOTSUP;
        break;
    }
    case 6: {
        CALL(m, rc = code_chunk_name(s->h, (const void *)(c->base + s->off), 1, "stale"));
        want = EPERM;
        break;
    }
    default: {
        /* A target in reach of the old span is answered without looking at the state; any other
         * needs a veneer, which a freed chunk cannot have. */
        const void *t = m->far != NULL ? (const void *)m->far : (const void *)model_helper;
        const void *got;
        CALL(m, got = code_chunk_call_target(s->h, t));
        bool direct =
            model_reaches(c->base + s->off, c->base + s->off + s->size, (uintptr_t)t, c->reach);
        if (direct ? got != t : got != NULL || errno != EPERM)
            model_fail(m, "code_chunk_call_target on a freed chunk: %p (errno %d)", got, errno);
        return;
    }
    }
    if (rc == 0)
        model_fail(m, "a call on a freed chunk succeeded (case %u)", what % 8);
    expect_errno(m, "a call on a freed chunk", errno, want);
}

static void op_misuse(struct model *m, struct model_input *in)
{
    uint8_t what = in_byte(in), b = in_byte(in);
    struct mchunk *ch = model_pick(m, b);
    struct mcache *c = model_pick_cache(m, b);
    int rc = 0;
    const char *call = "";
    model_trace(m, "misuse %u", what % 14);
    switch (what % 14) {
    case 0:
        call = "code_cache_alloc(NULL)";
        CALL(m, rc = code_cache_alloc(NULL, 64) == NULL ? -1 : 0);
        break;
    case 1:
        call = "code_cache_reset(NULL)";
        CALL(m, rc = code_cache_reset(NULL));
        break;
    case 2:
        call = "code_chunk_seal(NULL)";
        CALL(m, rc = code_chunk_seal(NULL));
        break;
    case 3:
        call = "code_chunk_alloc(NULL)";
        CALL(m, rc = code_chunk_alloc(NULL, 8, 8).rw == NULL ? -1 : 0);
        break;
    case 4:
        call = "code_chunk_reserve(NULL)";
        CALL(m, rc = code_chunk_reserve(NULL, 8).rw == NULL ? -1 : 0);
        break;
    case 5:
        call = "code_chunk_commit(NULL)";
        CALL(m, rc = code_chunk_commit(NULL, 0));
        break;
    case 6: {
        unsigned char x = 0;
        call = "code_chunk_patch(NULL)";
        CALL(m, rc = code_chunk_patch(NULL, &x, &x, 1));
        break;
    }
    case 7:
        call = "code_chunk_call_target(NULL)";
        CALL(m, rc = code_chunk_call_target(NULL, (const void *)model_helper) == NULL ? -1 : 0);
        break;
    case 8:
        call = "code_chunk_span(NULL)";
        CALL(m, rc = code_chunk_span(NULL).rw == NULL ? -1 : 0);
        break;
    case 9: {
        /* No-ops by contract. */
        struct code_cache_stats st = {.in_use = 12345};
        CALL(m, code_cache_get_stats(NULL, &st));
        CALL(m, code_cache_destroy(NULL));
        CALL(m, code_chunk_free(NULL));
        bool r;
        CALL(m, r = code_cache_reaches(NULL, (const void *)model_helper));
        struct code_chunk *f;
        CALL(m, f = code_cache_find(NULL, (const void *)model_helper));
        if (st.in_use != 12345 || r || f != NULL)
            model_fail(m, "a call with a NULL cache did something");
        if (c != NULL)
            CALL(m, code_cache_get_stats(c->h, NULL));
        return;
    }
    case 10:
        if (c == NULL)
            return;
        call = "code_cache_alloc(cache, 0)";
        CALL(m, rc = code_cache_alloc(c->h, 0) == NULL ? -1 : 0);
        break;
    case 11:
        if (ch == NULL)
            return;
        call = "code_chunk_alloc(chunk, 0)";
        CALL(m, rc = code_chunk_alloc(ch->h, 0, 1).rw == NULL ? -1 : 0);
        break;
    case 12:
        if (ch == NULL)
            return;
        call = "code_chunk_call_target(chunk, NULL)";
        CALL(m, rc = code_chunk_call_target(ch->h, NULL) == NULL ? -1 : 0);
        break;
    default:
        if (ch == NULL)
            return;
        call = "code_chunk_patch(chunk, rx, NULL)";
        CALL(m, rc = code_chunk_patch(ch->h, (void *)chunk_rx(ch), NULL, 1));
        break;
    }
    if (rc == 0)
        model_fail(m, "%s succeeded", call);
    expect_errno(m, call, errno, EINVAL);
}

/* ---- Names ---- */

/* The newest name of ch covering the chunk offset off, or NULL. */
const struct mname *model_name_at(const struct mchunk *ch, size_t off)
{
    for (unsigned i = ch->nnames; i-- > 0;)
        if (off - ch->names[i].off < ch->names[i].size)
            return &ch->names[i];
    return NULL;
}

static void op_name(struct model *m, struct model_input *in)
{
    struct mchunk *ch = need_chunk(m, in);
    uint8_t fsel = in_byte(in), kind = in_byte(in);
    uint32_t r = in_u32(in);
    if (ch == NULL || ch->nnames == MODEL_MAX_NAMES)
        return;
    /* A function, or any range of the chunk; then the names the contract refuses. */
    size_t off, size;
    if (ch->nfn > 0 && fsel % 2 == 0) {
        off = ch->fn[fsel % ch->nfn].off;
        size = ch->fn[fsel % ch->nfn].len;
    } else {
        off = r % ch->size;
        size = 1 + (r >> 8) % (ch->size - off);
    }
    static char longest[CODE_CACHE_NAME_MAX + 1];
    char name[40];
    snprintf(name, sizeof name, "model_fn_%u_%u", (unsigned)m->calls, fsel);
    const char *text = name;
    int want = 0;
    switch (kind % 10) {
    case 6:
        text = "";
        want = EINVAL;
        break;
    case 7:
        text = "two\nlines";
        want = EINVAL;
        break;
    case 8:
        /* The longest name accepted, or one byte more. */
        memset(longest, 'n', CODE_CACHE_NAME_MAX);
        longest[CODE_CACHE_NAME_MAX - 1 + (fsel & 1)] = '\0';
        text = longest;
        want = fsel & 1 ? ENAMETOOLONG : 0;
        break;
    case 9:
        if (fsel & 1)
            size = 0;
        else
            size = ch->size - off + 1; /* past the chunk's end */
        want = EINVAL;
        break;
    default:
        break;
    }
    model_trace(m, "name [%zu, +%zu) of chunk at %#lx (%zu bytes): expect %s", off, size,
                (unsigned long)chunk_rx(ch), strlen(text), want ? strerror(want) : "success");
    int rc;
    CALL(m, rc = code_chunk_name(ch->h, (const void *)(chunk_rx(ch) + off), size, text));
    /* Past its checks, the chunk has a table of names, even when a failure came after. */
    if (rc == 0 || m->fault_now)
        ch->named = true;
    if (rc != 0) {
        expect_errno(m, "code_chunk_name", errno, want);
        return;
    }
    if (want != 0)
        model_fail(m, "code_chunk_name succeeded; expected %s", strerror(want));
    struct mname *n = &ch->names[ch->nnames++];
    n->off = (uint32_t)off;
    n->size = (uint32_t)size;
    snprintf(n->text, sizeof n->text, "%.39s", text);
    n->long_name = text == longest;
}

/* ---- The driver's interface ---- */

struct model *model_new(const struct model_config *config)
{
    struct model *m = calloc(1, sizeof *m);
    if (m == NULL)
        abort();
    if (config != NULL)
        m->cfg = *config;
    m->valgrind = RUNNING_ON_VALGRIND != 0;
    if (m->valgrind)
        m->cfg.light = true;
    (void)model_tcache_works(); /* its cache comes and goes before the counts are taken */
    m->fds_at_start = proc_open_fds();
    m->jemalloc_at_start = proc_jemalloc_allocated();
    m->far = model_far_function();
    return m;
}

static void (*const ops[MOP_COUNT])(struct model *, struct model_input *) = {
    [MOP_CREATE] = op_create,       [MOP_DESTROY] = op_destroy,
    [MOP_RESET] = op_reset,         [MOP_ALLOC] = op_alloc,
    [MOP_FN_RETURN] = op_fn_return, [MOP_FN_CALL] = op_fn_call,
    [MOP_EMIT] = op_emit,           [MOP_RESERVE] = op_reserve,
    [MOP_COMMIT] = op_commit,       [MOP_CALL_TARGET] = op_call_target,
    [MOP_SEAL] = op_seal,           [MOP_RUN] = op_run,
    [MOP_PATCH] = op_patch,         [MOP_FIND] = op_find,
    [MOP_FREE] = op_free,           [MOP_STALE] = op_stale,
    [MOP_MISUSE] = op_misuse,       [MOP_NAME] = op_name,
    [MOP_METHODS] = op_methods,
};

/* How often each operation comes up in random bytes. */
static const uint8_t weights[MOP_COUNT] = {
    [MOP_CREATE] = 3,    [MOP_DESTROY] = 1,     [MOP_RESET] = 2, [MOP_ALLOC] = 10,
    [MOP_FN_RETURN] = 8, [MOP_FN_CALL] = 6,     [MOP_EMIT] = 5,  [MOP_RESERVE] = 1,
    [MOP_COMMIT] = 1,    [MOP_CALL_TARGET] = 3, [MOP_SEAL] = 8,  [MOP_RUN] = 2,
    [MOP_PATCH] = 4,     [MOP_FIND] = 3,        [MOP_FREE] = 8,  [MOP_STALE] = 3,
    [MOP_MISUSE] = 2,    [MOP_NAME] = 3,
};

static enum model_op decode_op(uint8_t b)
{
    if (b >= MODEL_OP_DIRECT)
        return (enum model_op)((b - MODEL_OP_DIRECT) % MOP_COUNT);
    unsigned total = 0;
    for (unsigned i = 0; i < MOP_COUNT; i++)
        total += weights[i];
    unsigned k = b % total;
    for (unsigned i = 0; i < MOP_COUNT; i++) {
        if (k < weights[i])
            return (enum model_op)i;
        k -= weights[i];
    }
    return MOP_ALLOC;
}

/* After a call during which a system call was made to fail, the model learns the outcome. */
static void resync(struct model *m)
{
    for (unsigned s = 0; s < MODEL_SLOTS; s++) {
        if (!m->live[s])
            continue;
        struct mcache *c = &m->cache[s];
        struct code_cache_stats st;
        code_cache_get_stats(c->h, &st);
        c->bump = c->reserved - st.never_used;
        c->harden_lost |= c->harden;
        size_t known = 0;
        for (unsigned i = 0; i < c->nretired; i++)
            known += c->retired[i].size;
        if (st.retired != known)
            c->tainted = true;
        c->content_due = true;
    }
}

bool model_step(struct model *m, struct model_input *in)
{
    if (!in->endless && in->pos >= in->len)
        return false;
    m->fault_now = false;
    enum model_op op = decode_op(in_byte(in));
    ops[op](m, in);
    if (m->fault_now)
        resync(m);
    check_all(m);
    return true;
}

void model_exercise(struct model *m)
{
    m->fault_now = false;
    for (unsigned s = 0; s < MODEL_SLOTS; s++) {
        if (!m->live[s])
            continue;
        struct mcache *c = &m->cache[s];
        for (unsigned i = 0; i < c->nchunks; i++)
            if (c->chunk[i]->state == MS_SEALED)
                model_run_chunk(m, c->chunk[i]);
        /* One more chunk, written, sealed, run and freed: the cache works. */
        if (c->nchunks == MODEL_MAX_CHUNKS)
            continue;
        model_trace(m, "exercise cache %u", s);
        /* Predicted and checked as any other (where it goes, a kept chunk back, what the thread
         * keeps taken back when there is no room); ENOSPC only where the model expects it. */
        struct mchunk *ch = alloc_sized(m, c, 64);
        if (ch == NULL)
            continue; /* full, legitimately: free or reset would make room */
        uint32_t offset;
        if (!chunk_alloc_checked(m, ch, JIT_RETURN_SIZE, 8, &offset))
            model_fail(m, "the cache does not work any more: code_chunk_alloc: %s",
                       strerror(errno));
        write_return(ch, offset, JIT_RETURN_SIZE, 42);
        add_fn(ch,
               (struct mfn){.off = offset, .len = JIT_RETURN_SIZE, .kind = FN_RETURN, .value = 42});
        seal_checked(m, ch); /* runs it */
        if (ch->state != MS_SEALED)
            model_fail(m, "the cache does not work any more: seal: %s", strerror(errno));
        free_checked(m, ch);
        resync(m);
        check_all(m);
    }
}

void model_end(struct model *m)
{
    for (unsigned s = 0; s < MODEL_SLOTS; s++)
        if (m->live[s])
            destroy_cache(m, s);
    if (m->far != NULL)
        munmap((void *)m->far, (size_t)sysconf(_SC_PAGESIZE));
    size_t fds = proc_open_fds(), jem = proc_jemalloc_allocated();
    if (fds != m->fds_at_start)
        model_fail(m, "%zu file descriptors open at the end, %zu at the start", fds,
                   m->fds_at_start);
    if (jem != m->jemalloc_at_start && m->jemalloc_at_start != SIZE_MAX)
        model_fail(m, "jemalloc holds %zu bytes at the end, %zu at the start", jem,
                   m->jemalloc_at_start);
    free(m);
}

uint64_t model_calls(const struct model *m)
{
    return m->calls;
}

unsigned model_caches(const struct model *m)
{
    return (unsigned)m->live[0] + (unsigned)m->live[1];
}

void model_tcache_counts(const struct model *m, struct model_tcache_counts *out)
{
    *out = m->tcache;
}
