/*
 * dlopen(): a program that links neither libcodecache nor jemalloc loads the freshly built
 * library at run time (tests/dlopen_child, started here with a chosen environment) and runs code
 * from it.
 *
 * With the system's jemalloc (Debian's libjemalloc.so.2 uses initial-exec TLS) the plain dlopen
 * fails with glibc's static-TLS message, and the remedy the README documents (a glibc tunable,
 * which the loader reads at startup: hence a fresh exec) makes it load. Both are checked, so that
 * if glibc or jemalloc ever change, this test fails and the documentation gets updated.
 * With --with-private-jemalloc the plain dlopen must work and load no libjemalloc.
 *
 * This program is linked with Criterion only. It is run natively by tests/dlopen.sh, which passes
 * the remedy exactly as README.md writes it (see there for why not under valgrind).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* From configure: 1 when the library carries a private jemalloc (--with-private-jemalloc). */
#ifndef TEST_PRIVATE_JEMALLOC
#error "TEST_PRIVATE_JEMALLOC must be 0 or 1"
#endif
#define SYSTEM_JEMALLOC (!TEST_PRIVATE_JEMALLOC)

/* glibc's refusal, as dlerror() words it after the path of the library it could not load. */
#define STATIC_TLS_MESSAGE "libjemalloc.so.2: cannot allocate memory in static TLS block"

extern char **environ;

struct child_result {
    int status;        /* as from waitpid */
    char output[8192]; /* standard output and error, interleaved */
};

static const char *env_or(const char *name, const char *fallback)
{
    const char *value = getenv(name);
    return value != NULL && value[0] != '\0' ? value : fallback;
}

/* Runs tests/dlopen_child on the library (with mode as its second argument unless NULL) with this
 * process's environment, minus what changes how the loader works (GLIBC_TUNABLES, LD_PRELOAD),
 * plus extra (NULL-terminated). */
static void run_child(const char *const *extra, const char *mode, struct child_result *r)
{
    const char *child = env_or("CODECACHE_DLOPEN_CHILD", "./tests/dlopen_child");
    const char *lib = env_or("CODECACHE_LIB", "./lib/.libs/libcodecache.so");
    cr_assert_eq(access(lib, R_OK), 0, "%s: %s", lib, strerror(errno));

    size_t n = 0, extras = 0;
    while (environ[n] != NULL)
        n++;
    while (extra[extras] != NULL)
        extras++;
    char **envp = calloc(n + extras + 1, sizeof *envp);
    cr_assert_not_null(envp);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "GLIBC_TUNABLES=", 15) != 0 &&
            strncmp(environ[i], "LD_PRELOAD=", 11) != 0)
            envp[k++] = environ[i];
    for (size_t i = 0; i < extras; i++)
        envp[k++] = (char *)extra[i];
    envp[k] = NULL;

    int out[2];
    cr_assert_eq(pipe(out), 0);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(out[1], STDOUT_FILENO);
        dup2(out[1], STDERR_FILENO);
        close(out[0]);
        close(out[1]);
        char *argv[] = {(char *)child, (char *)lib, (char *)mode, NULL};
        execve(child, argv, envp);
        dprintf(STDERR_FILENO, "execve %s: %s\n", child, strerror(errno));
        _exit(127);
    }
    close(out[1]);
    size_t used = 0;
    for (;;) {
        ssize_t got = read(out[0], r->output + used, sizeof r->output - 1 - used);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        used += (size_t)got;
        if (used == sizeof r->output - 1)
            break;
    }
    r->output[used] = '\0';
    close(out[0]);
    cr_assert_eq(waitpid(pid, &r->status, 0), pid);
    free(envp);
}

static int exit_code(const struct child_result *r)
{
    if (WIFEXITED(r->status))
        return WEXITSTATUS(r->status);
    return 128 + (WIFSIGNALED(r->status) ? WTERMSIG(r->status) : 0);
}

/* A library built with --enable-asan loads only into a program that loaded the ASan runtime
 * first ("ASan runtime does not come first in initial library list"), which the child is not. */
