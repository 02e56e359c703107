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
 * a line that one of them is still writing; finer granules would cost more in the granule index
 * of code_cache_find, 4 bytes each, than they save in rounding). Every byte of a committed page is
 * live code or a trap: fresh pages are filled with traps when committed, freed spans when freed, so
 * a stale or stray jump traps at once. Whole free pages go back to the kernel in batches (space.c),
 * and then become PROT_NONE in the RX view, so jumping there faults too.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "internal.h"
#include "place.h"

/* The shared file: the first source that yields an executable mapping. */
static int dual_try_file(struct code_cache *cache, int fd, const char *source, bool sealable,
                         bool *exec_denied)
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
    void *trial = os_map_file(NULL, os_page_size, cache->exec_prot, fd, 0, false);
    if (trial == NULL) {
        if (errno == EPERM || errno == EACCES)
            *exec_denied = true;
        goto fail;
    }
    wx_count_syscall(cache);
    os_release(trial, os_page_size);
    /* Nobody, ourselves included, may shrink the file under the mappings: a page beyond its end
     * would raise SIGBUS. Only memfds made with MFD_ALLOW_SEALING take seals: a tmpfile refuses
     * with EINVAL (ext4) or EPERM (tmpfs files are born with F_SEAL_SEAL). An unlinked tmpfile is
     * reachable only through our descriptor, which is the protection it gets. */
    wx_count_syscall(cache);
    if (os_seal_shrink(fd) != 0 && (sealable || (errno != EINVAL && errno != EPERM)))
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
    if (dual_try_file(cache, fd, "memfd", true, &exec_denied) == 0)
        return 0;
    int first_errno = errno;
    wx_count_syscall(cache);
    if (dual_try_file(cache, os_tmpfile("/dev/shm"), "/dev/shm", false, &exec_denied) == 0)
        return 0;
    const char *tmpdir = getenv("TMPDIR");
    wx_count_syscall(cache);
    if (dual_try_file(cache, os_tmpfile(tmpdir != NULL && *tmpdir ? tmpdir : "/tmp"), "$TMPDIR",
                      false, &exec_denied) == 0)
        return 0;
    /* No file can hold code: say why in the terms of the API. Refused PROT_EXEC anywhere means
     * executable memory is denied; otherwise the first source's reason (ENOSYS, EMFILE...). */
    errno = exec_denied ? EACCES : first_errno;
    return -1;
}

/*
 * Emulators translate guest code once and keep the translation until they see the code change: a
 * store to the page they translated, or a new mapping there. qemu-user (7.2, measured) sees
 * neither when code changes through the RW view, and takes the instruction-cache maintenance of
 * arch_flush_icache for a no-op, so after a free, a reuse of the span or a patch it would go on
 * running the old code at the RX view. (valgrind has the same blind spot and a client request for
 * it, in wx_publish.) Whether instruction fetch sees stores through the other view is tested once
 * per process, on the first page a dual cache commits, with no system call: a function returning 1
 * is written there and run, then one returning 2 in its place. Where the second run still returns
 * 1, code published through the RW view is followed by mapping its pages of the RX view
 * again over themselves (same file, same protection: nothing changes for a thread running there),
 * which makes the emulator drop its translations. That costs a system call per seal, patch and
 * free, paid only where fetch is stale; on hardware and under valgrind nothing changes.
 */
enum dual_fetch { DUAL_FETCH_UNKNOWN, DUAL_FETCH_COHERENT, DUAL_FETCH_STALE };
static int dual_fetch = DUAL_FETCH_UNKNOWN;

