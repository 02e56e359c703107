/*
 * Shared fixtures of the test programs (see helpers.h).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>
#include <valgrind/memcheck.h>
#include <valgrind/valgrind.h>

#include "helpers.h"

__attribute__((noinline)) int helper_triple(int x)
{
    return 3 * x + 1;
}

bool test_called_from_library(const void *caller)
{
    Dl_info info;
    if (dladdr(caller, &info) == 0 || info.dli_fname == NULL)
        return false;
    const char *name = strrchr(info.dli_fname, '/');
    name = name != NULL ? name + 1 : info.dli_fname;
    return strncmp(name, "libcodecache.so", strlen("libcodecache.so")) == 0;
}

size_t test_page_size(void)
{
    return (size_t)sysconf(_SC_PAGESIZE);
}

bool test_under_valgrind(void)
{
    return RUNNING_ON_VALGRIND != 0;
}

/* ---- The backend under test ---- */

unsigned test_backend_flags(void)
{
    const char *backend = getenv("CODE_CACHE_TEST_BACKEND");
    if (backend == NULL || *backend == '\0' || strcmp(backend, "mprotect") == 0)
        return 0;
    cr_assert_str_eq(backend, "dual", "CODE_CACHE_TEST_BACKEND=%s: expected mprotect or dual",
                     backend);
    return CODE_CACHE_DUAL_MAP;
}

bool test_dual(void)
{
    return (test_backend_flags() & CODE_CACHE_DUAL_MAP) != 0;
}

const char *test_backend_name(void)
{
    return test_dual() ? "dual" : "mprotect";
}

bool test_cache_is_dual(const struct code_cache *cache)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_not_null(st.backend);
    return strcmp(st.backend, "dual") == 0;
}

