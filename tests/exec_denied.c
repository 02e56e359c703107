/*
 * Executable memory refused by the kernel itself, in a child process each time:
 *   - a seccomp filter like systemd's MemoryDenyWriteExecute (mprotect to PROT_EXEC and
 *     mmap of writable+executable memory answer EPERM),
 *   - prctl(PR_SET_MDWE) (Linux 6.3: no mapping may gain PROT_EXEC),
 *   - a filter that also refuses executable shared mappings (as SELinux does when neither execmem
 *     nor executing tmpfs files is allowed).
 * The mprotect backend fails at create with EACCES; the dual backend works where only gaining
 * PROT_EXEC is refused; and the JSON demo falls back to its interpreter and says so.
 *
 * Run natively (tests/exec_denied.sh): valgrind's own translations need the very calls the
 * filters refuse.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#ifndef PR_SET_MDWE
#define PR_SET_MDWE              65
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif

enum refusal { MDWE_SECCOMP, MDWE_PRCTL, NO_EXEC_AT_ALL };

#define ARG_LO(n) (offsetof(struct seccomp_data, args[n]))

static int install_filter(enum refusal what)
{
    /* mprotect/pkey_mprotect with PROT_EXEC -> EPERM; mmap with PROT_WRITE|PROT_EXEC -> EPERM;
     * with NO_EXEC_AT_ALL also mmap with PROT_EXEC of a MAP_SHARED mapping (the program's own
     * libraries, mapped private, still load). jumps count the instructions skipped; the targets are
     * noted on the right. */
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)), /* 0 */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 15),           /* 1: -> 17 */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),   /* 2 */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mprotect, 3, 0),                /* 3: -> 7 */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_pkey_mprotect, 2, 0),           /* 4: -> 7 */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mmap, 3, 0),                    /* 5: -> 9 */
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),                            /* 6 */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(2)),                           /* 7: mprotect */
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 7, 8),                   /* 8: 16 / 17 */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(2)),                           /* 9: mmap */
        BPF_STMT(BPF_ALU | BPF_AND | BPF_K, PROT_WRITE | PROT_EXEC),             /* 10 */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PROT_WRITE | PROT_EXEC, 4, 0),       /* 11: -> 16 */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(2)),                           /* 12 */
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 0, 3),                   /* 13: -> 17 */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(3)),                           /* 14: flags */
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, what == NO_EXEC_AT_ALL ? MAP_SHARED : 0, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM), /* 16 */
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),         /* 17 */
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

static int refuse(enum refusal what)
{
    if (what == MDWE_PRCTL)
        return prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0);
    return install_filter(what);
}

/* In the child: 0 when the backend behaves as expected, else a line on stderr and 1. */
static int child_check(unsigned flags, bool should_work)
{
    struct code_cache_options opts = {
        .size = 1 << 20, .near = (const void *)helper_triple, .flags = flags};
    errno = 0;
    struct code_cache *cache = code_cache_create(&opts);
    if (!should_work) {
        if (cache != NULL || errno != EACCES) {
            fprintf(stderr, "flags %#x: expected EACCES, got %p / errno %d\n", flags, (void *)cache,
                    errno);
            return 1;
        }
        return 0;
    }
    if (cache == NULL) {
        fprintf(stderr, "flags %#x: create failed: %s\n", flags, strerror(errno));
        return 1;
    }
    struct code_chunk *chunk = code_cache_alloc(cache, 128);
    jit_fn fn = chunk != NULL ? try_emit_call(chunk, helper_triple, 5) : NULL;
    if (fn == NULL || code_chunk_seal(chunk) != 0 || fn() != 16) {
        fprintf(stderr, "flags %#x: JIT code did not run: %s\n", flags, strerror(errno));
        return 1;
    }
    code_cache_destroy(cache);
    return 0;
}

/* Runs fn in a child under the refusal; its exit status: 0 ok, 77 refusal unavailable. */
static int in_child(enum refusal what, int (*fn)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        if (refuse(what) != 0)
            _exit(errno == EINVAL ? 77 : 2);
        _exit(fn());
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "the child died of signal %d", WTERMSIG(status));
    return WEXITSTATUS(status);
}

static int mdwe_expectations(void)
{
    return child_check(0, false) | child_check(CODE_CACHE_DUAL_MAP, true);
}

static int no_exec_expectations(void)
{
    return child_check(0, false) | child_check(CODE_CACHE_DUAL_MAP, false);
}

Test(exec_denied, seccomp_like_memory_deny_write_execute)
{
    cr_assert_eq(in_child(MDWE_SECCOMP, mdwe_expectations), 0);
}

Test(exec_denied, prctl_mdwe)
{
    int rc = in_child(MDWE_PRCTL, mdwe_expectations);
    if (rc == 77)
        cr_skip_test("prctl(PR_SET_MDWE) is not known to this kernel (before 6.3)");
    cr_assert_eq(rc, 0);
}

Test(exec_denied, no_executable_memory_at_all)
{
    cr_assert_eq(in_child(NO_EXEC_AT_ALL, no_exec_expectations), 0);
}

/* The demo, run for real under each refusal: its first line says which way it went. */
static char demo_output[4096];

static void run_demo(enum refusal what)
{
    int pipefd[2];
    cr_assert_eq(pipe(pipefd), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        dup2(pipefd[1], 1);
        close(pipefd[0]);
        if (refuse(what) != 0)
            _exit(2);
        execl("./examples/jsonjit/jsonjit", "jsonjit", (char *)NULL);
        _exit(3);
    }
    close(pipefd[1]);
    size_t len = 0;
    ssize_t n;
    while ((n = read(pipefd[0], demo_output + len, sizeof demo_output - 1 - len)) > 0)
        len += (size_t)n;
    demo_output[len] = '\0';
    char rest[4096];
    while (read(pipefd[0], rest, sizeof rest) > 0)
        ;
    close(pipefd[0]);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the demo failed: status %#x\n%s",
              status, demo_output);
}

Test(exec_denied, the_json_demo_falls_back_to_its_interpreter_and_says_so, .timeout = 120)
{
    run_demo(NO_EXEC_AT_ALL);
    cr_assert_not_null(strstr(demo_output, "refuses executable memory"), "%s", demo_output);
    cr_assert_not_null(strstr(demo_output, "interpreter alone"));
    run_demo(MDWE_SECCOMP);
    cr_assert_not_null(strstr(demo_output, "dual-mapped"), "%s", demo_output);
    cr_assert_null(strstr(demo_output, "refuses executable memory"));
}