/* The probe, at [rx, rx + arch_veneer_size) of freshly committed traps written at rw. */
static void dual_probe_fetch(unsigned char *rw, uintptr_t rx)
{
    int (*fn)(void) = (int (*)(void))rx;
    arch_write_return(rw, 1);
    wx_publish(rx, arch_veneer_size, false);
    int first = fn();
    arch_write_return(rw, 2);
    wx_publish(rx, arch_veneer_size, false);
    int second = fn();
    arch_fill_trap(rw, rx, arch_veneer_size);
    wx_publish(rx, arch_veneer_size, false);
    bool stale = first != 1 || second != 2;
    __atomic_store_n(&dual_fetch, stale ? DUAL_FETCH_STALE : DUAL_FETCH_COHERENT, __ATOMIC_RELAXED);
    if (stale)
        debug_log("dual: instruction fetch does not see stores through the RW view (an "
                  "emulator): every publish maps the RX view again");
}

/* Where fetch is stale: maps the RX view's pages covering [off, off + len) again over
 * themselves. 0, or -1 + errno; nothing is done (0) where fetch sees the stores. */
static int dual_refetch_stale(struct code_cache *cache, size_t off, size_t len);

static inline int dual_refetch(struct code_cache *cache, size_t off, size_t len)
{
    if (__atomic_load_n(&dual_fetch, __ATOMIC_RELAXED) != DUAL_FETCH_STALE)
        return 0;
    return dual_refetch_stale(cache, off, len);
}

static int dual_refetch_stale(struct code_cache *cache, size_t off, size_t len)
{
    const size_t lo = align_down(off, os_page_size), hi = align_up(off + len, os_page_size);
    wx_count_syscall(cache);
    if (os_map_file((void *)(cache->base + lo), hi - lo, cache->exec_prot, cache->fd, lo, true) ==
        NULL)
        return -1;
    return 0;
}

/*
 * CODE_CACHE_DUAL_HARDEN: a page of the RW view becomes read-only once every granule on it belongs
 * to a SEALED chunk, and writable again before anything is written there (a free's traps, a
 * patch; allocations only ever hand out pages that are not full). A stray write through the RW
 * view then faults instead of changing finished code. The count of sealed granules of each page
 * and the page's protection change together under harden_lock, so that a seal filling a page and
 * a free emptying it cannot leave it read-only under a writer. The cost is an mprotect per page
 * filled with sealed code and per page written again, plus a mapping per read-only run of pages.
 */
/* The count of a page: the table covers every page of a hardened cache from create on. */
static uint16_t *dual_sealed(struct code_cache *cache, size_t page)
{
    uint16_t *count = table_at(&cache->sealed_per_page, page);
    if (count == NULL)
        __builtin_unreachable();
    return count;
}

/* Sets the RW view's protection of pages [first, first + n); 0 or -1 + errno. */
static int dual_protect_rw(struct code_cache *cache, size_t first, size_t n, int prot)
{
    return wx_protect(cache, cache->rw_base + first * os_page_size, n * os_page_size, prot);
}

/* Adds delta sealed granules, in [off, off + len), to their pages' counts; pages that become full
 * are made read-only (a failure leaves them writable: hardening is lost, not correctness). */
static void dual_count_sealed(struct code_cache *cache, size_t off, size_t len, bool sealing)
{
    const size_t page = os_page_size, shift = cache->granule_shift;
    for (size_t p = off / page; p * page < off + len; p++) {
        size_t lo = p * page > off ? p * page : off;
        size_t hi = (p + 1) * page < off + len ? (p + 1) * page : off + len;
        uint16_t *count = dual_sealed(cache, p);
        uint16_t n = (uint16_t)((hi - lo) >> shift);
        *count = sealing ? *count + n : *count - n;
        if (sealing && *count == cache->page_granules && dual_protect_rw(cache, p, 1, PROT_READ))
            debug_log("dual: cannot make a sealed page of the RW view read-only (errno %d)", errno);
    }
}

/* Makes every full page of [off, off + len) writable again: 0, or -1 + errno. */
static int dual_unprotect_full(struct code_cache *cache, size_t off, size_t len)
{
    const size_t page = os_page_size;
    for (size_t p = off / page; p * page < off + len; p++)
        if (*dual_sealed(cache, p) == cache->page_granules &&
            dual_protect_rw(cache, p, 1, PROT_READ | PROT_WRITE) != 0)
            return -1;
    return 0;
}

