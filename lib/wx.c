/*
 * The W^X backend: how a span of the reservation becomes writable, executable and inaccessible
 * again. The mprotect backend has one view (rw == rx): a span is rw- while OPEN, r-x once SEALED
 * and --- when freed; no page is ever writable and executable at once.
 *
 * Every protection change counts in the cache's statistics. Sealing runs without the cache's
 * lock (a chunk belongs to its owner), so the counter is updated atomically.
 */
#include <errno.h>
#include <sys/mman.h>
#include <valgrind/valgrind.h>

#include "internal.h"

static int wx_protect(struct code_cache *cache, uintptr_t addr, size_t len, int prot)
{
    if (os_protect((void *)addr, len, prot) != 0)
        return -1;
    __atomic_fetch_add(&cache->protection_changes, 1, __ATOMIC_RELAXED);
    return 0;
}

int wx_commit(struct code_cache *cache, uintptr_t addr, size_t len, bool dirty)
{
    /* A dirty span may still hold sealed code: its memory must go before the pages can become
     * writable, and it is discarded while they are still inaccessible. */
    if (dirty && os_discard((void *)addr, len) != 0)
        return -1;
    if (wx_protect(cache, addr, len, PROT_READ | PROT_WRITE) != 0)
        return -1;
    /* Take the first-write faults now, in one call, instead of one by one while code is being
     * written, and learn here rather than at a random store that the memory is not there.
     * EINVAL means the kernel predates MADV_POPULATE_WRITE (Linux 5.14): pages then arrive on
     * first touch, as before. */
    if (os_populate((void *)addr, len) != 0 && errno != EINVAL) {
        int saved = errno;
        /* Whatever was populated is fresh zero memory that never held code, so if this undo
         * fails too the span is merely writable and free: it is never executable, and its next
         * user makes it writable anyway. */
        if (wx_protect(cache, addr, len, PROT_NONE) == 0)
            os_discard((void *)addr, len);
        errno = saved;
        return -1;
    }
    return 0;
}

int wx_seal(struct code_cache *cache, uintptr_t addr, size_t len)
{
    /* On failure (EACCES from SELinux execmem or PaX, ENOMEM when the change would split a
     * mapping past the map count limit) the pages keep their rw- protection. */
    if (wx_protect(cache, addr, len, PROT_READ | PROT_EXEC) != 0)
        return -1;
    arch_flush_icache((void *)addr, len);
    /* valgrind may hold translations of code that used to live at these addresses (a chunk
     * reused after free or reset); without this it would run the old code. */
    VALGRIND_DISCARD_TRANSLATIONS(addr, len);
    return 0;
}

int wx_decommit(struct code_cache *cache, uintptr_t addr, size_t len, bool *released)
{
    *released = false;
    /* Inaccessible first, so that a stale call into freed code faults rather than running
     * zeroes, and so that the memory is never seen writable with its old content. */
    if (wx_protect(cache, addr, len, PROT_NONE) != 0)
        return -1;
    *released = os_discard((void *)addr, len) == 0;
    return 0;
}
