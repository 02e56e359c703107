/*
 * The dual-mapped backend: one shared memory file, mapped twice. The RX view is the placed
 * reservation, r-x where committed; the RW view, where code is written, lies at a random address
 * of its own, rw-, never executable. What is written at rw + k runs at rx + k.
 *
 * Neither view's protection is ever changed with mprotect. Committing a range of the RX view maps
 * the file there (r-x) over the reservation; releasing it maps fresh PROT_NONE address space back
 * and punches the file's pages out. So no mapping is ever asked to *become* executable, which is
 * what systemd's MemoryDenyWriteExecute and prctl(PR_SET_MDWE) refuse: this backend works under
 * them, the mprotect backend cannot.
 *
 * Granules are 64 bytes (a cache line: a small function costs its size, two functions never share
 * a line that one of them is still writing). Every byte of a committed page is live code or a
 * trap: fresh pages are filled with traps when committed, freed spans when freed, so a stale or
 * stray jump traps at once. Whole free pages go back to the kernel in batches (cache.c), and then
 * become PROT_NONE in the RX view, so jumping there faults too.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "internal.h"
#include "place.h"

/* The shared file: the first source that yields an executable mapping. */
static int dual_try_file(struct code_cache *cache, int fd, const char *source, bool *exec_denied)
{
    if (fd < 0)
        return -1;
    cache->fd = fd;
    wx_count_syscall(cache);
    if (os_truncate(fd, cache->size) != 0)
        goto fail;
    /* The trial: can this file be mapped executable at all (vm.memfd_noexec=2, a noexec mount,
     * SELinux, seccomp)? This is also the backend's answer to "is executable memory allowed". */
    wx_count_syscall(cache);
    void *trial = os_map_file(NULL, os_page_size, PROT_READ | PROT_EXEC, fd, 0, false);
    if (trial == NULL) {
        if (errno == EPERM || errno == EACCES)
            *exec_denied = true;
        goto fail;
    }
    wx_count_syscall(cache);
    os_release(trial, os_page_size);
    /* Nobody, ourselves included, may shrink the file under the mappings: a page beyond its end
     * would raise SIGBUS. Only memfds take seals; a tmpfile refuses with EINVAL, which is fine. */
    wx_count_syscall(cache);
    if (os_seal_shrink(fd) != 0 && errno != EINVAL)
        goto fail;
    cache->dual_file = source;
    return 0;

fail : {
    int saved = errno;
    debug_log("dual: %s cannot back the code (errno %d)", source, saved);
    os_close(fd);
    cache->fd = -1;
    errno = saved;
    return -1;
}
}

static int dual_open_file(struct code_cache *cache)
{
    bool exec_denied = false;
    int fd;
    wx_count_syscall(cache);
    fd = os_memfd(true);
    if (fd < 0 && errno == EINVAL) { /* a kernel before 6.3: no MFD_EXEC */
        wx_count_syscall(cache);
        fd = os_memfd(false);
    }
    if (dual_try_file(cache, fd, "memfd", &exec_denied) == 0)
        return 0;
    int first_errno = errno;
    wx_count_syscall(cache);
    if (dual_try_file(cache, os_tmpfile("/dev/shm"), "/dev/shm", &exec_denied) == 0)
        return 0;
    const char *tmpdir = getenv("TMPDIR");
    wx_count_syscall(cache);
    if (dual_try_file(cache, os_tmpfile(tmpdir != NULL && *tmpdir ? tmpdir : "/tmp"), "$TMPDIR",
                      &exec_denied) == 0)
        return 0;
    /* No file can hold code: say why in the terms of the API. Refused PROT_EXEC anywhere means
     * executable memory is denied; otherwise the first source's reason (ENOSYS, EMFILE...). */
    errno = exec_denied ? EACCES : first_errno;
    return -1;
}

