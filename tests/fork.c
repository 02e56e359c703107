/*
 * fork() with a live cache. Dual-mapped: both views are MAP_SHARED, so a child writing through the
 * RW view would change the parent's code (a known attack on dual mappings); the RW view is not
 * inherited (MADV_DONTFORK), sealed code still runs in the child, every call that would write
 * fails with EPERM, a free is bookkeeping only, destroy is safe, and the parent's code and
 * statistics are untouched. mprotect: the child's memory is its own copy, everything works there
 * and nothing reaches the parent. Under valgrind too (the child is traced).
 *
 * Run once per backend (helpers.h). The child cannot use Criterion's assertions (a failing one
 * in a forked process never returns), so it checks with child_check and exits 1 on the first
 * failure; an alarm ends it if check_maps, which does assert, ever fails there.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define PAGE test_page_size()

__attribute__((format(printf, 2, 3))) static void child_check(bool ok, const char *fmt, ...)
{
    if (ok)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fork child: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    _exit(1);
}

static void child_expect_errno(int rc_failed, int err, const char *call)
{
    child_check(rc_failed, "%s succeeded in the child", call);
    child_check(errno == err, "%s: errno %d (%s), expected %d", call, errno, strerror(errno), err);
}

/* Forks; the child runs body(arg) and exits 0 unless a check failed. Asserts that it did. */
static void in_child(void (*body)(void *), void *arg)
{
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        alarm(test_under_valgrind() ? 300 : 30);
        body(arg);
        _exit(0);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(!WIFSIGNALED(status), "the child died of signal %d%s", WTERMSIG(status),
              WTERMSIG(status) == SIGALRM
                  ? " (its alarm: it waited, or an assertion of check_maps failed in it)"
                  : "");
    cr_assert_eq(WEXITSTATUS(status), 0, "the child failed a check (see its message above)");
}

struct scene {
    struct code_cache *cache;
    bool dual;
    struct code_chunk *sealed, *doomed, *open;
    jit_fn call5, ret77, ret55, ret3;
    int (*far)(int);
    unsigned char sealed_bytes[256], doomed_bytes[256];
    struct code_cache_stats stats;
};

static void exit_faulted(int sig)
{
    (void)sig;
    _exit(77);
}

/* Whether the kernel withholds a MADV_DONTFORK mapping from a child: a shared page so marked is
 * written in a fork()ed child, which must fault. qemu-user's madvise ignores the advice. The
 * child catches the fault and exits (a fault it died of would be a memcheck report). */