/* The whole of a /proc file, read with read(2) into a malloc'd, NUL-terminated buffer. */
static char *read_proc(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
    size_t cap = 1 << 14, len = 0;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    for (;;) {
        if (cap - len < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
            cr_assert_not_null(buf);
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        cr_assert(n >= 0, "read %s: %s", path, strerror(errno));
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return buf;
}

/* One line of /proc/self/maps. */
struct mapping {
    uintptr_t lo, hi;
    char prot[4];      /* "rwx", "r-x", "---"... */
    bool shared;       /* 's' rather than 'p' */
    uintptr_t offset;  /* in the file */
    char dev[16];      /* "00:01" */
    unsigned long ino; /* 0: anonymous */
    const char *path;  /* up to the end of the line; "" when none */
    size_t path_len;
};

static uintptr_t parse_hex(const char **pos)
{
    uintptr_t v = 0;
    for (const char *p = *pos;; p++) {
        int d = *p >= '0' && *p <= '9' ? *p - '0' : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10 : -1;
        if (d < 0) {
            *pos = p;
            return v;
        }
        v = v << 4 | (uintptr_t)d;
    }
}

/* The next line of /proc/self/maps, or false at the end. Parsed by hand: sscanf is slow enough
 * under memcheck to dominate the tests that check the maps after every operation. */
static bool next_mapping(const char **pos, struct mapping *m)
{
    const char *p = *pos, *line = p;
    if (*p == '\0')
        return false;
    m->lo = parse_hex(&p);
    cr_assert_eq(*p, '-', "bad maps line: %.80s", line);
    p++;
    m->hi = parse_hex(&p);
    cr_assert_eq(*p, ' ', "bad maps line: %.80s", line);
    memcpy(m->prot, p + 1, 3);
    m->prot[3] = '\0';
    m->shared = p[4] == 's';
    p += 6;
    m->offset = parse_hex(&p);
    cr_assert_eq(*p, ' ', "bad maps line: %.80s", line);
    p++;
    size_t dev_len = strcspn(p, " ");
    cr_assert_lt(dev_len, sizeof m->dev, "bad maps line: %.80s", line);
    memcpy(m->dev, p, dev_len);
    m->dev[dev_len] = '\0';
    p += dev_len;
    m->ino = 0;
    while (*p == ' ')
        p++;
    while (*p >= '0' && *p <= '9')
        m->ino = m->ino * 10 + (unsigned long)(*p++ - '0');
    while (*p == ' ')
        p++;
    const char *eol = strchr(p, '\n');
    if (eol == NULL)
        eol = p + strlen(p);
    m->path = p;
    m->path_len = (size_t)(eol - p);
    *pos = *eol != '\0' ? eol + 1 : eol;
    return true;
}

/* ---- Where a dual-mapped cache's RW view is ---- */

/* Remembered by test_cache_create. An entry is recognised by the cache's address and its base, so
 * that a destroyed cache's entry is never taken for a new cache at the same address. */
struct dual_view {
    const struct code_cache *cache;
    uintptr_t base, rw;
    size_t reserved;
    char dev[16];
    unsigned long ino;
    pid_t pid; /* the process that created it: in a fork()ed child the RW view is absent */
};

enum { VIEWS = 64 };
static struct dual_view views[VIEWS];
static unsigned views_next;
static pthread_mutex_t views_lock = PTHREAD_MUTEX_INITIALIZER;

static bool same_file(const struct mapping *m, const struct dual_view *v)
{
    return m->ino == v->ino && strcmp(m->dev, v->dev) == 0;
}

/* The path /proc/self/maps shows for the file, by where the library says it came from: a memfd's
 * name, or an O_TMPFILE file, named #<inode> in its directory, deleted. */
static bool expected_path(const struct mapping *m, const char *dual_file)
{
    char prefix[PATH_MAX];
    if (strcmp(dual_file, "memfd") == 0) {
        static const char name[] = "/memfd:codecache (deleted)";
        return m->path_len == sizeof name - 1 && strncmp(m->path, name, m->path_len) == 0;
    }
    if (strcmp(dual_file, "/dev/shm") == 0) {
        snprintf(prefix, sizeof prefix, "/dev/shm/#");
    } else {
        cr_assert_str_eq(dual_file, "$TMPDIR", "unknown stats.dual_file");
        const char *tmp = getenv("TMPDIR");
        snprintf(prefix, sizeof prefix, "%s/#", tmp != NULL && *tmp ? tmp : "/tmp");
    }
    size_t len = strlen(prefix);
    static const char deleted[] = " (deleted)";
    return m->path_len >= len + sizeof deleted - 1 && strncmp(m->path, prefix, len) == 0 &&
           strncmp(m->path + m->path_len - (sizeof deleted - 1), deleted, sizeof deleted - 1) == 0;
}

static bool present_in(const char *maps, const struct mapping *m)
{
    struct mapping o;
    for (const char *pos = maps; next_mapping(&pos, &o);)
        if (o.lo == m->lo && o.hi == m->hi && o.ino == m->ino && strcmp(o.dev, m->dev) == 0)
            return true;
    return false;
}

static bool registered_elsewhere(const struct code_cache *cache, uintptr_t rw, unsigned long ino)
{
    bool found = false;
    pthread_mutex_lock(&views_lock);
    for (unsigned i = 0; i < VIEWS; i++)
        if (views[i].cache != NULL && views[i].cache != cache && views[i].rw == rw &&
            views[i].ino == ino)
            found = true;
    pthread_mutex_unlock(&views_lock);
    return found;
}

/*
 * The RW view of a dual-mapped cache in the maps: the shared mappings of one file from offset 0,
 * side by side with consecutive offsets, reserved bytes in all, rw- (or r-- where
 * CODE_CACHE_DUAL_HARDEN made sealed pages read-only), of the file stats.dual_file names and, when
 * the region already maps the file, of that one. Mappings present in before (when not NULL) or
 * registered for another cache are not candidates. Returns the number of candidates; the last one
 * in *v.
 */
static int find_rw_view(const char *maps, const char *before, const struct code_cache *cache,
                        const struct code_cache_stats *st, struct dual_view *v)
{
    unsigned long region_ino = 0;
    char region_dev[16] = "";
    struct mapping m;
    for (const char *pos = maps; next_mapping(&pos, &m);)
        if (m.ino != 0 && m.lo >= st->base && m.hi <= st->base + st->reserved) {
            region_ino = m.ino;
            memcpy(region_dev, m.dev, sizeof region_dev);
        }
    int found = 0;
    for (const char *pos = maps; next_mapping(&pos, &m);) {
        if (!m.shared || m.ino == 0 || m.offset != 0 || m.prot[0] != 'r' || m.prot[2] != '-' ||
            !expected_path(&m, st->dual_file))
            continue;
        if (region_ino != 0 && (m.ino != region_ino || strcmp(m.dev, region_dev) != 0))
            continue;
        if ((before != NULL && present_in(before, &m)) || registered_elsewhere(cache, m.lo, m.ino))
            continue;
        /* The rest of the view, when hardened pages split it. */
        uintptr_t end = m.hi;
        struct mapping n;
        for (const char *p2 = pos; end - m.lo < st->reserved && next_mapping(&p2, &n);) {
            if (n.lo != end || n.ino != m.ino || !n.shared || n.offset != end - m.lo)
                break;
            end = n.hi;
        }
        if (end - m.lo != st->reserved)
            continue;
        v->rw = m.lo;
        v->ino = m.ino;
        memcpy(v->dev, m.dev, sizeof v->dev);
        found++;
    }
    return found;
}

static void remember_view(const struct dual_view *v)
{
    pthread_mutex_lock(&views_lock);
    unsigned slot = views_next;
    for (unsigned i = 0; i < VIEWS; i++)
        if (views[i].cache == v->cache)
            slot = i;
    if (slot == views_next)
        views_next = (views_next + 1) % VIEWS;
    views[slot] = *v;
    pthread_mutex_unlock(&views_lock);
}

struct code_cache *test_cache_create(const struct code_cache_options *opts)
{
    bool dual = opts != NULL && (opts->flags & CODE_CACHE_DUAL_MAP);
    char *before = dual ? read_proc("/proc/self/maps") : NULL;
    struct code_cache *cache = code_cache_create(opts);
    int saved = errno;
    if (cache == NULL || !dual) {
        free(before);
        errno = saved;
        return cache;
    }
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_str_eq(st.backend, "dual", "CODE_CACHE_DUAL_MAP gave another backend");
    cr_assert_not_null(st.dual_file);
    /* The RW view: the one new shared mapping of a file of the cache's size, offset 0. */
    char *after = read_proc("/proc/self/maps");
    struct dual_view v = {
        .cache = cache, .base = st.base, .reserved = st.reserved, .pid = getpid()};
    int found = find_rw_view(after, before, cache, &st, &v);
    free(before);
    free(after);
    cr_assert_eq(found, 1, "%d candidates for the RW view of the new dual-mapped cache", found);
    remember_view(&v);
    errno = saved;
    return cache;
}

/* Where the cache's RW view is: remembered by test_cache_create, or else (a cache made with
 * code_cache_create) looked for now, which works as long as no other unremembered dual-mapped
 * cache of the same size and file source could be taken for it. */
static struct dual_view view_of(const struct code_cache *cache, const struct code_cache_stats *st)
{
    struct dual_view v = {0};
    pthread_mutex_lock(&views_lock);
    for (unsigned i = 0; i < VIEWS; i++)
        if (views[i].cache == cache && views[i].base == st->base)
            v = views[i];
    pthread_mutex_unlock(&views_lock);
    if (v.cache != NULL)
        return v;
    v = (struct dual_view){
        .cache = cache, .base = st->base, .reserved = st->reserved, .pid = getpid()};
    char *maps = read_proc("/proc/self/maps");
    int found = find_rw_view(maps, NULL, cache, st, &v);
    free(maps);
    cr_assert_eq(found, 1,
                 "dual-mapped cache %p, not made with test_cache_create: %d candidates for its RW "
                 "view",
                 (const void *)cache, found);
    remember_view(&v);
    return v;
}

struct code_cache *test_cache_near_helper_flags(size_t size, unsigned flags)
{
    struct code_cache_options opts = {
        .size = size, .near = (const void *)helper_triple, .flags = flags};
    struct code_cache *cache = test_cache_create(&opts);
    cr_assert_not_null(cache, "code_cache_create near helper_triple (%s): %s",
                       flags & CODE_CACHE_DUAL_MAP ? "dual" : "mprotect", strerror(errno));
    check_maps(cache);
    return cache;
}

struct code_cache *test_cache_near_helper(size_t size)
{
    return test_cache_near_helper_flags(size, test_backend_flags());
}

/* ---- The maps of a cache ---- */

static bool overlaps(uintptr_t lo, uintptr_t hi, const struct mapping *m)
{
    return m->hi > lo && m->lo < hi;
}

static size_t clipped(uintptr_t lo, uintptr_t hi, const struct mapping *m)
{
    return (m->hi < hi ? m->hi : hi) - (m->lo > lo ? m->lo : lo);
}

#define MAPPING_FMT "%#" PRIxPTR "-%#" PRIxPTR " %s%c %.*s"
#define MAPPING_ARGS(m)                                                                            \
    (m).lo, (m).hi, (m).prot, (m).shared ? 's' : 'p', (int)(m).path_len, (m).path

void check_maps(const struct code_cache *cache)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    const uintptr_t page = test_page_size();
    const uintptr_t lo = st.base - page, hi = st.base + st.reserved + page;
    const bool dual = strcmp(st.backend, "dual") == 0;
    struct dual_view v = {0};
    bool child = false;
    uintptr_t rw_lo = 0, rw_hi = 0;
    if (dual) {
        v = view_of(cache, &st);
        child = v.pid != getpid();
        rw_lo = v.rw - page;
        rw_hi = v.rw + st.reserved + page;
        cr_assert(rw_hi < lo || hi < rw_lo,
                  "the RW view [%#" PRIxPTR ", %#" PRIxPTR ") touches the region [%#" PRIxPTR
                  ", %#" PRIxPTR ")",
                  rw_lo, rw_hi, lo, hi);
    }
    char *text = read_proc("/proc/self/maps");
    struct mapping m;
    size_t accessible = 0, covered = 0, rw_covered = 0;
    for (const char *pos = text; next_mapping(&pos, &m);) {
        cr_assert(!(m.prot[1] == 'w' && m.prot[2] == 'x' &&
                    (overlaps(lo, hi, &m) || (dual && same_file(&m, &v)))),
                  "W^X broken: " MAPPING_FMT, MAPPING_ARGS(m));
        if (overlaps(lo, hi, &m)) {
            uintptr_t a = m.lo > lo ? m.lo : lo, b = m.hi < hi ? m.hi : hi;
            covered += b - a;
            if (strcmp(m.prot, "---") == 0) {
                cr_assert(!dual || m.ino == 0,
                          "dual: an inaccessible page of the region maps "
                          "a file: " MAPPING_FMT,
                          MAPPING_ARGS(m));
                continue;
            }
            cr_assert(a >= st.base && b <= st.base + st.reserved,
                      "guard page accessible: " MAPPING_FMT, MAPPING_ARGS(m));
            accessible += b - a;
            if (dual) {
                cr_assert(strcmp(m.prot, "r-x") == 0 && m.shared && same_file(&m, &v),
                          "dual: the RX view holds " MAPPING_FMT ", not the file r-x",
                          MAPPING_ARGS(m));
                cr_assert_eq(m.offset, m.lo - st.base,
                             "dual: " MAPPING_FMT " maps file offset %#" PRIxPTR ", not %#" PRIxPTR,
                             MAPPING_ARGS(m), m.offset, m.lo - st.base);
            }
            continue;
        }
        if (!dual)
            continue;
        if (overlaps(rw_lo, rw_hi, &m) && !child) {
            rw_covered += clipped(rw_lo, rw_hi, &m);
            if (overlaps(rw_lo, v.rw, &m) || overlaps(v.rw + st.reserved, rw_hi, &m)) {
                cr_assert(strcmp(m.prot, "---") == 0 && m.ino == 0,
                          "dual: a guard page of the RW view is " MAPPING_FMT, MAPPING_ARGS(m));
                cr_assert(m.lo >= v.rw + st.reserved || m.hi <= v.rw || !same_file(&m, &v));
            }
            if (overlaps(v.rw, v.rw + st.reserved, &m)) {
                /* r--: pages CODE_CACHE_DUAL_HARDEN made read-only, all sealed code. */
                cr_assert((strcmp(m.prot, "rw-") == 0 || strcmp(m.prot, "r--") == 0) && m.shared &&
                              same_file(&m, &v) && m.lo >= v.rw && m.hi <= v.rw + st.reserved,
                          "dual: the RW view holds " MAPPING_FMT, MAPPING_ARGS(m));
                cr_assert_eq(m.offset, m.lo - v.rw,
                             "dual: the RW view " MAPPING_FMT " maps file offset %#" PRIxPTR,
                             MAPPING_ARGS(m), m.offset);
            }
            continue;
        }
        cr_assert(!same_file(&m, &v),
                  "dual: the cache's file is mapped outside both views: " MAPPING_FMT,
                  MAPPING_ARGS(m));
    }
    free(text);
    cr_assert_eq(covered, hi - lo, "the reservation has holes: %zu of %zu bytes mapped", covered,
                 (size_t)(hi - lo));
    cr_assert_eq(accessible, st.committed + st.retired,
                 "accessible bytes %zu != committed %zu + retired %zu", accessible, st.committed,
                 st.retired);
    if (dual && !child)
        cr_assert_eq(rw_covered, rw_hi - rw_lo,
                     "the RW view and its guard pages have holes: %zu of %zu bytes mapped",
                     rw_covered, (size_t)(rw_hi - rw_lo));
    if (dual && child)
        cr_assert_eq(mapped_bytes((const void *)rw_lo, rw_hi - rw_lo), 0,
                     "the RW view is still mapped in a fork()ed child");
}

size_t unmap_stray_file_mappings(const struct code_cache *cache)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    if (strcmp(st.backend, "dual") != 0)
        return 0;
    const uintptr_t page = test_page_size();
    const struct dual_view v = view_of(cache, &st);
    char *text = read_proc("/proc/self/maps");
    struct mapping m;
    size_t bytes = 0;
    for (const char *pos = text; next_mapping(&pos, &m);) {
        if (!same_file(&m, &v) || overlaps(st.base - page, st.base + st.reserved + page, &m) ||
            overlaps(v.rw - page, v.rw + st.reserved + page, &m))
            continue;
        cr_assert_eq(munmap((void *)m.lo, m.hi - m.lo), 0, "munmap: %s", strerror(errno));
        bytes += m.hi - m.lo;
    }
    free(text);
    return bytes;
}

