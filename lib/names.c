/*
 * Names of JIT functions: code_chunk_name, code_chunk_name_at, and handing the names to the
 * tools that listen (perf.c, gdbjit.c) when a chunk is sealed, or at once for a sealed chunk.
 *
 * A chunk's names are a singly linked list, newest first, in the cache's jemalloc arena. A name
 * is pushed with a compare-and-swap and a release store, so a reader in another thread, or in a
 * signal handler interrupting the writer, sees either the old head or a complete new node; nodes
 * never change afterwards and are freed only when the chunk is retired (free, reset, destroy),
 * under the cache's lock. Readers take no lock and make no call: code_chunk_name_at is
 * async-signal-safe, as long as nobody frees the chunk meanwhile.
 *
 * Why names are kept even when no tool listens: a runtime's own crash handler asks for them
 * (code_cache_find, then code_chunk_name_at), and naming costs a copy, not a system call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include "debuginfo.h"

#ifndef PR_SET_VMA
#define PR_SET_VMA           0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif

/* ---- Which tools listen ---- */

static unsigned env_tools;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

/* CODE_CACHE_PERF=map, jitdump or both (comma-separated); CODE_CACHE_GDB=1. */
static void env_read(void)
{
    const char *perf = getenv("CODE_CACHE_PERF");
    while (perf != NULL && *perf != '\0') {
        size_t n = strcspn(perf, ",");
        if (n == 3 && strncmp(perf, "map", 3) == 0)
            env_tools |= CODE_CACHE_PERF_MAP;
        else if (n == 7 && strncmp(perf, "jitdump", 7) == 0)
            env_tools |= CODE_CACHE_PERF_JITDUMP;
        else if (n > 0)
            debug_log("CODE_CACHE_PERF: unknown tool '%.*s' ignored (map, jitdump)", (int)n, perf);
        perf += n + (perf[n] == ',');
    }
    const char *gdb = getenv("CODE_CACHE_GDB");
    if (gdb != NULL && *gdb != '\0' && strcmp(gdb, "0") != 0)
        env_tools |= CODE_CACHE_GDB_JIT;
}

unsigned debuginfo_tools(const struct code_cache *cache)
{
    pthread_once(&env_once, env_read);
    return (cache->flags & DEBUGINFO_TOOLS) | env_tools;
}

/*
 * /proc/PID/maps shows the reservation as [anon:codecache] on kernels built with
 * CONFIG_ANON_VMA_NAME (5.17 on); elsewhere prctl says EINVAL, which changes nothing. The name
 * stays on the parts of the reservation whose protection changes (mprotect keeps it); committed
 * parts of a dual-mapped cache are mappings of its file, which show the file's name instead.
 */
void debuginfo_create(struct code_cache *cache)
{
    int saved = errno;
    if (prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, cache->map_base, cache->map_size, "codecache") != 0)
        debug_log("create: the kernel does not name mappings (prctl PR_SET_VMA: errno %d)", errno);
    errno = saved;
}

/* ---- Naming ---- */

static bool names_live(uint8_t state)
{
    return state == CHUNK_OPEN || state == CHUNK_SEALED;
}

/* Where the chunk's code runs and is written. */
static uintptr_t chunk_rx(const struct code_chunk *chunk)
{
    return chunk->cache->base + chunk_offset(chunk);
}

/* Tells the listening tools about one function of a runnable chunk. */
static void names_announce_one(unsigned tools, const struct debug_name *n)
{
    if (tools & CODE_CACHE_PERF_MAP)
        perf_map_announce(n->start, n->size, n->name, n->len);
    if (tools & CODE_CACHE_PERF_JITDUMP)
        perf_jitdump_announce(n->start, n->size, n->name, n->len);
}

static void names_announce_gdb(struct code_chunk *chunk, struct debug_names *names)
{
    gdbjit_register(&chunk->cache->meta, names, chunk_rx(chunk), chunk_size(chunk));
}

/* The chunk's list holder, created by the first name; NULL + ENOMEM. Two threads naming a SEALED
 * chunk at once may both create one: the loser frees its own. */