static bool dontfork_honoured(void)
{
    char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert(p != MAP_FAILED, "mmap: %s", strerror(errno));
    cr_assert_eq(madvise(p, PAGE, MADV_DONTFORK), 0, "madvise: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        signal(SIGSEGV, exit_faulted);
        *(volatile char *)p = 1;
        _exit(0);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    munmap(p, PAGE);
    cr_assert(WIFEXITED(status), "the child died of signal %d", WTERMSIG(status));
    return WEXITSTATUS(status) == 77;
}

static void scene_init(struct scene *s)
{
    if (test_dual() && !dontfork_honoured()) {
        static const char why[] = "skipped: MADV_DONTFORK is not honoured here (qemu-user's "
                                  "madvise ignores it): a child inherits the RW view, which the "
                                  "dual backend relies on the kernel to withhold";
        fprintf(stderr, "fork: %s\n", why); /* in the log without --verbose, unlike the skip's */
        cr_skip_test("%s", why);
    }
    memset(s, 0, sizeof *s);
    s->cache = test_cache_near_helper(1 << 20);
    s->dual = test_cache_is_dual(s->cache);
    s->far = far_function(s->cache);
    s->sealed = code_cache_alloc(s->cache, 200);
    s->doomed = code_cache_alloc(s->cache, 200);
    s->open = code_cache_alloc(s->cache, 200);
    cr_assert(s->sealed != NULL && s->doomed != NULL && s->open != NULL);
    s->call5 = emit_call(s->sealed, helper_triple, 5);
    s->ret77 = emit_return(s->sealed, 77);
    s->ret55 = emit_return(s->doomed, 55);
    s->ret3 = emit_return(s->open, 3);
    cr_assert_eq(code_chunk_seal(s->sealed), 0);
    cr_assert_eq(code_chunk_seal(s->doomed), 0);
    check_maps(s->cache);
    cr_assert_eq(s->call5(), 16);
    cr_assert_eq(s->ret77(), 77);
    cr_assert_eq(s->ret55(), 55);
    memcpy(s->sealed_bytes, code_chunk_span(s->sealed).rx, sizeof s->sealed_bytes);
    memcpy(s->doomed_bytes, code_chunk_span(s->doomed).rx, sizeof s->doomed_bytes);
    code_cache_get_stats(s->cache, &s->stats);
}

/* The parent after the child: its code and its cache are as they were, and everything works. */
static void scene_check_parent(struct scene *s)
{
    check_maps(s->cache);
    struct code_cache_stats st;
    code_cache_get_stats(s->cache, &st);
    st.meta_resident = s->stats.meta_resident;
    cr_assert_eq(memcmp(&st, &s->stats, sizeof st), 0, "the child changed the parent's cache");
    cr_assert_eq(memcmp(code_chunk_span(s->sealed).rx, s->sealed_bytes, sizeof s->sealed_bytes), 0,
                 "the child changed the parent's sealed code");
    cr_assert_eq(memcmp(code_chunk_span(s->doomed).rx, s->doomed_bytes, sizeof s->doomed_bytes), 0,
                 "the child's free changed the parent's code");
    cr_assert_eq(s->call5(), 16);
    cr_assert_eq(s->ret77(), 77);
    cr_assert_eq(s->ret55(), 55);

    /* Every writing call works in the parent. */
    cr_assert_not_null(code_chunk_call_target(s->open, (const void *)s->far));
    jit_fn more = emit_return(s->open, 4);
    cr_assert_eq(code_chunk_seal(s->open), 0);
    cr_assert_eq(s->ret3(), 3);
    cr_assert_eq(more(), 4);
    if (s->dual) {
        cr_assert_eq(test_patch_return(s->sealed, s->ret77, 78), 0);
        cr_assert_eq(s->ret77(), 78);
    }
    struct code_chunk *fresh = code_cache_alloc(s->cache, 100);
    cr_assert_not_null(fresh);
    jit_fn f = emit_call(fresh, helper_triple, 9);
    cr_assert_eq(code_chunk_seal(fresh), 0);
    cr_assert_eq(f(), 28);
    code_chunk_free(s->doomed);
    check_maps(s->cache);
    cr_assert_eq(code_cache_reset(s->cache), 0);
    check_maps(s->cache);
    code_cache_destroy(s->cache);
    far_function_release(s->far);
}

static void child_uses_the_cache(void *arg)
{
    struct scene *s = arg;
    child_check(s->call5() == 16 && s->ret77() == 77 && s->ret55() == 55,
                "sealed code does not run in the child");
    child_check(code_cache_find(s->cache, (const void *)s->ret77) == s->sealed,
                "code_cache_find in the child");
    int value = 99;
    if (s->dual) {
        errno = 0;
        child_expect_errno(code_cache_alloc(s->cache, 100) == NULL, EPERM, "code_cache_alloc");
        errno = 0;
        child_expect_errno(code_chunk_alloc(s->open, 8, 8).rw == NULL, EPERM, "code_chunk_alloc");
        errno = 0;
        child_expect_errno(code_chunk_reserve(s->open, 1).rw == NULL, EPERM, "code_chunk_reserve");
        errno = 0;
        child_expect_errno(code_chunk_commit(s->open, 0) == -1, EPERM, "code_chunk_commit");
        errno = 0;
        child_expect_errno(code_chunk_seal(s->open) == -1, EPERM, "code_chunk_seal");
        errno = 0;
        child_expect_errno(code_chunk_patch(s->sealed, (char *)s->ret77 + 1, &value, 4) == -1,
                           EPERM, "code_chunk_patch");
        errno = 0;
        child_expect_errno(code_chunk_call_target(s->open, (const void *)s->far) == NULL, EPERM,
                           "code_chunk_call_target needing a veneer");
        child_check(code_chunk_call_target(s->open, (const void *)helper_triple) ==
                        (const void *)helper_triple,
                    "code_chunk_call_target needing no veneer");
        errno = 0;
        child_expect_errno(code_cache_reset(s->cache) == -1, EPERM, "code_cache_reset");
        /* A free is bookkeeping: the parent's code is neither trapped nor released. */
        struct code_span span = code_chunk_span(s->doomed);
        code_chunk_free(s->doomed);
        child_check(memcmp(span.rx, s->doomed_bytes, sizeof s->doomed_bytes) == 0,
                    "the child's free changed the code");
        child_check(s->ret55() == 55, "the freed chunk's code no longer runs in the child");
        struct code_cache_stats st;
        code_cache_get_stats(s->cache, &st);
        child_check(st.retired == s->stats.retired + span.size,
                    "the span freed in the child is not retired (%zu)", st.retired);
        child_check(st.sealed_chunks == s->stats.sealed_chunks - 1, "sealed_chunks");
        child_check(st.open_chunks == s->stats.open_chunks, "open_chunks");
        check_maps(s->cache);
        child_check(s->call5() == 16 && s->ret77() == 77, "sealed code after the failed calls");
    } else {
        /* The child's own copy: everything works, nothing reaches the parent. */
        child_expect_errno(code_chunk_patch(s->sealed, (char *)s->ret77 + 1, &value, 4) == -1,
                           ENOTSUP, "code_chunk_patch");
        child_check(code_chunk_call_target(s->open, (const void *)s->far) != NULL,
                    "code_chunk_call_target: %s", strerror(errno));
        jit_fn more = try_emit_return(s->open, 300);
        child_check(more != NULL, "code_chunk_alloc: %s", strerror(errno));
        child_check(code_chunk_seal(s->open) == 0, "seal: %s", strerror(errno));
        child_check(more() == 300, "the child's new code");
        struct code_chunk *c = code_cache_alloc(s->cache, 100);
        child_check(c != NULL, "code_cache_alloc: %s", strerror(errno));
        code_chunk_free(s->doomed);
        check_maps(s->cache);
        child_check(code_cache_reset(s->cache) == 0, "reset: %s", strerror(errno));
        check_maps(s->cache);
    }
    code_cache_destroy(s->cache);
}

Test(fork, the_child_runs_sealed_code_and_never_writes_to_the_parents)
{
    struct scene s;
    scene_init(&s);
    in_child(child_uses_the_cache, &s);
    scene_check_parent(&s);
}

/* Threads at work while the test forks: one function at a time, allocated, sealed, run and freed
 * (with the dual backend through the thread's cache, without the lock); the same with a name
 * (the locked way, and gdb's list of objects: the cache has CODE_CACHE_GDB_JIT); short-lived
 * threads that exit with chunks kept; and caches created and destroyed (the pool of arenas). */
struct busy {
    struct code_cache *cache;
    unsigned flags;
    atomic_bool stop;
};

static void busy_functions(struct busy *b, bool named, unsigned count)
{
    for (unsigned i = 0; i < count && !atomic_load(&b->stop); i++) {
        struct code_chunk *c = code_cache_alloc(b->cache, 64);
        if (c == NULL)
            continue;
        jit_fn fn = try_emit_return(c, 5);
        if (fn != NULL && named)
            code_chunk_name(c, (const void *)fn, 6, "busy");
        if (fn != NULL && code_chunk_seal(c) == 0)
            (void)fn();
        code_chunk_free(c);
    }
}

static void *busy_unnamed(void *arg)
{
    while (!atomic_load(&((struct busy *)arg)->stop))
        busy_functions(arg, false, 1000);
    return NULL;
}

static void *busy_named(void *arg)
{
    while (!atomic_load(&((struct busy *)arg)->stop))
        busy_functions(arg, true, 1000);
    return NULL;
}

static void *busy_short_lived(void *arg)
{
    busy_functions(arg, false, 50);
    return NULL;
}

static void *busy_creator(void *arg)
{
    struct busy *b = arg;
    while (!atomic_load(&b->stop)) {
        struct code_cache_options opts = {.size = 1 << 20, .flags = test_backend_flags()};
        code_cache_destroy(code_cache_create(&opts));
    }
    return NULL;
}

static void *busy_spawner(void *arg)
{
    struct busy *b = arg;
    while (!atomic_load(&b->stop)) {
        pthread_t t;
        if (pthread_create(&t, NULL, busy_short_lived, b) == 0)
            pthread_join(t, NULL);
    }
    return NULL;
}

/* The child has none of those threads: whatever they were doing at the fork (holding the cache's
 * lock, working outside it, inside a thread cache's fast path, exiting), it must not wait for
 * them. Its alarm ends a child that waits. */
static void child_does_not_wait(void *arg)
{
    struct busy *b = arg;
    alarm(10);
    struct code_cache_stats st;
    code_cache_get_stats(b->cache, &st);
    child_check(st.reserved > 0, "no statistics");
    struct code_chunk *c = code_cache_alloc(b->cache, 64);
    child_check(c == NULL || !test_cache_is_dual(b->cache), "a dual cache allocated in a child");
    code_chunk_free(c);
    code_cache_destroy(b->cache);
    /* A cache of the child's own: an arena from the pool, a name registered with gdb and gone. */
    struct code_cache *mine =
        code_cache_create(&(struct code_cache_options){.size = 1 << 20, .flags = b->flags});
    child_check(mine != NULL, "code_cache_create in the child: %s", strerror(errno));
    c = code_cache_alloc(mine, 64);
    child_check(c != NULL, "code_cache_alloc in the child's cache: %s", strerror(errno));
    jit_fn fn = try_emit_return(c, 9);
    child_check(fn != NULL, "emit: %s", strerror(errno));
    child_check(code_chunk_name(c, (const void *)fn, 6, "child") == 0, "name: %s", strerror(errno));
    child_check(code_chunk_seal(c) == 0, "seal: %s", strerror(errno));
    child_check(fn() == 9, "the child's named function");
    code_chunk_free(c);
    code_cache_destroy(mine);
}

Test(fork, a_child_forked_while_threads_work_does_not_wait_for_them)
{
    if (test_dual() && !dontfork_honoured())
        cr_skip_test("MADV_DONTFORK is not honoured here (qemu-user)");
    /* valgrind runs one thread at a time, each fork copies its shadow memory, and a child took
     * minutes: the suite under ASan runs it natively. */
    if (test_under_valgrind())
        cr_skip_test("slow under valgrind (minutes per child); run natively by the ASan suite");
    unsigned flags = test_backend_flags() | CODE_CACHE_GDB_JIT;
    struct busy b = {.cache = test_cache_near_helper_flags(4 << 20, flags), .flags = flags};
    pthread_t threads[4];
    cr_assert_eq(pthread_create(&threads[0], NULL, busy_unnamed, &b), 0);
    cr_assert_eq(pthread_create(&threads[1], NULL, busy_named, &b), 0);
    cr_assert_eq(pthread_create(&threads[2], NULL, busy_spawner, &b), 0);
    cr_assert_eq(pthread_create(&threads[3], NULL, busy_creator, &b), 0);
    usleep(100 * 1000);
    const int forks = 24;
    for (int i = 0; i < forks; i++) {
        in_child(child_does_not_wait, &b);
        usleep(1000 * (unsigned)(i % 7));
    }
    atomic_store(&b.stop, true);
    for (int i = 0; i < 4; i++)
        pthread_join(threads[i], NULL);
    code_cache_destroy(b.cache);
}

/* ---- A fork() racing the process's first code_cache_create ----
 *
 * glibc runs only the fork handlers registered before a fork() began, and lets pthread_atfork
 * return while a fork runs the others. A library that registered its handlers at its first create
 * had none for a fork begun a moment earlier, and that create could hold the pool of arenas' lock
 * or gdb's (a named function) when the process was copied. Each worker below is a process that
 * never made a cache: its main thread forks, the program's own prepare handler holds the fork for
 * 50 ms, and meanwhile another thread makes the worker's first caches; the grandchild then makes a
 * named function in a cache of its own, under an alarm. */
static bool race_armed; /* in a worker only */
static atomic_int race_fork_begun, race_forked;

static void race_prepare(void)
{
    if (!race_armed)
        return;
    atomic_store(&race_fork_begun, 1);
    usleep(50 * 1000);
}

static bool race_named_function(void)
{
    struct code_cache_options opts = {.size = 1 << 20,
                                      .flags = test_backend_flags() | CODE_CACHE_GDB_JIT};
    struct code_cache *cache = code_cache_create(&opts);
    if (cache == NULL)
        return false;
    struct code_chunk *c = code_cache_alloc(cache, 64);
    jit_fn fn = c != NULL ? try_emit_return(c, 4) : NULL;
    bool ok = fn != NULL && code_chunk_name(c, (const void *)fn, 6, "first") == 0 &&
              code_chunk_seal(c) == 0 && fn() == 4;
    code_chunk_free(c);
    code_cache_destroy(cache);
    return ok;
}

/* The worker's first caches, made while its main thread forks. */
static void *race_creator(void *arg)
{
    (void)arg;
    while (!atomic_load(&race_fork_begun))
        ;
    while (!atomic_load(&race_forked))
        if (!race_named_function())
            return (void *)(intptr_t)6;
    return NULL;
}

/* 0: the grandchild did its work; 1: it waited until its alarm; 2 or more: another failure. */
static int race_worker(void)
{
    race_armed = true;
    pthread_t t;
    if (pthread_create(&t, NULL, race_creator, NULL) != 0)
        return 5;
    pid_t pid = fork();
    if (pid == 0) {
        alarm(5);
        _exit(race_named_function() ? 0 : 3);
    }
    atomic_store(&race_forked, 1);
    void *failed;
    pthread_join(t, &failed);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || failed != NULL)
        return 4;
    if (WIFSIGNALED(status))
        return WTERMSIG(status) == SIGALRM ? 1 : 2;
    return WEXITSTATUS(status) == 0 ? 0 : 2;
}