static void skip_if_asan(void)
{
    if (strstr(TEST_SANITIZERS, "-fsanitize=address") != NULL)
        cr_skip_test("the library is built with AddressSanitizer: a program without it cannot "
                     "load it");
}

/* The child ran the generated code: it loaded, resolved, created, sealed, called, destroyed. */
static void assert_worked(const struct child_result *r, const char *how)
{
    cr_assert(exit_code(r) == 0 && strstr(r->output, "returned 42\n") != NULL,
              "%s: the child failed (exit %d):\n%s", how, exit_code(r), r->output);
}

Test(dlopen, system_jemalloc_refuses_a_plain_dlopen, .disabled = !SYSTEM_JEMALLOC)
{
    struct child_result r;
    const char *none[] = {NULL};
    run_child(none, NULL, &r);
    cr_assert(exit_code(&r) == 2 && strstr(r.output, STATIC_TLS_MESSAGE) != NULL,
              "a plain dlopen() of the library (system jemalloc) was expected to fail with\n"
              "  \"" STATIC_TLS_MESSAGE "\"\n"
              "but the child exited %d with:\n%s\n"
              "glibc or jemalloc changed: update README.md (\"Loading libcodecache with "
              "dlopen()\"), doc/code_cache.3 (NOTES) and this test.",
              exit_code(&r), r.output);
}

/* The remedy exactly as README.md documents it, passed on by tests/dlopen.sh. */
static const char *documented_tunable(void)
{
    const char *tunable = getenv("CODECACHE_DLOPEN_TUNABLE");
    cr_assert(tunable != NULL && strncmp(tunable, "GLIBC_TUNABLES=", 15) == 0,
              "CODECACHE_DLOPEN_TUNABLE is not set: run this program through tests/dlopen.sh");
    return tunable;
}

Test(dlopen, documented_tunable_makes_it_load, .disabled = !SYSTEM_JEMALLOC)
{
    skip_if_asan();
    const char *tunable = documented_tunable();
    struct child_result r;
    const char *env[] = {tunable, NULL};
    run_child(env, NULL, &r);
    assert_worked(&r, tunable);
    cr_assert(strstr(r.output, "libjemalloc.so.2") != NULL,
              "the system's jemalloc was not loaded:\n%s", r.output);
}

Test(dlopen, preloading_jemalloc_makes_it_load, .disabled = !SYSTEM_JEMALLOC)
{
    skip_if_asan();
    /* Loaded at startup, jemalloc's TLS is part of the initial static TLS block. */
    struct child_result r;
    const char *env[] = {"LD_PRELOAD=libjemalloc.so.2", NULL};
    run_child(env, NULL, &r);
    assert_worked(&r, "LD_PRELOAD=libjemalloc.so.2");
}

Test(dlopen, private_jemalloc_loads_with_a_plain_dlopen, .disabled = SYSTEM_JEMALLOC)
{
    skip_if_asan();
    struct child_result r;
    const char *none[] = {NULL};
    run_child(none, NULL, &r);
    assert_worked(&r, "plain dlopen() (private jemalloc)");
    cr_assert(strstr(r.output, "jemalloc: no libjemalloc loaded") != NULL,
              "a libjemalloc came into the process with the library:\n%s", r.output);
}

/* A host may dlclose() the library while threads that used it live on. jemalloc gave each of them
 * a thread-specific-data destructor inside the library; if dlclose() unmapped the code, the
 * threads would crash when they exit. Loaded with the system's jemalloc (through the remedy) or
 * with the private one (linked -z nodelete), the threads exit cleanly. */
Test(dlopen, threads_that_used_it_exit_cleanly_after_dlclose)
{
    skip_if_asan();
    struct child_result r;
    const char *env[] = {SYSTEM_JEMALLOC ? documented_tunable() : NULL, NULL};
    run_child(env, "unload", &r);
    assert_worked(&r, "dlclose() while a thread that used the library lives");
    cr_assert(strstr(r.output, "thread exited after dlclose\n") != NULL, "%s", r.output);
}