size_t check_no_wx(const struct code_cache *cache)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    const uintptr_t page = test_page_size();
    const uintptr_t lo = st.base - page, hi = st.base + st.reserved + page;
    const bool dual = strcmp(st.backend, "dual") == 0;
    struct dual_view v = {0};
    uintptr_t rw_lo = 0, rw_hi = 0;
    if (dual) {
        v = view_of(cache, &st);
        rw_lo = v.rw - page;
        rw_hi = v.rw + st.reserved + page;
    }
    char *text = read_proc("/proc/self/maps");
    struct mapping m;
    size_t seen = 0;
    for (const char *pos = text; next_mapping(&pos, &m);) {
        bool region = overlaps(lo, hi, &m), rw_view = dual && overlaps(rw_lo, rw_hi, &m);
        bool file = dual && same_file(&m, &v);
        if (!region && !rw_view && !file)
            continue;
        seen += region || rw_view;
        cr_assert(!(m.prot[1] == 'w' && m.prot[2] == 'x'), "W^X broken: " MAPPING_FMT,
                  MAPPING_ARGS(m));
        cr_assert(!(dual && region && m.prot[1] == 'w'),
                  "dual: the RX view is writable: " MAPPING_FMT, MAPPING_ARGS(m));
        cr_assert(!(rw_view && m.prot[2] == 'x'), "dual: the RW view is executable: " MAPPING_FMT,
                  MAPPING_ARGS(m));
    }
    free(text);
    return seen;
}