Test(fork, a_fork_racing_the_first_create_leaves_no_lock_held)
{
    if (test_under_valgrind())
        cr_skip_test("slow under valgrind (minutes per child); run natively by the ASan suite");
    if (test_under_emulator())
        cr_skip_test("qemu-user aborts on a fork() right after a thread was created "
                     "(qemu_plugin_vcpu_init_hook: assertion failed); run natively");
    pthread_atfork(race_prepare, NULL, NULL);
    const int workers = 40;
    int waited = 0;
    for (int i = 0; i < workers; i++) {
        fflush(NULL);
        pid_t pid = fork();
        cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
        if (pid == 0)
            _exit(race_worker());
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status), "worker %d died of signal %d", i, WTERMSIG(status));
        cr_assert(WEXITSTATUS(status) <= 1, "worker %d failed (%d)", i, WEXITSTATUS(status));
        waited += WEXITSTATUS(status);
    }
    cr_assert_eq(waited, 0, "%d of %d children of a fork racing the first create waited forever",
                 waited, workers);
}

static void write_through(void *rw)
{
    *(volatile unsigned char *)rw = 0x90;
}

/* The attack: a child writing where the parent's code is written. Dual: the RW view is not there,
 * so the write faults. mprotect: .rw is where the code runs, r-x: the write faults too. */