static int dual_open(struct code_cache *cache)
{
    const size_t page = os_page_size;
    cache->fd = -1;
    if (dual_open_file(cache) != 0)
        return -1;
    /* The RW view, with a guard page at each end like the code's, far from the code. */
    size_t rw_map_size = cache->size + 2 * page;
    wx_count_syscall(cache);
    void *rw_map = place_random(rw_map_size, cache->map_base, cache->map_base + cache->map_size);
    if (rw_map == NULL)
        goto fail_file;
    wx_count_syscall(cache);
    void *rw =
        os_map_file((char *)rw_map + page, cache->size, PROT_READ | PROT_WRITE, cache->fd, 0, true);
    if (rw == NULL)
        goto fail_rw;
    /* Not inherited by fork(): a child writing here would change the parent's code. */
    wx_count_syscall(cache);
    if (os_dontfork(rw_map, rw_map_size) != 0)
        goto fail_rw;
    cache->rw_map_base = (uintptr_t)rw_map;
    cache->rw_map_size = rw_map_size;
    cache->rw_base = (uintptr_t)rw;
    cache->fork_generation = wx_fork_generation();
    debug_log("dual: %s file, RW view at [%p, %#lx)", cache->dual_file, rw,
              (unsigned long)((uintptr_t)rw + cache->size));
    return 0;

fail_rw : {
    int saved = errno;
    os_release(rw_map, rw_map_size);
    errno = saved;
}
fail_file : {
    int saved = errno;
    os_close(cache->fd);
    cache->fd = -1;
    errno = saved;
}
    return -1;
}

static void dual_close(struct code_cache *cache)
{
    /* In a fork()ed child the RW view was never inherited: whatever lies there now is not ours. */
    if (cache->rw_map_size != 0 && !wx_forked(cache))
        os_release((void *)cache->rw_map_base, cache->rw_map_size);
    if (cache->fd >= 0)
        os_close(cache->fd);
    cache->fd = -1;
}

static int dual_commit(struct code_cache *cache, size_t off, size_t len, bool dirty)
{
    (void)dirty; /* released pages hold traps or nothing: never old code */
    void *rw = (void *)(cache->rw_base + off);
    uintptr_t rx = cache->base + off;
    /* The file's pages are allocated here, in one call, rather than by the stores below: out of
     * memory is then an error (ENOMEM), not a SIGBUS in the middle of a memset. */
    wx_count_syscall(cache);
    if (os_populate(rw, len) != 0 && errno != EINVAL)
        return -1;
    arch_fill_trap(rw, rx, len);
    wx_count_syscall(cache);
    if (os_map_file((void *)rx, len, PROT_READ | PROT_EXEC, cache->fd, off, true) == NULL) {
        int saved = errno;
        wx_count_syscall(cache);
        os_punch(cache->fd, off, len);
        errno = saved;
        return -1;
    }
    wx_publish(rx, len);
    return 0;
}

static int dual_seal(struct code_cache *cache, size_t off, size_t len)
{
    (void)cache, (void)off, (void)len; /* the RX view is already r-x: nothing to change */
    return 0;
}

static int dual_release(struct code_cache *cache, size_t off, size_t len, bool *discarded)
{
    *discarded = false;
    /* Inaccessible first, then the memory: a stale jump faults instead of running zeroes
     * (00 00 is an add on x86-64, which would slide into the next page's code). */
    wx_count_syscall(cache);
    if (os_rereserve((void *)(cache->base + off), len) != 0)
        return -1;
    wx_count_syscall(cache);
    *discarded = os_punch(cache->fd, off, len) == 0;
    return 0;
}

static void dual_scrub(struct code_cache *cache, size_t off, size_t len)
{
    arch_fill_trap((void *)(cache->rw_base + off), cache->base + off, len);
    wx_publish(cache->base + off, len);
}

const struct wx_ops wx_dual = {
    .name = "dual",
    .granule_shift = 6,
    .freed_stays_ready = true,
    .can_patch = true,
    .open = dual_open,
    .close = dual_close,
    .commit = dual_commit,
    .seal = dual_seal,
    .release = dual_release,
    .scrub = dual_scrub,
};
