/*
 * The dual-mapped backend's shared file. It comes from the first source that yields an
 * executable mapping: memfd_create (with MFD_EXEC, or without it on a kernel that does not know
 * the flag), else an unlinked file in /dev/shm (O_TMPFILE), else one in $TMPDIR. Refusals are
 * created by interposing the libc calls the library makes (tests/fault.c): the fallbacks happen,
 * stats.dual_file says which source was used, and /proc/self/maps shows that file (check_maps);
 * when nothing works create fails with a documented errno (ENOSYS, EMFILE: the first source's
 * reason; EACCES when executable mappings were refused), never with rwx memory, never with the
 * other backend. At every call site of create a failure leaks nothing: no descriptor (counted in
 * /proc/self/fd), no mapping (every mapping the library made is checked to be gone), no
 * bookkeeping (jemalloc's statistics). And with no free descriptor at all (RLIMIT_NOFILE), create
 * fails with EMFILE and nothing else changes.
 *
 * About the dual backend alone: run once.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "fault.h"
#include "helpers.h"

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010u
#endif
#ifndef F_GET_SEALS
#define F_GET_SEALS   1034
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW   0x0004
#endif

#define PAGE test_page_size()

static void setup(void)
{
    /* The same placement on every run, so that the nth call of a rerun is the nth call of the
     * counting run (create_fails_cleanly_at_every_call_site). */
    setenv("CODE_CACHE_NO_RANDOM", "1", 1);
    unsetenv("TMPDIR");
}

TestSuite(shared_file, .init = setup);

static const struct code_cache_options dual_opts = {
    .size = 1 << 20, .near = (const void *)helper_triple, .flags = CODE_CACHE_DUAL_MAP};

/* The descriptor of the cache's file, found by its name in /proc/self/fd, or -1. */
static int file_descriptor(const char *prefix)
{
    DIR *dir = opendir("/proc/self/fd");
    cr_assert_not_null(dir);
    int found = -1;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        char path[300], target[PATH_MAX];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n <= 0)
            continue;
        target[n] = '\0';
        if (strncmp(target, prefix, strlen(prefix)) == 0 && strstr(target, "(deleted)") != NULL)
            found = atoi(e->d_name);
    }
    closedir(dir);
    return found;
}

/* Everything a cache does, with check_maps after each step. */
static void use_cache(struct code_cache *cache)
{
    check_maps(cache);
    struct code_chunk *chunk = code_cache_alloc(cache, 200);
    cr_assert_not_null(chunk, "code_cache_alloc: %s", strerror(errno));
    check_maps(cache);
    expect_fresh_chunk(chunk);
    jit_fn fn = emit_call(chunk, helper_triple, 6);
    cr_assert_eq(code_chunk_seal(chunk), 0, "seal: %s", strerror(errno));
    check_maps(cache);
    cr_assert_eq(fn(), 19);
    int value = 7;
    cr_assert_eq(code_chunk_patch(chunk, (char *)fn + 5, &value, sizeof value), 0);
    cr_assert_eq(fn(), 22);
    struct code_span span = code_chunk_span(chunk);
    code_chunk_free(chunk);
    check_maps(cache);
    expect_freed_span(span);
    cr_assert_eq(code_cache_reset(cache), 0);
    check_maps(cache);
}

/* A dual-mapped cache from the expected source, used, destroyed, leaving nothing behind. */
static void expect_source(const char *source, const char *fd_prefix)
{
    size_t fds = open_fds();
    struct code_cache *cache = test_cache_create(&dual_opts);
    cr_assert_not_null(cache, "create: %s", strerror(errno));
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_str_eq(st.backend, "dual", "never the other backend");
    cr_assert_str_eq(st.dual_file, source);
    cr_assert_eq(st.protection_changes, 0);
    cr_assert_eq(open_fds(), fds + 1, "one descriptor: the file");
    int fd = file_descriptor(fd_prefix);
    cr_assert_geq(fd, 0, "no descriptor of a deleted %s file", fd_prefix);
    cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC, "the file is inherited by exec");
    if (strcmp(source, "memfd") == 0)
        cr_assert_eq(fcntl(fd, F_GET_SEALS) & (F_SEAL_SHRINK | F_SEAL_GROW),
                     F_SEAL_SHRINK | F_SEAL_GROW, "the memfd can be resized under the views");
    use_cache(cache);
    code_cache_destroy(cache);
    cr_assert_eq(open_fds(), fds, "destroy left the file open");
    fault_expect_nothing_left_mapped(source);
    cr_assert_eq(fault_calls(FAULT_MPROTECT), 0, "the dual backend never calls mprotect");
    cr_assert_eq(fault_wx_requests(), 0, "a writable and executable mapping was asked for");
}

