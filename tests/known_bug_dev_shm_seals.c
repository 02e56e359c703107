/*
 * KNOWN BUG, expected to fail (XFAIL_TESTS in Makefile.am) until lib/ is fixed; then `make check`
 * reports XPASS, and this test moves to tests/shared_file.c.
 *
 * The dual backend's second source, an unlinked file in /dev/shm, is never used. wx_dual.c,
 * dual_try_file(): after the trial mapping it seals the file with fcntl(F_ADD_SEALS,
 * F_SEAL_SHRINK | F_SEAL_GROW) and accepts only EINVAL as "this file takes no seals". A file of
 * a tmpfs made with O_TMPFILE (shmem, like /dev/shm) refuses with EPERM instead: shmem files
 * carry F_SEAL_SEAL from birth unless memfd_create made them with MFD_ALLOW_SEALING (ext4, the
 * usual $TMPDIR, says EINVAL). So with memfd_create refused (seccomp, ENOSYS) or its file not
 * mappable executable (vm.memfd_noexec=2), create skips /dev/shm and takes $TMPDIR, or fails when
 * $TMPDIR cannot hold code either; stats.dual_file never says "/dev/shm".
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "fault.h"
#include "helpers.h"

static const struct code_cache_options dual_opts = {
    .size = 1 << 20, .near = (const void *)helper_triple, .flags = CODE_CACHE_DUAL_MAP};

static void expect_dev_shm(void)
{
    struct code_cache *cache = test_cache_create(&dual_opts);
    cr_assert_not_null(cache, "create: %s", strerror(errno));
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_str_eq(st.dual_file, "/dev/shm", "the second source was skipped");
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(known_bug, memfd_refused_falls_back_to_dev_shm)
{
    unsetenv("TMPDIR");
    fault_inject(FAULT_MEMFD_CREATE, FAULT_ANY, 0, ENOSYS);
    expect_dev_shm();
}

/* vm.memfd_noexec=2, or an LSM: the memfd exists but cannot be mapped executable. */
Test(known_bug, a_memfd_that_cannot_be_mapped_executable_falls_back_to_dev_shm)
{
    unsetenv("TMPDIR");
    fault_inject(FAULT_MMAP, PROT_READ | PROT_EXEC, 1, EACCES);
    expect_dev_shm();
}