Test(fork, a_child_writing_through_the_rw_view_faults)
{
    struct scene s;
    scene_init(&s);
    unsigned char *rw = code_chunk_span(s.sealed).rw;
    expect_child_fault(SIGSEGV, rw, rw + 1, write_through, rw);
    unsigned char *ret77_rw = rw + ((char *)s.ret77 - (char *)code_chunk_span(s.sealed).rx);
    expect_child_fault(SIGSEGV, ret77_rw, ret77_rw + 1, write_through, ret77_rw);
    scene_check_parent(&s);
}

static void child_creates_its_own_cache(void *arg)
{
    struct scene *s = arg;
    /* The parent's cache is frozen here; a cache made in the child is the child's, writable. */
    struct code_cache *mine = test_cache_near_helper(1 << 20);
    struct code_chunk *c = code_cache_alloc(mine, 100);
    child_check(c != NULL, "code_cache_alloc in the child's own cache: %s", strerror(errno));
    jit_fn f = try_emit_call(c, helper_triple, 7);
    child_check(f != NULL, "emit: %s", strerror(errno));
    child_check(code_chunk_seal(c) == 0, "seal: %s", strerror(errno));
    child_check(f() == 22, "the child's own code");
    if (s->dual) {
        child_check(test_patch_call_arg(c, f, 8) == 0, "patch: %s", strerror(errno));
        child_check(f() == 25, "the child's patched code");
        errno = 0;
        child_expect_errno(code_cache_alloc(s->cache, 100) == NULL, EPERM,
                           "code_cache_alloc in the parent's cache");
    }
    check_maps(mine);
    code_chunk_free(c);
    check_maps(mine);
    code_cache_destroy(mine);
    check_maps(s->cache);
    code_cache_destroy(s->cache);
}

Test(fork, a_cache_created_in_the_child_is_the_childs)
{
    struct scene s;
    scene_init(&s);
    in_child(child_creates_its_own_cache, &s);
    scene_check_parent(&s);
}