void expect_prot(const void *addr, size_t len, const char *prot)
{
    uintptr_t lo = (uintptr_t)addr, hi = lo + len, next = lo;
    char *text = read_proc("/proc/self/maps");
    struct mapping m;
    for (const char *pos = text; next < hi && next_mapping(&pos, &m);) {
        if (m.hi <= next || m.lo > next)
            continue;
        cr_assert_str_eq(m.prot, prot, "%#" PRIxPTR " is %s, expected %s", next, m.prot, prot);
        next = m.hi;
    }
    free(text);
    cr_assert(next >= hi, "%#" PRIxPTR " is not mapped, expected %s", next, prot);
}

void page_prots(const void *addr, size_t pages, char (*prot)[4])
{
    const uintptr_t page = test_page_size(), lo = (uintptr_t)addr, hi = lo + pages * page;
    for (size_t i = 0; i < pages; i++)
        prot[i][0] = '\0';
    char *text = read_proc("/proc/self/maps");
    struct mapping m;
    for (const char *pos = text; next_mapping(&pos, &m);)
        for (uintptr_t a = m.lo > lo ? m.lo : lo; a < m.hi && a < hi; a += page)
            memcpy(prot[(a - lo) / page], m.prot, 4);
    free(text);
}

void page_prot(const void *addr, char prot[4])
{
    const uintptr_t page = test_page_size();
    page_prots((const void *)((uintptr_t)addr & ~(page - 1)), 1, (char(*)[4])prot);
}