static int dual_patch_begin(struct code_cache *cache, size_t off, size_t len)
{
    if (!cache->harden)
        return 0;
    pthread_mutex_lock(&cache->harden_lock);
    if (dual_unprotect_full(cache, off, len) != 0) {
        int saved = errno;
        pthread_mutex_unlock(&cache->harden_lock);
        errno = saved;
        return -1;
    }
    return 0;
}

static void dual_patch_end(struct code_cache *cache, size_t off, size_t len)
{
    /* A failure leaves the emulator's old translation: said, not fatal (the bytes are in). */
    if (dual_refetch(cache, off, len) != 0)
        debug_log("dual: mapping the patched page again failed (errno %d)", errno);
    if (!cache->harden)
        return;
    const size_t page = os_page_size;
    for (size_t p = off / page; p * page < off + len; p++)
        if (*dual_sealed(cache, p) == cache->page_granules)
            dual_protect_rw(cache, p, 1, PROT_READ);
    pthread_mutex_unlock(&cache->harden_lock);
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
    cache->harden = (cache->flags & CODE_CACHE_DUAL_HARDEN) != 0;
    table_init(&cache->sealed_per_page, sizeof(uint16_t), 10);
    if (cache->harden) {
        if (table_grow(&cache->sealed_per_page, &cache->meta, cache->size / page) != 0)
            goto fail_rw;
        pthread_mutex_init(&cache->harden_lock, NULL);
    }
    debug_log("dual: %s file, RW view at [%p, %#lx)", cache->dual_file, rw,
              (unsigned long)((uintptr_t)rw + cache->size));
    return 0;

fail_rw : {
    int saved = errno;
    table_release(&cache->sealed_per_page, &cache->meta);
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
    if (cache->harden) {
        table_release(&cache->sealed_per_page, &cache->meta);
        pthread_mutex_destroy(&cache->harden_lock);
    }
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
     * memory is then an error (ENOSPC or ENOMEM), not a SIGBUS in the middle of a memset. And
     * allocated apart from the page tables: tmpfs fills its page cache in one pass faster than
     * it takes first-write faults one page at a time (bench/alloc's batch: a tenth less time).
     * Any other refusal (a file system without fallocate, a seccomp filter) leaves it to the
     * faults, and is remembered: neither changes, and each commit would pay the call again.
     * Kernels before 6.9 stop a tmpfs fallocate at any signal (EINTR): it is retried. */
    int rc = 0;
    while (!__atomic_load_n(&cache->no_fallocate, __ATOMIC_RELAXED)) {
        wx_count_syscall(cache);
        rc = os_allocate(cache->fd, off, len);
        if (rc == 0 || errno != EINTR)
            break;
    }
    if (rc != 0 && (errno == ENOSPC || errno == ENOMEM)) {
        wx_count_syscall(cache);
        os_punch(cache->fd, off, len); /* what it allocated before it failed */
        errno = ENOMEM;
        return -1;
    }
    if (rc != 0) {
        debug_log("dual: fallocate refused (errno %d): the file's pages come from the faults",
                  errno);
        __atomic_store_n(&cache->no_fallocate, true, __ATOMIC_RELAXED);
    }
    wx_count_syscall(cache);
    if (os_populate(rw, len) != 0 && errno != EINVAL) {
        int saved = errno;
        wx_count_syscall(cache);
        os_punch(cache->fd, off, len);
        errno = saved;
        return -1;
    }
    arch_fill_trap(rw, rx, len);
    wx_count_syscall(cache);
    if (os_map_file_populated((void *)rx, len, cache->exec_prot, cache->fd, off) == NULL) {
        int saved = errno;
        wx_count_syscall(cache);
        os_punch(cache->fd, off, len);
        errno = saved;
        return -1;
    }
    if (__atomic_load_n(&dual_fetch, __ATOMIC_RELAXED) == DUAL_FETCH_UNKNOWN) {
        dual_probe_fetch(rw, rx);
        /* The probe's translations must go (where fetch is stale, the failure is harmless:
         * the bytes there are traps, and a chunk's seal maps its pages again). */
        dual_refetch(cache, off, len);
    }
    wx_publish(rx, len, false); /* fresh or released pages: nothing ran there since */
    return 0;
}

static int dual_seal(struct code_cache *cache, size_t off, size_t len)
{
    /* The RX view is already r-x: nothing to change, except the RW view when hardened, and, under
     * an emulator whose fetch does not see the RW view, the mapping (before anything else: a
     * failure leaves the chunk OPEN). */
    if (dual_refetch(cache, off, len) != 0)
        return -1;
    if (cache->harden) {
        pthread_mutex_lock(&cache->harden_lock);
        dual_count_sealed(cache, off, len, true);
        pthread_mutex_unlock(&cache->harden_lock);
    }
    return 0;
}

static int dual_release(struct code_cache *cache, size_t off, size_t len, bool *discarded)
{
    *discarded = false;
    /* A reset releases pages that may be full of sealed code, read-only in the RW view. */
    if (cache->harden) {
        pthread_mutex_lock(&cache->harden_lock);
        int rc = dual_unprotect_full(cache, off, len);
        if (rc == 0)
            for (size_t p = off / os_page_size; p * os_page_size < off + len; p++)
                *dual_sealed(cache, p) = 0;
        pthread_mutex_unlock(&cache->harden_lock);
        if (rc != 0)
            return -1;
    }
    /* Inaccessible first, then the memory: a stale jump faults instead of running zeroes
     * (00 00 is an add on x86-64, which would slide into the next page's code). */
    wx_count_syscall(cache);
    if (os_rereserve((void *)(cache->base + off), len) != 0)
        return -1;
    wx_count_syscall(cache);
    *discarded = os_punch(cache->fd, off, len) == 0;
    return 0;
}

static int dual_scrub(struct code_cache *cache, size_t off, size_t len, bool sealed)
{
    if (cache->harden && sealed) {
        /* Once the count is down, no seal can fill these pages again before the span is back in
         * the index: the traps can be written after the lock is dropped. */
        pthread_mutex_lock(&cache->harden_lock);
        int rc = dual_unprotect_full(cache, off, len);
        if (rc == 0)
            dual_count_sealed(cache, off, len, false);
        pthread_mutex_unlock(&cache->harden_lock);
        if (rc != 0)
            return -1;
    }
    arch_fill_trap((void *)(cache->rw_base + off), cache->base + off, len);
    if (dual_refetch(cache, off, len) != 0)
        return -1;
    /* Freed code: a thread still running it is a use after free; the traps are for it to meet
     * sooner or later. The span's next chunk resynchronises the cores when it is sealed. */
    wx_publish(cache->base + off, len, false);
    return 0;
}

/* A scrub is stores alone, except in a hardened cache (mprotect under harden_lock) and where
 * fetch is stale (the RX view mapped again). */
static bool dual_scrub_in_lock(const struct code_cache *cache)
{
    return !cache->harden && __atomic_load_n(&dual_fetch, __ATOMIC_RELAXED) != DUAL_FETCH_STALE;
}

const struct wx_ops wx_dual = {
    .name = "dual",
    .granule_shift = 6,
    .freed_stays_ready = true,
    .can_patch = true,
    .flags = CODE_CACHE_DUAL_HARDEN,
    .open = dual_open,
    .close = dual_close,
    .commit = dual_commit,
    .seal = dual_seal,
    .release = dual_release,
    .scrub = dual_scrub,
    .scrub_in_lock = dual_scrub_in_lock,
    .patch_begin = dual_patch_begin,
    .patch_end = dual_patch_end,
};