/* Create fails with err and leaves nothing behind. */
static void expect_create_fails(int err)
{
    size_t fds = open_fds(), meta = jemalloc_allocated();
    errno = 0;
    struct code_cache *cache = code_cache_create(&dual_opts);
    int saved = errno;
    cr_assert_null(cache, "created from %s", cache ? "a source that was refused" : "");
    cr_assert_eq(saved, err, "errno %d (%s), expected %d (%s)", saved, strerror(saved), err,
                 strerror(err));
    cr_assert_eq(open_fds(), fds, "a failed create left a descriptor open");
    cr_assert_eq(jemalloc_allocated(), meta, "a failed create left bookkeeping");
    fault_expect_nothing_left_mapped("failed create");
    cr_assert_eq(fault_calls(FAULT_MPROTECT), 0, "never the mprotect backend instead");
    cr_assert_eq(fault_wx_requests(), 0, "never rwx instead");
}

Test(shared_file, memfd_comes_first)
{
    fault_clear();
    expect_source("memfd", "/memfd:codecache");
    cr_assert_eq(fault_calls_with(FAULT_OPEN, O_TMPFILE), 0, "no tmpfile was tried");
}

Test(shared_file, a_kernel_without_MFD_EXEC_still_gets_a_memfd)
{
    fault_inject(FAULT_MEMFD_CREATE, MFD_EXEC, 0, EINVAL);
    expect_source("memfd", "/memfd:codecache");
    cr_assert_eq(fault_failures(), 1);
    cr_assert_eq(fault_calls(FAULT_MEMFD_CREATE), 2, "asked again without MFD_EXEC");
}

Test(shared_file, memfd_refused_falls_back_to_dev_shm)
{
    fault_inject(FAULT_MEMFD_CREATE, FAULT_ANY, 0, ENOSYS);
    expect_source("/dev/shm", "/dev/shm/#");
    cr_assert_eq(fault_calls_with(FAULT_OPEN, O_TMPFILE), 1, "$TMPDIR was not needed");
}

/* vm.memfd_noexec=2, or an LSM: the memfd exists but cannot be mapped executable. (A file of a
 * tmpfs refuses seals with EPERM, not EINVAL: that must not make /dev/shm fail too.) */
Test(shared_file, a_memfd_that_cannot_be_mapped_executable_falls_back_to_dev_shm)
{
    fault_inject(FAULT_MMAP, PROT_READ | PROT_EXEC, 1, EACCES);
    expect_source("/dev/shm", "/dev/shm/#");
    cr_assert_eq(fault_failures(), 1);
    cr_assert_eq(fault_calls_with(FAULT_OPEN, O_TMPFILE), 1, "$TMPDIR was not needed");
}

/* A directory of our own as $TMPDIR, removed by the caller with rmdir. */
static const char *make_tmpdir(void)
{
    static char dir[64];
    snprintf(dir, sizeof dir, "/tmp/codecache-test.XXXXXX");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
    setenv("TMPDIR", dir, 1);
    return dir;
}

Test(shared_file, no_memfd_and_no_dev_shm_falls_back_to_tmpdir)
{
    const char *dir = make_tmpdir();
    char prefix[80];
    snprintf(prefix, sizeof prefix, "%s/#", dir); /* O_TMPFILE: #inode */
    /* A seccomp filter refusing memfd_create, and no /dev/shm: the first O_TMPFILE open. */
    fault_inject(FAULT_MEMFD_CREATE, FAULT_ANY, 0, ENOSYS);
    fault_also(FAULT_OPEN, O_TMPFILE, 1, ENOENT);
    expect_source("$TMPDIR", prefix);
    cr_assert_eq(fault_failures(), 2);
    cr_assert_eq(fault_calls_with(FAULT_OPEN, O_TMPFILE), 2);
    cr_assert_eq(rmdir(dir), 0, "the file in $TMPDIR was left behind: %s", strerror(errno));
}