void expect_open_chunk(const struct code_chunk *chunk)
{
    struct code_span span = code_chunk_span(chunk);
    cr_assert_not_null(span.rw);
    expect_prot(span.rw, span.size, "rw-");
    if (span.rw != span.rx)
        expect_prot(span.rx, span.size, "r-x");
}

void expect_sealed_chunk(const struct code_chunk *chunk)
{
    struct code_span span = code_chunk_span(chunk);
    cr_assert_not_null(span.rw);
    expect_prot(span.rx, span.size, "r-x");
    if (span.rw != span.rx)
        expect_prot(span.rw, span.size, "rw-");
}

static size_t first_not(const unsigned char *p, size_t len, unsigned char byte)
{
    size_t i = 0;
    while (i < len && p[i] == byte)
        i++;
    return i;
}

void expect_freed_span(struct code_span span)
{
    cr_assert_not_null(span.rx);
    if (span.rw == span.rx) {
        expect_prot(span.rx, span.size, "---");
        return;
    }
    const uintptr_t page = test_page_size();
    for (uintptr_t a = (uintptr_t)span.rx; a < (uintptr_t)span.rx + span.size;) {
        uintptr_t end = (a & ~(page - 1)) + page;
        if (end > (uintptr_t)span.rx + span.size)
            end = (uintptr_t)span.rx + span.size;
        char prot[4];
        page_prot((const void *)a, prot);
        if (strcmp(prot, "r-x") == 0) {
            size_t off = a - (uintptr_t)span.rx;
            const unsigned char *rx = (const unsigned char *)a;
            const unsigned char *rw = (const unsigned char *)span.rw + off;
            size_t i = first_not(rx, end - a, TEST_TRAP_BYTE);
            cr_assert_eq(i, end - a, "freed byte %zu at %p is %#x, not a trap", off + i,
                         (const void *)(rx + i), rx[i]);
            i = first_not(rw, end - a, TEST_TRAP_BYTE);
            cr_assert_eq(i, end - a, "freed byte %zu, written at %p, is %#x, not a trap", off + i,
                         (const void *)(rw + i), rw[i]);
        } else {
            cr_assert_str_eq(prot, "---", "freed code at %#" PRIxPTR " is %s", a, prot);
        }
        a = end;
    }
}

