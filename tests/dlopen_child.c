/*
 * The host of tests/dlopen: a program that links neither libcodecache nor jemalloc (a plugin
 * host, a Python or PHP interpreter) and dlopen()s the library at run time, as they do.
 *
 *   dlopen_child LIBRARY [unload]
 *
 * loads LIBRARY with dlopen, resolves the functions it needs with dlsym, creates a cache, writes
 * a function returning 42 into a chunk (x86-64 or A64), seals it, calls it and destroys the cache.
 * It prints one line saying which jemalloc, if any, came into the process with the library, then
 * "returned 42".
 * With "unload", a second thread does that work and stays alive while the main thread
 * dlclose()s the library; then the thread exits (running the destructors of its thread-specific
 * data, some of which jemalloc registered) and the program prints "thread exited after dlclose".
 * Exit status: 0 it worked, 2 dlopen failed (dlerror on standard error), 3 a symbol is missing,
 * 4 a library call failed, 5 the code returned something else, 99 usage or setup.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "code_cache.h"

/* The public API's types come from the header; the functions come from dlsym, never the linker. */
struct api {
    struct code_cache *(*cache_create)(const struct code_cache_options *);
    struct code_chunk *(*cache_alloc)(struct code_cache *, size_t);
    struct code_span (*chunk_alloc)(struct code_chunk *, size_t, size_t);
    int (*chunk_seal)(struct code_chunk *);
    void (*chunk_free)(struct code_chunk *);
    void (*cache_destroy)(struct code_cache *);
};

/* dlsym returns an object pointer; POSIX guarantees it converts to a function pointer. */
static int resolve(void *lib, const char *name, void *slot, size_t size)
{
    void *sym = dlsym(lib, name);
    if (sym == NULL) {
        fprintf(stderr, "dlopen_child: dlsym %s: %s\n", name, dlerror());
        return -1;
    }
    memcpy(slot, &sym, size);
    return 0;
}

/* Reports every loaded object whose file name mentions jemalloc. */
static int report_jemalloc(struct dl_phdr_info *info, size_t size, void *data)
{
    int *found = data;
    const char *name = info->dlpi_name;
    if (name != NULL && strstr(name, "jemalloc") != NULL) {
        printf("jemalloc: %s\n", name);
        *found = 1;
    }
    return 0;
}

/* Creates a cache, writes, seals and runs one function, destroys the cache: the exit status. */
static int use_library(const struct api *api)
{
#if defined(__x86_64__)
    /* mov eax, 42; ret */
    static const unsigned char return_42[] = {0xb8, 0x2a, 0x00, 0x00, 0x00, 0xc3};
#elif defined(__aarch64__)
    /* mov w0, #42; ret (little-endian words 0x52800540, 0xd65f03c0) */
    static const unsigned char return_42[] = {0x40, 0x05, 0x80, 0x52, 0xc0, 0x03, 0x5f, 0xd6};
#else
#error "dlopen_child: no code for this architecture"
#endif
    struct code_cache_options opts = {.size = 1 << 20};
    struct code_cache *cache = api->cache_create(&opts);
    if (cache == NULL) {
        fprintf(stderr, "dlopen_child: code_cache_create: %s\n", strerror(errno));
        return 4;
    }
    struct code_chunk *chunk = api->cache_alloc(cache, 4096);
    if (chunk == NULL) {
        fprintf(stderr, "dlopen_child: code_cache_alloc: %s\n", strerror(errno));
        api->cache_destroy(cache);
        return 4;
    }
    struct code_span fn = api->chunk_alloc(chunk, sizeof return_42, 16);
    if (fn.rw == NULL) {
        fprintf(stderr, "dlopen_child: code_chunk_alloc: %s\n", strerror(errno));
        api->cache_destroy(cache);
        return 4;
    }
    memcpy(fn.rw, return_42, sizeof return_42);
    if (api->chunk_seal(chunk) != 0) {
        fprintf(stderr, "dlopen_child: code_chunk_seal: %s\n", strerror(errno));
        api->cache_destroy(cache);
        return 4;
    }
    int (*generated)(void) = (int (*)(void))fn.rx;
    int result = generated();
    api->chunk_free(chunk);
    api->cache_destroy(cache);
    printf("returned %d\n", result);
    return result == 42 ? 0 : 5;
}

/* The "unload" case: the worker uses the library, then waits until main has dlclose()d it. */
struct worker {
    const struct api *api;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int status; /* use_library's, -1 until it returns */
    bool unloaded;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    int status = use_library(w->api);
    pthread_mutex_lock(&w->lock);
    w->status = status;
    pthread_cond_broadcast(&w->changed);
    while (!w->unloaded)
        pthread_cond_wait(&w->changed, &w->lock);
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

static int use_then_unload(void *lib, const struct api *api)
{
    struct worker w = {.api = api, .status = -1, .unloaded = false};
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.changed, NULL);
    pthread_t thread;
    if (pthread_create(&thread, NULL, worker_main, &w) != 0) {
        fprintf(stderr, "dlopen_child: pthread_create failed\n");
        return 99;
    }
    pthread_mutex_lock(&w.lock);
    while (w.status < 0)
        pthread_cond_wait(&w.changed, &w.lock);
    if (dlclose(lib) != 0)
        fprintf(stderr, "dlopen_child: dlclose: %s\n", dlerror());
    w.unloaded = true;
    pthread_cond_broadcast(&w.changed);
    pthread_mutex_unlock(&w.lock);
    pthread_join(thread, NULL);
    printf("thread exited after dlclose\n");
    return w.status;
}

int main(int argc, char **argv)
{
    /* Line by line: what was printed must reach the test even if the process then crashes. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    bool unload = argc == 3 && strcmp(argv[2], "unload") == 0;
    if (argc != 2 && !unload) {
        fprintf(stderr, "usage: dlopen_child LIBRARY [unload]\n");
        return 99;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "dlopen_child: dlopen: %s\n", dlerror());
        return 2;
    }
    struct api api;
    if (resolve(lib, "code_cache_create", &api.cache_create, sizeof api.cache_create) != 0 ||
        resolve(lib, "code_cache_alloc", &api.cache_alloc, sizeof api.cache_alloc) != 0 ||
        resolve(lib, "code_chunk_alloc", &api.chunk_alloc, sizeof api.chunk_alloc) != 0 ||
        resolve(lib, "code_chunk_seal", &api.chunk_seal, sizeof api.chunk_seal) != 0 ||
        resolve(lib, "code_chunk_free", &api.chunk_free, sizeof api.chunk_free) != 0 ||
        resolve(lib, "code_cache_destroy", &api.cache_destroy, sizeof api.cache_destroy) != 0)
        return 3;

    int found = 0;
    dl_iterate_phdr(report_jemalloc, &found);
    if (!found)
        printf("jemalloc: no libjemalloc loaded\n");
    return unload ? use_then_unload(lib, &api) : use_library(&api);
}