/* A noexec /dev/shm: the file is made, but its trial executable mapping is refused. */
Test(shared_file, a_noexec_dev_shm_falls_back_to_tmpdir)
{
    const char *dir = make_tmpdir();
    char prefix[80];
    snprintf(prefix, sizeof prefix, "%s/#", dir); /* O_TMPFILE: #inode */
    fault_inject(FAULT_MEMFD_CREATE, FAULT_ANY, 0, ENOSYS);
    fault_also(FAULT_MMAP, PROT_READ | PROT_EXEC, 1, EPERM);
    expect_source("$TMPDIR", prefix);
    cr_assert_eq(rmdir(dir), 0, "the file in $TMPDIR was left behind: %s", strerror(errno));
}

Test(shared_file, no_source_at_all_fails_create_with_the_first_reason)
{
    fault_inject(FAULT_MEMFD_CREATE, FAULT_ANY, 0, ENOSYS);
    fault_also(FAULT_OPEN, O_TMPFILE, 0, EOPNOTSUPP);
    expect_create_fails(ENOSYS);
    cr_assert_eq(fault_calls_with(FAULT_OPEN, O_TMPFILE), 2, "/dev/shm and $TMPDIR were tried");
    fault_clear();
    /* Nothing stuck: the next create works. */
    expect_source("memfd", "/memfd:codecache");
}

/* vm.memfd_noexec=2, noexec mounts, SELinux: every file is made, none may be mapped executable. */
Test(shared_file, executable_mappings_refused_everywhere_fail_create_with_EACCES)
{
    fault_inject(FAULT_MMAP, PROT_READ | PROT_EXEC, 0, EPERM);
    expect_create_fails(EACCES);
    cr_assert_eq(fault_failures(), 3, "each of the three files was tried");
    fault_inject(FAULT_MMAP, PROT_READ | PROT_EXEC, 0, EACCES);
    expect_create_fails(EACCES);
    fault_clear();
    expect_source("memfd", "/memfd:codecache");
}

/* Each call create makes fails in turn, with memfd working and with it refused (the tmpfile
 * path): create either still succeeds through a fallback, with a working dual-mapped cache, or
 * fails with that call's errno; either way nothing is left behind. */
static void sweep_create(enum fault_call call, int err, bool memfd_refused)
{
    char context[96];
    /* Once, so that what the library reads once per process (vm.mmap_min_addr) is read, and the
     * counting run makes the same calls as every rerun. */
    code_cache_destroy(test_cache_create(&dual_opts));
    fault_clear();
    if (memfd_refused)
        fault_inject(FAULT_MEMFD_CREATE, FAULT_ANY, 0, ENOSYS);
    struct code_cache *cache = test_cache_create(&dual_opts);
    cr_assert_not_null(cache, "counting run: %s", strerror(errno));
    unsigned total = fault_calls(call);
    code_cache_destroy(cache);
    if (call == FAULT_MPROTECT)
        cr_assert_eq(total, 0, "the dual backend called mprotect");
    cr_log_info("create%s: %u calls of %s", memfd_refused ? " without memfd" : "", total,
                fault_name(call));
    for (unsigned n = 1; n <= total; n++) {
        snprintf(context, sizeof context, "%s #%u of create%s failing with %s", fault_name(call), n,
                 memfd_refused ? " without memfd" : "", strerror(err));
        size_t fds = open_fds(), meta = jemalloc_allocated();
        fault_clear();
        if (memfd_refused && call != FAULT_MEMFD_CREATE)
            fault_inject(FAULT_MEMFD_CREATE, FAULT_ANY, 0, ENOSYS);
        fault_also(call, FAULT_ANY, n, err);
        errno = 0;
        cache = test_cache_create(&dual_opts);
        int saved = errno;
        cr_assert_geq(fault_failures(), 1, "%s: the call was not made", context);
        if (cache == NULL) {
            /* This call's errno, or, when it made the last source fail, the first source's. */
            cr_assert(saved == err || (memfd_refused && saved == ENOSYS),
                      "%s: create failed with %s", context, strerror(saved));
        } else {
            if (unmap_stray_file_mappings(cache) != 0)
                cr_assert_eq(call, FAULT_MUNMAP, "%s: the file is mapped outside the views",
                             context);
            struct code_cache_stats st;
            code_cache_get_stats(cache, &st);
            cr_assert_str_eq(st.backend, "dual", "%s: another backend", context);
            fault_clear(); /* the cache must work; what create mapped is checked below */
            use_cache(cache);
            code_cache_destroy(cache);
        }
        cr_assert_eq(open_fds(), fds, "%s: a descriptor was left open", context);
        cr_assert_eq(jemalloc_allocated(), meta, "%s: bookkeeping was left", context);
        if (call != FAULT_MUNMAP && cache == NULL)
            fault_expect_nothing_left_mapped(context);
        cr_assert_eq(fault_wx_requests(), 0, "%s: rwx was asked for", context);
    }
    fault_clear();
}