void expect_fresh_chunk(const struct code_chunk *chunk)
{
    struct code_span span = code_chunk_span(chunk);
    cr_assert_not_null(span.rw);
    const unsigned char fresh = span.rw == span.rx ? 0 : TEST_TRAP_BYTE;
    size_t i = first_not(span.rw, span.size, fresh);
    cr_assert_eq(i, span.size, "byte %zu of the chunk at %p is %#x, not %#x: old content", i,
                 span.rx, i < span.size ? ((const unsigned char *)span.rw)[i] : 0, fresh);
}

size_t open_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    cr_assert_not_null(dir, "opendir /proc/self/fd: %s", strerror(errno));
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(dir);
    return n - 1; /* the directory's own */
}

size_t mapped_bytes(const void *addr, size_t len)
{
    uintptr_t lo = (uintptr_t)addr, hi = lo + len;
    char *text = read_proc("/proc/self/maps");
    const char *pos = text;
    struct mapping m;
    size_t bytes = 0;
    while (next_mapping(&pos, &m))
        if (m.hi > lo && m.lo < hi)
            bytes += (m.hi < hi ? m.hi : hi) - (m.lo > lo ? m.lo : lo);
    free(text);
    return bytes;
}

static void put32(unsigned char *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
}

jit_fn try_emit_call(struct code_chunk *chunk, int (*helper)(int), int arg)
{
    /* The caller enters with rsp = 8 mod 16; the helper must be called with rsp = 0 mod 16. */
    static const unsigned char code[] = {
        0x48, 0x83, 0xec, 0x08,    /* sub rsp, 8 */
        0xbf, 0,    0,    0,    0, /* mov edi, imm32 */
        0xe8, 0,    0,    0,    0, /* call rel32 */
        0x48, 0x83, 0xc4, 0x08,    /* add rsp, 8 */
        0xc3,                      /* ret */
    };
    const void *target = code_chunk_call_target(chunk, (const void *)helper);
    if (target == NULL)
        return NULL;
    struct code_span span = code_chunk_alloc(chunk, sizeof code, 16);
    if (span.rw == NULL)
        return NULL;
    int64_t disp = (int64_t)((intptr_t)target - ((intptr_t)span.rx + 14));
    if (disp < INT32_MIN || disp > INT32_MAX || span.size != sizeof code ||
        (uintptr_t)span.rx % 16 != 0) {
        errno = ERANGE;
        return NULL;
    }
    unsigned char *p = span.rw;
    memcpy(p, code, sizeof code);
    put32(p + 5, (uint32_t)arg);
    put32(p + 10, (uint32_t)(int32_t)disp);
    return (jit_fn)span.rx;
}