static struct debug_names *names_of(struct code_chunk *chunk)
{
    struct debug_names *names = __atomic_load_n(&chunk->debug_names, __ATOMIC_ACQUIRE);
    if (names != NULL)
        return names;
    struct debug_names *fresh = meta_alloc(&chunk->cache->meta, sizeof *fresh);
    if (fresh == NULL)
        return NULL;
    void *expected = NULL;
    if (__atomic_compare_exchange_n(&chunk->debug_names, &expected, fresh, false, __ATOMIC_RELEASE,
                                    __ATOMIC_ACQUIRE))
        return fresh;
    meta_free(&chunk->cache->meta, fresh, sizeof *fresh);
    return expected;
}

int code_chunk_name(struct code_chunk *chunk, const void *rx, size_t size, const char *name)
{
    if (chunk == NULL || name == NULL || size == 0) {
        errno = EINVAL;
        return -1;
    }
    size_t len = strnlen(name, CODE_CACHE_NAME_MAX);
    if (len == CODE_CACHE_NAME_MAX) {
        errno = ENAMETOOLONG;
        return -1;
    }
    /* A newline would end a perf map line early; the rest of the name would become a line of
     * its own. */
    if (len == 0 || memchr(name, '\n', len) != NULL) {
        errno = EINVAL;
        return -1;
    }
    uint8_t state = chunk_load_state(chunk);
    if (!names_live(state)) {
        errno = EPERM;
        return -1;
    }
    uintptr_t lo = chunk_rx(chunk), at = (uintptr_t)rx;
    if (at < lo || at - lo >= chunk_size(chunk) || size > chunk_size(chunk) - (at - lo)) {
        errno = EINVAL;
        return -1;
    }

    struct code_cache *cache = chunk->cache;
    struct debug_names *names = names_of(chunk);
    if (names == NULL)
        return -1;
    struct debug_name *n = meta_alloc(&cache->meta, sizeof *n + len + 1);
    if (n == NULL)
        return -1;
    n->start = at;
    n->size = size;
    n->len = len;
    memcpy(n->name, name, len + 1);
    n->next = __atomic_load_n(&names->head, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(&names->head, &n->next, n, true, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED))
        ;

    /* An OPEN chunk's names are announced by its seal. A SEALED one's code runs already. */
    if (state == CHUNK_SEALED) {
        unsigned tools = debuginfo_tools(cache);
        names_announce_one(tools, n);
        if (tools & CODE_CACHE_GDB_JIT)
            names_announce_gdb(chunk, names);
    }
    return 0;
}

const char *code_chunk_name_at(const struct code_chunk *chunk, const void *addr, const void **start,
                               size_t *size)
{
    if (chunk == NULL)
        return NULL;
    const struct debug_names *names = __atomic_load_n(&chunk->debug_names, __ATOMIC_ACQUIRE);
    if (names == NULL)
        return NULL;
    /* An address of the RW view names the same code as its twin in the RX view. */
    const struct code_cache *cache = chunk->cache;
    uintptr_t a = (uintptr_t)addr, off = chunk_offset(chunk), len = chunk_size(chunk);
    if (a - (cache->rw_base + off) < len)
        a = a - cache->rw_base + cache->base;
    for (const struct debug_name *n = __atomic_load_n(&names->head, __ATOMIC_ACQUIRE); n != NULL;
         n = n->next) {
        if (a - n->start < n->size) {
            if (start != NULL)
                *start = (const void *)n->start;
            if (size != NULL)
                *size = n->size;
            return n->name;
        }
    }
    return NULL;
}

/* ---- Hooks ---- */

void names_sealed(struct code_chunk *chunk)
{
    unsigned tools = debuginfo_tools(chunk->cache);
    if (tools == 0)
        return;
    struct debug_names *names = chunk->debug_names;
    for (const struct debug_name *n = names->head; n != NULL; n = n->next)
        names_announce_one(tools, n);
    if (tools & CODE_CACHE_GDB_JIT)
        names_announce_gdb(chunk, names);
}

void names_retire(struct code_cache *cache, struct code_chunk *chunk)
{
    struct debug_names *names = chunk->debug_names;
    __atomic_store_n(&chunk->debug_names, NULL, __ATOMIC_RELEASE);
    if (names->gdb != NULL)
        gdbjit_unregister(&cache->meta, names);
    struct debug_name *n = names->head;
    while (n != NULL) {
        struct debug_name *next = n->next;
        meta_free(&cache->meta, n, sizeof *n + n->len + 1);
        n = next;
    }
    meta_free(&cache->meta, names, sizeof *names);
}
