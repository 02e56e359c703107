/*
 * code_cache_find: the live chunk holding an address of either view, or NULL, for both backends;
 * from a signal handler (a SIGILL raised by JIT code asks which chunk it came from); and from a
 * thread that keeps looking while others allocate and free around the chunks it knows; and, on
 * x86-64, a lookup stopped (ptrace) at each of its instructions while another thread gives a kept
 * chunk back and reuses its record.
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

/* ---- A lookup stopped at every instruction ---- */

/* code_cache_find reads a granule's word, then (where thread caches keep chunks) the record's
 * state, then the word again. A reader can be preempted between any two of those loads for as
 * long as it takes another thread to give a kept chunk back and reuse its record elsewhere. Here
 * that is made to happen at every instruction of the lookup: a child process's reader thread is
 * single-stepped (ptrace) into code_cache_find and stopped after n instructions, n = 0, 1, 2...;
 * meanwhile the child's main thread makes a kept chunk A (128 B) go back to the index (its
 * thread exits) and takes A's record and first granule for a new 64-byte chunk, and a second one
 * for A's second granule. The stopped lookup is for A's second granule: whatever n, it must give
 * NULL or a chunk that covers that granule, never A's record (now the first new chunk). Without
 * the second read of the word it does, at the n between the first read and the state's. */
#if defined(__x86_64__)
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

static struct code_cache *paused_cache;
static struct code_span paused_a;
static int paused_to_worker[2], paused_kept[2], paused_up[2], paused_cmd[2];
static int paused_start; /* set by the parent through ptrace */
static struct code_chunk *paused_result;

static void *paused_worker(void *arg)
{
    (void)arg;
    struct code_chunk *a = code_cache_alloc(paused_cache, 128);
    static struct code_chunk *more[1100];
    for (int i = 0; i < 1100; i++)
        more[i] = code_cache_alloc(paused_cache, 1024);
    paused_a = code_chunk_span(a);
    code_chunk_free(a); /* kept by this thread, its words left in place */
    char c;
    if (write(paused_kept[1], "k", 1) != 1 || read(paused_to_worker[0], &c, 1) != 1)
        _exit(3);
    for (int i = 0; i < 1100; i++)
        code_chunk_free(more[i]);
    return NULL; /* its exit gives A back first (the smallest size), then the others */
}

static void *paused_reader(void *arg)
{
    (void)arg;
    const char *at = (const char *)paused_a.rx + 64;
    (void)code_cache_find(paused_cache, at); /* binds the call before the stepping */
    pid_t tid = (pid_t)syscall(SYS_gettid);
    if (write(paused_up[1], &tid, sizeof tid) != sizeof tid)
        _exit(3);
    while (!__atomic_load_n(&paused_start, __ATOMIC_ACQUIRE))
        ;
    paused_result = code_cache_find(paused_cache, at);
    return NULL;
}

/* The child: 0 when the stopped lookup's answer is right, 1 when wrong, 3 on a setup failure. */
static int paused_child(void)
{
    struct code_cache_options opts = {.size = 4 << 20, .flags = CODE_CACHE_DUAL_MAP};
    paused_cache = code_cache_create(&opts);
    pthread_t w, r;
    char c;
    if (paused_cache == NULL || pthread_create(&w, NULL, paused_worker, NULL) != 0 ||
        read(paused_kept[0], &c, 1) != 1 || pthread_create(&r, NULL, paused_reader, NULL) != 0)
        return 3;
    /* The parent stops the reader, then asks for the change. */
    if (read(paused_cmd[0], &c, 1) != 1 || write(paused_to_worker[1], "g", 1) != 1 ||
        pthread_join(w, NULL) != 0)
        return 3;
    struct code_chunk *c0 = code_cache_alloc(paused_cache, 64);
    struct code_chunk *c1 = code_cache_alloc(paused_cache, 64);
    if (c0 == NULL || c1 == NULL || code_chunk_span(c0).rx != paused_a.rx)
        return 3; /* the scenario did not happen: the test would prove nothing */
    if (write(paused_up[1], "d", 1) != 1 || pthread_join(r, NULL) != 0)
        return 3;
    const char *at = (const char *)paused_a.rx + 64;
    struct code_span s = paused_result ? code_chunk_span(paused_result) : (struct code_span){0};
    return paused_result == NULL || (at >= (const char *)s.rx && at < (const char *)s.rx + s.size)
               ? 0
               : 1;
}