jit_fn emit_call(struct code_chunk *chunk, int (*helper)(int), int arg)
{
    jit_fn fn = try_emit_call(chunk, helper, arg);
    cr_assert_not_null(fn, "emit_call: %s", strerror(errno));
    return fn;
}

jit_fn try_emit_return(struct code_chunk *chunk, int value)
{
    static const unsigned char code[] = {0xb8, 0, 0, 0, 0, 0xc3}; /* mov eax, imm32; ret */
    struct code_span span = code_chunk_alloc(chunk, sizeof code, 8);
    if (span.rw == NULL)
        return NULL;
    memcpy(span.rw, code, sizeof code);
    put32((unsigned char *)span.rw + 1, (uint32_t)value);
    return (jit_fn)span.rx;
}

jit_fn emit_return(struct code_chunk *chunk, int value)
{
    jit_fn fn = try_emit_return(chunk, value);
    cr_assert_not_null(fn, "code_chunk_alloc: %s", strerror(errno));
    return fn;
}

jit_fn fill_return(struct code_span span, int value)
{
    cr_assert_geq(span.size, 6, "a function returning a value takes 6 bytes at least");
    unsigned char *p = span.rw;
    p[0] = 0xb8; /* mov eax, imm32 */
    put32(p + 1, (uint32_t)value);
    memset(p + 5, 0x90, span.size - 6); /* nop */
    p[span.size - 1] = 0xc3;            /* ret */
    return (jit_fn)span.rx;
}

