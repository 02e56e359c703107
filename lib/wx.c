/*
 * What the two W^X backends share: counted protection changes, publishing written code to
 * instruction fetch (other cores and valgrind included), and knowing whether we are a fork()ed
 * child.
 */
#include <pthread.h>
#include <sys/mman.h>
#include <valgrind/valgrind.h>

#include "internal.h"

void wx_count_syscall(struct code_cache *cache)
{
    __atomic_fetch_add(&cache->system_calls, 1, __ATOMIC_RELAXED);
}

int wx_protect(struct code_cache *cache, uintptr_t addr, size_t len, int prot)
{
    wx_count_syscall(cache);
    if (os_protect((void *)addr, len, prot) != 0)
        return -1;
    __atomic_fetch_add(&cache->protection_changes, 1, __ATOMIC_RELAXED);
    return 0;
}

/* Whether the process runs under valgrind: asked once, since a process never comes under it
 * later. The client request costs some 30 instructions, and a function is published twice (its
 * seal, its free): bench/dual's calls per function went down by that much. */
static int wx_valgrind = -1;

static bool wx_under_valgrind(void)
{
    int known = __atomic_load_n(&wx_valgrind, __ATOMIC_RELAXED);
    if (known < 0) {
        known = RUNNING_ON_VALGRIND != 0;
        __atomic_store_n(&wx_valgrind, known, __ATOMIC_RELAXED);
    }
    return known != 0;
}

void wx_publish(uintptr_t rx, size_t len, bool ran_before)
{
    arch_flush_icache((void *)rx, len);
    /* Only then: the other cores must find the flushed lines when they resynchronise. Fresh
     * memory is skipped, since no core can hold instructions it never fetched, and the call is
     * a system call with an interrupt to every core running one of our threads (aarch64). */
    if (ran_before)
        arch_sync_cores();
    /* valgrind may hold translations of code that used to live at these addresses (a span
     * reused after free or reset, a patch); without this it would run the old code. With two
     * views it never sees the write happen at the address that runs (FACTS.md). */
    if (wx_under_valgrind())
        VALGRIND_DISCARD_TRANSLATIONS(rx, len);
}

/*
 * fork(): the RW view of a dual-mapped cache is MADV_DONTFORK, so it is not there in a child,
 * whose writes must not reach the parent's code anyway (both views are MAP_SHARED). A child is
 * recognised without a system call: a pthread_atfork handler bumps a generation that each cache
 * compared with the one it was created in. (A raw clone(2) that skips the handlers is not
 * covered; glibc's fork, posix_spawn and system are.)
 */
unsigned wx_generation;
static pthread_once_t wx_atfork_once = PTHREAD_ONCE_INIT;

static void wx_in_child(void)
{
    __atomic_fetch_add(&wx_generation, 1, __ATOMIC_RELAXED);
}

static void wx_register_atfork(void)
{
    pthread_atfork(NULL, NULL, wx_in_child);
}

unsigned wx_fork_generation(void)
{
    pthread_once(&wx_atfork_once, wx_register_atfork);
    return __atomic_load_n(&wx_generation, __ATOMIC_RELAXED);
}
