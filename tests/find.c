/*
 * code_cache_find: the live chunk holding an address of either view, or NULL, for both backends;
 * from a signal handler (a SIGILL raised by JIT code asks which chunk it came from); and from a
 * thread that keeps looking while others allocate and free around the chunks it knows.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include <ucontext.h>

#include "helpers.h"

#define PAGE test_page_size()

static const unsigned backends[] = {0, CODE_CACHE_DUAL_MAP};

static struct code_cache *cache_for(unsigned flags, size_t size)
{
    struct code_cache_options opts = {
        .size = size, .near = (const void *)helper_triple, .flags = flags};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "create (flags %#x): %s", flags, strerror(errno));
    return cache;
}

Test(find, answers_for_live_freed_and_foreign_addresses)
{
    for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
        struct code_cache *cache = cache_for(backends[b], 64 * PAGE);
        struct code_cache_stats st;
        code_cache_get_stats(cache, &st);
        const size_t g = st.granule;
        struct code_chunk *c[5];
        for (int i = 0; i < 5; i++) {
            c[i] = code_cache_alloc(cache, (size_t)(i + 1) * g);
            cr_assert_not_null(c[i]);
        }
        cr_assert_eq(code_chunk_seal(c[1]), 0);
        for (int i = 0; i < 5; i++) {
            struct code_span s = code_chunk_span(c[i]);
            const char *views[2] = {s.rx, s.rw};
            for (int v = 0; v < 2; v++) {
                cr_assert_eq(code_cache_find(cache, views[v]), c[i], "%s: chunk %d, first byte",
                             st.backend, i);
                cr_assert_eq(code_cache_find(cache, views[v] + s.size / 2), c[i]);
                cr_assert_eq(code_cache_find(cache, views[v] + s.size - 1), c[i], "last byte");
            }
        }
        /* Beyond the live chunks, outside the cache, NULL. */
        struct code_span last = code_chunk_span(c[4]);
        cr_assert_null(code_cache_find(cache, (char *)last.rx + last.size), "never used");
        cr_assert_null(code_cache_find(cache, (const void *)(st.base - 1)), "the guard page");
        cr_assert_null(code_cache_find(cache, (const void *)(st.base + st.reserved)));
        cr_assert_null(code_cache_find(cache, &st), "the stack");
        cr_assert_null(code_cache_find(cache, NULL));
        cr_assert_null(code_cache_find(NULL, last.rx));
        /* Freed: NULL for every byte of it, while its neighbours stay found. */
        struct code_span s2 = code_chunk_span(c[2]);
        code_chunk_free(c[2]);
        cr_assert_null(code_cache_find(cache, s2.rx));
        cr_assert_null(code_cache_find(cache, (char *)s2.rx + s2.size - 1));
        cr_assert_null(code_cache_find(cache, s2.rw));
        cr_assert_eq(code_cache_find(cache, (char *)s2.rx - 1), c[1]);
        cr_assert_eq(code_cache_find(cache, (char *)s2.rx + s2.size), c[3]);
        /* A new chunk in the freed span is found as itself. */
        struct code_chunk *again = code_cache_alloc(cache, 3 * g);
        while (again != NULL && code_chunk_span(again).rx != s2.rx) {
            /* Never-used space comes first; take it until the freed span is reached. */
            again = code_cache_alloc(cache, 3 * g);
        }
        cr_assert_not_null(again, "the freed span was never handed out again");
        cr_assert_eq(code_cache_find(cache, s2.rx), again);
        /* After a reset, nothing. */
        cr_assert_eq(code_cache_reset(cache), 0);
        cr_assert_null(code_cache_find(cache, s2.rx));
        cr_assert_null(code_cache_find(cache, last.rx));
        code_cache_destroy(cache);
    }
}

/* ---- From a signal handler ---- */

static struct code_cache *sig_cache;
static struct code_chunk *sig_found;
static sigjmp_buf sig_back;