int (*far_function(const struct code_cache *cache))(int)
{
    static const unsigned char code[] = {0x8d, 0x44, 0x3f, 0x05, 0xc3}; /* lea eax,[rdi+rdi+5] */
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    const size_t page = test_page_size();
    const uintptr_t gap = (uintptr_t)8 << 30;
    /* Above the cache when there is room, else below: both are far outside any rel32 reach. */
    uintptr_t hint = st.base + st.reserved + gap;
    if (hint > ((uintptr_t)1 << 46))
        hint = st.base - gap;
    void *p = mmap((void *)hint, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert(p != MAP_FAILED, "mmap far page: %s", strerror(errno));
    memcpy(p, code, sizeof code);
    cr_assert_eq(mprotect(p, page, PROT_READ | PROT_EXEC), 0);
    cr_assert(!code_cache_reaches(cache, p), "the far page %p landed within reach", p);
    return (int (*)(int))p;
}

void far_function_release(int (*fn)(int))
{
    munmap((void *)fn, test_page_size());
}

size_t jemalloc_allocated(void)
{
    typedef int (*ctl_fn)(const char *, void *, size_t *, void *, size_t);
    typedef int (*name_fn)(const char *, size_t *, size_t *);
    typedef int (*mib_fn)(const size_t *, size_t, void *, size_t *, void *, size_t);
    ctl_fn ctl = (ctl_fn)dlsym(RTLD_DEFAULT, "mallctl");
    name_fn nametomib = (name_fn)dlsym(RTLD_DEFAULT, "mallctlnametomib");
    mib_fn bymib = (mib_fn)dlsym(RTLD_DEFAULT, "mallctlbymib");
    cr_assert(ctl != NULL && nametomib != NULL && bymib != NULL,
              "mallctl not found: is libjemalloc loaded?");
    uint64_t epoch = 1;
    size_t len = sizeof epoch;
    cr_assert_eq(ctl("epoch", &epoch, &len, &epoch, len), 0);
    unsigned narenas;
    len = sizeof narenas;
    cr_assert_eq(ctl("arenas.narenas", &narenas, &len, NULL, 0), 0);
    /* The names translated once; the arena index is component 2 of each. */
    size_t small[5], large[5], small_len = 5, large_len = 5;
    cr_assert_eq(nametomib("stats.arenas.0.small.allocated", small, &small_len), 0);
    cr_assert_eq(nametomib("stats.arenas.0.large.allocated", large, &large_len), 0);
    size_t total = 0;
    for (unsigned i = 0; i < narenas; i++) {
        size_t value;
        small[2] = large[2] = i;
        /* An index that was never initialised has no statistics: it holds nothing. */
        len = sizeof value;
        if (bymib(small, small_len, &value, &len, NULL, 0) == 0)
            total += value;
        len = sizeof value;
        if (bymib(large, large_len, &value, &len, NULL, 0) == 0)
            total += value;
    }
    return total;
}

unsigned jemalloc_narenas(void)
{
    typedef int (*ctl_fn)(const char *, void *, size_t *, void *, size_t);
    ctl_fn ctl = (ctl_fn)dlsym(RTLD_DEFAULT, "mallctl");
    cr_assert_not_null(ctl, "mallctl not found: is libjemalloc loaded?");
    unsigned narenas;
    size_t len = sizeof narenas;
    cr_assert_eq(ctl("arenas.narenas", &narenas, &len, NULL, 0), 0);
    return narenas;
}

size_t vm_size(void)
{
    char *text = read_proc("/proc/self/status");
    char *line = strstr(text, "VmSize:");
    cr_assert_not_null(line);
    size_t kib = strtoul(line + strlen("VmSize:"), NULL, 10);
    free(text);
    return kib * 1024;
}

static int fatal_sig;
static uintptr_t fatal_lo, fatal_hi;

static void fatal_handler(int sig, siginfo_t *si, void *uc_)
{
    uintptr_t at;
    if (sig == SIGSEGV) {
        at = (uintptr_t)si->si_addr;
    } else {
        /* int3 reports no address; the instruction pointer is just past the trap. */
        ucontext_t *uc = uc_;
        at = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP] - 1;
    }
    if (sig != fatal_sig || (fatal_lo != fatal_hi && (at < fatal_lo || at >= fatal_hi))) {
        static const char msg[] = "expect_fatal_signal: the fault is not the one expected\n";
        (void)!write(2, msg, sizeof msg - 1);
        raise(SIGKILL);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

void expect_fatal_signal(int sig, const void *lo, const void *hi)
{
    /* A jump into memory that was mapped PROT_NONE with mmap (the dual backend gives pages back
     * that way) is reported by memcheck before valgrind raises the SIGSEGV; memory made PROT_NONE
     * with mprotect is not. The fault is what the test wants: memcheck is told so. */
    if (lo != hi)
        VALGRIND_MAKE_MEM_DEFINED(lo, (const char *)hi - (const char *)lo);
    fatal_sig = sig;
    fatal_lo = (uintptr_t)lo;
    fatal_hi = (uintptr_t)hi;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fatal_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGSEGV, &sa, NULL), 0);
    cr_assert_eq(sigaction(SIGTRAP, &sa, NULL), 0);
}

void expect_child_fault(int sig, const void *lo, const void *hi, void (*fault)(void *), void *arg)
{
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        expect_fatal_signal(sig, lo, hi);
        fault(arg);
        static const char msg[] = "expect_child_fault: no fault\n";
        (void)!write(2, msg, sizeof msg - 1);
        _exit(111);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid, "waitpid: %s", strerror(errno));
    cr_assert(!WIFEXITED(status), "the child did not fault: it exited with %d",
              WEXITSTATUS(status));
    cr_assert(WTERMSIG(status) != SIGKILL,
              "the child faulted, but not with signal %d inside [%p, %p)", sig, lo, hi);
    cr_assert_eq(WTERMSIG(status), sig, "the child died of signal %d, not %d", WTERMSIG(status),
                 sig);
}

int fault_signal_at(const void *addr)
{
    char prot[4];
    page_prot(addr, prot);
    return prot[2] == 'x' ? SIGTRAP : SIGSEGV;
}