/* Runs the child with its reader stopped n instructions into code_cache_find. Returns the
 * child's status, or -1 when the lookup had returned before n instructions. */
static int paused_run(long n)
{
    cr_assert(pipe(paused_to_worker) == 0 && pipe(paused_kept) == 0 && pipe(paused_up) == 0 &&
              pipe(paused_cmd) == 0);
    pid_t child = fork();
    cr_assert_neq(child, -1);
    if (child == 0)
        _exit(paused_child());
    char c;
    pid_t tid = 0;
    cr_assert_eq(read(paused_up[0], &tid, sizeof tid), (ssize_t)sizeof tid,
                 "the child's setup failed");
    int st;
    if (ptrace(PTRACE_SEIZE, tid, NULL, NULL) != 0) {
        int e = errno;
        kill(child, SIGKILL);
        waitpid(child, &st, 0);
        cr_skip_test("ptrace of a child's thread refused (%s: Yama's ptrace_scope?)", strerror(e));
    }
    cr_assert_eq(ptrace(PTRACE_INTERRUPT, tid, NULL, NULL), 0);
    cr_assert_eq(waitpid(tid, &st, __WALL), tid);
    /* Same addresses in the child (fork). */
    cr_assert_eq(ptrace(PTRACE_POKEDATA, tid, &paused_start, (void *)1), 0);
    const unsigned long long entry = (unsigned long long)(uintptr_t)&code_cache_find;
    struct user_regs_struct regs;
    unsigned long long sp_at_entry = 0;
    bool returned = false;
    for (long steps = 0;; steps++) {
        cr_assert_eq(ptrace(PTRACE_GETREGS, tid, NULL, &regs), 0);
        if (sp_at_entry == 0 && regs.rip == entry)
            sp_at_entry = regs.rsp, steps = 0;
        if (sp_at_entry != 0 && regs.rsp > sp_at_entry) {
            returned = true; /* past the lookup's ret */
            break;
        }
        if (sp_at_entry != 0 && steps >= n)
            break;
        cr_assert_lt(steps, 1000000, "the reader never reached code_cache_find");
        cr_assert_eq(ptrace(PTRACE_SINGLESTEP, tid, NULL, NULL), 0);
        cr_assert_eq(waitpid(tid, &st, __WALL), tid);
    }
    /* The reader stopped where it is: the main thread changes what it is looking at. */
    cr_assert_eq(write(paused_cmd[1], "m", 1), 1);
    cr_assert_eq(read(paused_up[0], &c, 1), 1, "the child's change failed");
    cr_assert_eq(ptrace(PTRACE_DETACH, tid, NULL, NULL), 0);
    cr_assert_eq(waitpid(child, &st, 0), child);
    for (int i = 0; i < 2; i++) {
        close(paused_to_worker[i]);
        close(paused_kept[i]);
        close(paused_up[i]);
        close(paused_cmd[i]);
    }
    cr_assert(WIFEXITED(st), "the child died: status %#x", st);
    cr_assert_neq(WEXITSTATUS(st), 3, "the child's scenario did not happen");
    return returned ? -1 : WEXITSTATUS(st);
}

Test(find, a_lookup_stopped_at_every_instruction_while_a_kept_record_is_reused)
{
    if (test_under_valgrind() || test_under_emulator() || test_dual_fetch_is_stale())
        cr_skip_test("ptrace of a thread of the test (not under valgrind or an emulator)");
    long n = 0;
    for (; n < 10000; n++) {
        int rc = paused_run(n);
        if (rc == -1)
            break;
        cr_assert_eq(rc, 0,
                     "stopped %ld instructions into code_cache_find, the lookup returned "
                     "a chunk that does not cover the address",
                     n);
    }
    cr_assert_gt(n, 10, "the lookup returned after %ld instructions", n);
    cr_log_info("code_cache_find stopped after each of its %ld instructions", n);
}
#endif
