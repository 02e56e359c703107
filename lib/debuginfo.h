/*
 * Names of JIT functions, and the tools that learn them: names.c (code_chunk_name, the names
 * of a chunk), perf.c (perf map and jitdump files), gdbjit.c (the GDB JIT interface).
 *
 * The core calls this edge through four hooks and nothing else: debuginfo_create when a cache
 * exists, debuginfo_seal when a chunk's code has become runnable, debuginfo_retire when a chunk
 * is freed or reset (or destroyed with its cache). Each of the last two costs one load when the
 * chunk has no names, whatever tool is listening; nothing in the allocator knows about them.
 */
#ifndef CODE_CACHE_DEBUGINFO_H
#define CODE_CACHE_DEBUGINFO_H

#include "internal.h"

/* The flags of code_cache_options that turn tools on (the environment can add to them). */
#define DEBUGINFO_TOOLS (CODE_CACHE_PERF_MAP | CODE_CACHE_PERF_JITDUMP | CODE_CACHE_GDB_JIT)

/* One named function: a node of the chunk's list, newest first. Immutable once published, freed
 * only when the chunk is retired, so that code_chunk_name_at can walk the list without a lock. */
struct debug_name {
    struct debug_name *next; /* older names */
    uintptr_t start;         /* first byte, where it runs */
    size_t size;
    size_t len; /* strlen(name) */
    char name[];
};

/* What chunk->debug_names points to, created with the chunk's first name. */
struct debug_names {
    struct debug_name *head; /* newest first; atomic (release on push, acquire on read) */
    void *gdb;               /* gdbjit.c's registration of the chunk, or NULL (gdbjit's lock) */
};

/* names.c: the hooks' slow halves. */
void names_sealed(struct code_chunk *chunk);
void names_retire(struct code_cache *cache, struct code_chunk *chunk);
/* The tools listening to this cache: its flags and the environment (read once). */
unsigned debuginfo_tools(const struct code_cache *cache);

/* cache.c, code_cache_create, once the cache is complete: names the reservation for
 * /proc/PID/maps where the kernel can (prctl PR_SET_VMA_ANON_NAME). */
void debuginfo_create(struct code_cache *cache);

/* chunk.c, code_chunk_seal: the code is runnable, the chunk not yet SEALED (so a reset waits for
 * this to finish, and a name given meanwhile is refused rather than announced twice). */
static inline void debuginfo_seal(struct code_chunk *chunk)
{
    if (__atomic_load_n(&chunk->debug_names, __ATOMIC_ACQUIRE) != NULL)
        names_sealed(chunk);
}

/* chunk.c, chunks_retire and chunks_release_all, under the cache's lock: the names go, and the
 * debugger forgets the chunk. Also chunks_open: a name that raced the chunk's free (a misuse)
 * leaves nothing to the record's next chunk. */
static inline void debuginfo_retire(struct code_cache *cache, struct code_chunk *chunk)
{
    if (chunk->debug_names != NULL)
        names_retire(cache, chunk);
}

/* perf.c: one named function, where it runs (its code is read there). */
void perf_map_announce(uintptr_t start, size_t size, const char *name, size_t len);
/* perf.c: registers its fork handlers (once; cache.c's constructor, see there). */
void perf_watch_fork(void);
void perf_jitdump_announce(uintptr_t start, size_t size, const char *name, size_t len);

/* gdbjit.c: (re)registers an in-memory ELF object for the chunk's names, its text at
 * [text, text + text_size), and unregisters it. Both take the process-wide lock of the debugger's
 * list; unregistering may be called under the cache's lock, never the other way round. */
void gdbjit_register(struct meta *meta, struct debug_names *names, uintptr_t text,
                     size_t text_size);
void gdbjit_unregister(struct meta *meta, struct debug_names *names);
/* cache.c, around fork(): the list's lock is held across it (after every cache's lock, the order
 * of an unregistering free), so that the child finds it free and the list whole. */
void gdbjit_prefork(void);
void gdbjit_postfork(void);

#endif
