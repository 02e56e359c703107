/*
 * The mprotect backend: one view (rw == rx), granule = page. A span is rw- while OPEN, r-x once
 * SEALED and --- when freed or never used; no page is ever writable and executable at once.
 * Sealing is one mprotect per chunk, which a batch of functions shares.
 */
#include <errno.h>
#include <sys/mman.h>

#include "internal.h"

static int mprotect_open(struct code_cache *cache)
{
    cache->rw_base = cache->base;
    return 0;
}

static void mprotect_close(struct code_cache *cache)
{
    (void)cache; /* the reservation is released by the cache */
}

static int mprotect_commit(struct code_cache *cache, size_t off, size_t len, bool dirty)
{
    void *addr = (void *)(cache->base + off);
    /* A dirty span may still hold sealed code: its memory must go before the pages can become
     * writable, and it is discarded while they are still inaccessible. */
    if (dirty) {
        wx_count_syscall(cache);
        if (os_discard(addr, len) != 0)
            return -1;
    }
    if (wx_protect(cache, (uintptr_t)addr, len, PROT_READ | PROT_WRITE) != 0)
        return -1;
    /* Take the first-write faults now, in one call, instead of one by one while code is being
     * written, and learn here rather than at a random store that the memory is not there.
     * EINVAL means the kernel predates MADV_POPULATE_WRITE (Linux 5.14): pages then arrive on
     * first touch, as before. */
    wx_count_syscall(cache);
    if (os_populate(addr, len) != 0 && errno != EINVAL) {
        int saved = errno;
        /* Whatever was populated is fresh zero memory that never held code, so if this undo
         * fails too the span is merely writable and free: it is never executable, and its next
         * user makes it writable anyway. */
        if (wx_protect(cache, (uintptr_t)addr, len, PROT_NONE) == 0) {
            wx_count_syscall(cache);
            os_discard(addr, len);
        }
        errno = saved;
        return -1;
    }
    return 0;
}

static int mprotect_seal(struct code_cache *cache, size_t off, size_t len)
{
    /* On failure (EACCES from SELinux execmem or PaX, ENOMEM when the change would split a
     * mapping past the map count limit) the pages keep their rw- protection. */
    return wx_protect(cache, cache->base + off, len, cache->exec_prot);
}

static int mprotect_release(struct code_cache *cache, size_t off, size_t len, bool *discarded)
{
    void *addr = (void *)(cache->base + off);
    *discarded = false;
    /* Inaccessible first, so that a stale call into freed code faults rather than running
     * zeroes, and so that the memory is never seen writable with its old content. */
    if (wx_protect(cache, (uintptr_t)addr, len, PROT_NONE) != 0)
        return -1;
    wx_count_syscall(cache);
    *discarded = os_discard(addr, len) == 0;
    return 0;
}

const struct wx_ops wx_mprotect = {
    .name = "mprotect",
    .granule_shift = 0,
    .freed_stays_ready = false,
    .can_patch = false,
    .flags = 0,
    .open = mprotect_open,
    .close = mprotect_close,
    .commit = mprotect_commit,
    .seal = mprotect_seal,
    .release = mprotect_release,
    .scrub = NULL,
    .scrub_in_lock = NULL,
    .patch_begin = NULL,
    .patch_end = NULL,
};
