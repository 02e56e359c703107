/*
 * Shared fixtures of the test programs (see helpers.h).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
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

struct code_cache *test_cache_near_helper(size_t size)
{
    struct code_cache_options opts = {.size = size, .near = (const void *)helper_triple};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "code_cache_create near helper_triple: %s", strerror(errno));
    check_maps(cache);
    return cache;
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

struct mapping {
    uintptr_t lo, hi;
    char prot[4];
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
static bool next_mapping(char **pos, struct mapping *m)
{
    const char *p = *pos;
    if (*p == '\0')
        return false;
    m->lo = parse_hex(&p);
    cr_assert_eq(*p, '-', "bad maps line: %.80s", *pos);
    p++;
    m->hi = parse_hex(&p);
    cr_assert_eq(*p, ' ', "bad maps line: %.80s", *pos);
    memcpy(m->prot, p + 1, 3);
    m->prot[3] = '\0';
    const char *eol = strchr(p, '\n');
    *pos = (char *)(eol != NULL ? eol + 1 : p + strlen(p));
    return true;
}

void check_maps(const struct code_cache *cache)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    const uintptr_t page = test_page_size();
    const uintptr_t lo = st.base - page, hi = st.base + st.reserved + page;
    char *text = read_proc("/proc/self/maps"), *pos = text;
    struct mapping m;
    size_t accessible = 0, covered = 0;
    while (next_mapping(&pos, &m)) {
        if (m.hi <= lo || m.lo >= hi)
            continue;
        uintptr_t a = m.lo > lo ? m.lo : lo, b = m.hi < hi ? m.hi : hi;
        covered += b - a;
        cr_assert(!(m.prot[1] == 'w' && m.prot[2] == 'x'),
                  "W^X broken: %#" PRIxPTR "-%#" PRIxPTR " is %s", m.lo, m.hi, m.prot);
        if (strcmp(m.prot, "---") == 0)
            continue;
        cr_assert(a >= st.base && b <= st.base + st.reserved,
                  "guard page accessible: %#" PRIxPTR "-%#" PRIxPTR " %s", m.lo, m.hi, m.prot);
        accessible += b - a;
    }
    free(text);
    cr_assert_eq(covered, hi - lo, "the reservation has holes: %zu of %zu bytes mapped", covered,
                 (size_t)(hi - lo));
    cr_assert_eq(accessible, st.committed + st.retired,
                 "accessible bytes %zu != committed %zu + retired %zu", accessible, st.committed,
                 st.retired);
}

size_t check_no_wx(const struct code_cache *cache)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    const uintptr_t page = test_page_size();
    const uintptr_t lo = st.base - page, hi = st.base + st.reserved + page;
    char *text = read_proc("/proc/self/maps"), *pos = text;
    struct mapping m;
    size_t seen = 0;
    while (next_mapping(&pos, &m)) {
        if (m.hi <= lo || m.lo >= hi)
            continue;
        seen++;
        cr_assert(!(m.prot[1] == 'w' && m.prot[2] == 'x'),
                  "W^X broken: %#" PRIxPTR "-%#" PRIxPTR " is %s", m.lo, m.hi, m.prot);
    }
    free(text);
    return seen;
}

void expect_prot(const void *addr, size_t len, const char *prot)
{
    uintptr_t lo = (uintptr_t)addr, hi = lo + len, next = lo;
    char *text = read_proc("/proc/self/maps"), *pos = text;
    struct mapping m;
    while (next < hi && next_mapping(&pos, &m)) {
        if (m.hi <= next || m.lo > next)
            continue;
        cr_assert_str_eq(m.prot, prot, "%#" PRIxPTR " is %s, expected %s", next, m.prot, prot);
        next = m.hi;
    }
    free(text);
    cr_assert(next >= hi, "%#" PRIxPTR " is not mapped, expected %s", next, prot);
}

void expect_zero_chunk(const struct code_chunk *chunk)
{
    struct code_span span = code_chunk_span(chunk);
    cr_assert_not_null(span.rw);
    const unsigned char *p = span.rw;
    size_t i = 0;
    while (i < span.size && p[i] == 0)
        i++;
    cr_assert_eq(i, span.size, "byte %zu of the chunk at %p is %#x: old content", i, span.rw,
                 i < span.size ? p[i] : 0);
}

size_t mapped_bytes(const void *addr, size_t len)
{
    uintptr_t lo = (uintptr_t)addr, hi = lo + len;
    char *text = read_proc("/proc/self/maps"), *pos = text;
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