static void on_sigill(int sig, siginfo_t *si, void *uc)
{
    (void)sig, (void)si;
    /* The handler's whole question: is this pc JIT code, and whose? */
    sig_found = code_cache_find(sig_cache, (const void *)test_context_pc(uc));
    siglongjmp(sig_back, 1);
}

Test(find, works_from_a_signal_handler_on_the_faulting_pc)
{
    for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
        sig_cache = cache_for(backends[b], 64 * PAGE);
        struct code_chunk *other = code_cache_alloc(sig_cache, 100);
        struct code_chunk *chunk = code_cache_alloc(sig_cache, 100);
        struct code_span s = code_chunk_alloc(chunk, TEST_ILLEGAL_SIZE, TEST_INSN_ALIGN);
        cr_assert(other != NULL && s.rw != NULL);
        test_write_illegal(s.rw);
        cr_assert_eq(code_chunk_seal(chunk), 0);
        struct sigaction sa, old;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigill;
        sa.sa_flags = SA_SIGINFO;
        cr_assert_eq(sigaction(SIGILL, &sa, &old), 0);
        sig_found = NULL;
        if (sigsetjmp(sig_back, 1) == 0)
            ((jit_fn)s.rx)();
        sigaction(SIGILL, &old, NULL);
        cr_assert_eq(sig_found, chunk, "the handler found %p, expected %p", (void *)sig_found,
                     (void *)chunk);
        code_cache_destroy(sig_cache);
    }
}

/* ---- While other threads allocate and free ---- */

struct churner {
    struct code_cache *cache;
    int rounds, done;
};

static void *churn(void *arg)
{
    struct churner *c = arg;
    struct code_chunk *keep[8] = {0};
    for (int i = 0; i < c->rounds; i++) {
        int k = i % 8;
        code_chunk_free(keep[k]);
        keep[k] = code_cache_alloc(c->cache, (size_t)(1 + i % 5) * 64);
    }
    for (int k = 0; k < 8; k++)
        code_chunk_free(keep[k]);
    __atomic_store_n(&c->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

Test(find, finds_stable_chunks_while_others_come_and_go)
{
    for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
        struct code_cache *cache = cache_for(backends[b], 256 * PAGE);
        struct code_cache_stats st;
        code_cache_get_stats(cache, &st);
        enum { STABLE = 16 };
        struct code_chunk *stable[STABLE];
        struct code_span span[STABLE];
        for (int i = 0; i < STABLE; i++) {
            stable[i] = code_cache_alloc(cache, 100);
            cr_assert_not_null(stable[i]);
            span[i] = code_chunk_span(stable[i]);
        }
        struct churner c = {cache, test_under_valgrind() ? 2000 : 50000, 0};
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, churn, &c), 0);
        long looks = 0;
        uint64_t x = 88172645463325252u;
        while (!__atomic_load_n(&c.done, __ATOMIC_SEQ_CST)) {
            for (int i = 0; i < STABLE; i++, looks++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                const char *p = (const char *)span[i].rx + x % span[i].size;
                cr_assert_eq(code_cache_find(cache, p), stable[i], "a live chunk was not found");
            }
            /* Any address of the cache: NULL, or a chunk that holds it. */
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            const char *p = (const char *)st.base + x % st.reserved;
            struct code_chunk *found = code_cache_find(cache, p);
            if (found != NULL) {
                /* The chunk may be freed, even reused elsewhere, right after the lookup; a
                 * second lookup that agrees with the first rules that out. */
                struct code_span s = code_chunk_span(found);
                bool holds = s.rx != NULL && p >= (char *)s.rx && p < (char *)s.rx + s.size;
                cr_assert(holds || code_cache_find(cache, p) != found,
                          "find returned a chunk that does not hold the address");
            }
        }
        pthread_join(t, NULL);
        cr_log_info("%s: %ld lookups while %d chunks came and went", st.backend, looks, c.rounds);
        code_cache_destroy(cache);
    }
}