/* One test for every kind of call (each test is a process of its own, which valgrind takes
 * seconds to start). */
Test(shared_file, create_fails_cleanly_at_every_call_site)
{
    static const struct {
        enum fault_call call;
        int err;
    } kinds[] = {
        {FAULT_MMAP, ENOMEM},         {FAULT_MUNMAP, EINVAL},        {FAULT_MADVISE, EAGAIN},
        {FAULT_MEMFD_CREATE, EMFILE}, {FAULT_OPEN, EMFILE},          {FAULT_FTRUNCATE, EFBIG},
        {FAULT_FCNTL, EBUSY},         {FAULT_FALLOCATE, EOPNOTSUPP}, {FAULT_MPROTECT, ENOMEM},
    };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        sweep_create(kinds[i].call, kinds[i].err, false);
        if (kinds[i].call != FAULT_MEMFD_CREATE)
            sweep_create(kinds[i].call, kinds[i].err, true);
    }
}

/* RLIMIT_NOFILE reached: every descriptor below the limit is taken. (Criterion runs each test in
 * a process of its own: the limit and the descriptors go with it.) Nothing can be counted in
 * /proc/self/fd meanwhile (that takes a descriptor too), so one is given back first. */
Test(shared_file, no_free_descriptor_fails_create_with_EMFILE)
{
    struct rlimit saved;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &saved), 0);
    const size_t before = open_fds();
    struct rlimit low = saved;
    low.rlim_cur = before + 16;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0, "setrlimit: %s", strerror(errno));
    int taken[64], ntaken = 0;
    for (;;) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            cr_assert_eq(errno, EMFILE, "open: %s", strerror(errno));
            break;
        }
        cr_assert_lt(ntaken, 64);
        taken[ntaken++] = fd;
    }
    const size_t meta = jemalloc_allocated();
    fault_clear();
    errno = 0;
    struct code_cache *cache = code_cache_create(&dual_opts);
    int err = errno;
    /* The mprotect backend needs no descriptor (placement does without the map). */
    struct code_cache_options opts = dual_opts;
    opts.flags = 0;
    struct code_cache *other = code_cache_create(&opts);
    int other_err = errno;

    close(taken[--ntaken]);
    cr_assert_null(cache, "created without a descriptor");
    cr_assert_eq(err, EMFILE, "errno %d (%s)", err, strerror(err));
    cr_assert_eq(fault_calls(FAULT_MEMFD_CREATE), 1);
    cr_assert_eq(fault_calls_with(FAULT_OPEN, O_TMPFILE), 2, "/dev/shm and $TMPDIR were tried");
    cr_assert_eq(open_fds(), before + (size_t)ntaken, "a descriptor was left open");
    cr_assert_not_null(other, "mprotect create without a descriptor: %s", strerror(other_err));
    check_maps(other);
    code_cache_destroy(other);
    cr_assert_eq(jemalloc_allocated(), meta, "bookkeeping was left");
    fault_expect_nothing_left_mapped("create without a descriptor");
    cr_assert_eq(fault_wx_requests(), 0);

    /* Descriptors free again (one for the file, one for check_maps): create works. */
    close(taken[--ntaken]);
    fault_clear();
    expect_source("memfd", "/memfd:codecache");
    while (ntaken > 0)
        close(taken[--ntaken]);
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &saved), 0);
    cr_assert_eq(open_fds(), before);
}
