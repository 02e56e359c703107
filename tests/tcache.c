/*
 * Thread caches (lib/tcache.c, CODE_CACHE_NO_THREAD_CACHE in code_cache.h): a dual-mapped cache
 * lets each thread keep the small chunks it frees and hand them out again to itself once 1,024
 * more of its frees followed. What must hold: a kept chunk is trapped and not handed out before
 * the quarantine; stats count it as free and ready; what a thread keeps goes back to the cache when
 * it exits, when an allocation would otherwise fail with ENOSPC, and when the cache is reset; a
 * cache destroyed before the thread exits is left alone.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>

#include "code_cache.h"
#include "helpers.h"

#define MIB ((size_t)1 << 20)

/* Where instruction fetch does not see the RW view's stores (an emulator: qemu-user), a free
 * maps the RX view again, a system call, and thread caches are off (lib/tcache.c). */
static void need_thread_caches(void)
{
    if (test_dual_fetch_is_stale())
        cr_skip_test("thread caches are off where fetch does not see the RW view (emulator)");
}

static struct code_cache *dual_cache(size_t size, unsigned flags)
{
    struct code_cache_options opts = {.size = size, .flags = CODE_CACHE_DUAL_MAP | flags};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "create: errno %d", errno);
    return cache;
}

static struct code_chunk *sealed_function(struct code_cache *cache, size_t size, int value)
{
    struct code_chunk *chunk = code_cache_alloc(cache, size);
    cr_assert_not_null(chunk, "alloc(%zu): errno %d", size, errno);
    jit_fn fn = emit_return(chunk, value);
    cr_assert_not_null(fn);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    cr_assert_eq(fn(), value);
    return chunk;
}

/* A freed 64-byte function comes back exactly when 1,024 frees followed it, not before; until
 * then its span is traps and its handle is refused. */
Test(tcache, a_kept_chunk_comes_back_only_after_1024_frees, .init = need_thread_caches)
{
    struct code_cache *cache = dual_cache(8 * MIB, 0);
    struct code_chunk *first = sealed_function(cache, 64, 1);
    const struct code_span span = code_chunk_span(first);
    code_chunk_free(first);
    expect_freed_span(span);
    cr_assert_eq(code_chunk_seal(first), -1, "a kept chunk's handle is refused");
    cr_assert_eq(errno, EPERM);
    const size_t quarantine = 1024;
    for (size_t i = 1; i < quarantine; i++) {
        struct code_chunk *c = code_cache_alloc(cache, 64);
        cr_assert_not_null(c);
        cr_assert_neq(code_chunk_span(c).rx, span.rx, "reused after %zu frees", i);
        code_chunk_free(c);
    }
    /* 1,024 kept: the next allocation of that size takes the oldest. */
    struct code_chunk *again = code_cache_alloc(cache, 64);
    cr_assert_eq(again, first, "the oldest kept chunk was not the one handed out");
    cr_assert_eq(code_chunk_span(again).rx, span.rx);
    expect_fresh_chunk(again);
    jit_fn fn = emit_return(again, 7);
    cr_assert_eq(code_chunk_seal(again), 0);
    cr_assert_eq(fn(), 7);
    code_chunk_free(again);
    check_no_wx(cache);
    code_cache_destroy(cache);
}

/* The quarantine is in the thread's frees of any size: with 1,024 64-byte functions kept, a
 * 1-KiB function freed a moment ago does not come straight back, and a second free of its
 * handle still aborts (tests below). */
Test(tcache, the_quarantine_counts_every_size, .init = need_thread_caches)
{
    struct code_cache *cache = dual_cache(8 * MIB, 0);
    for (int i = 0; i < 2048; i++)
        code_chunk_free(code_cache_alloc(cache, 64));
    struct code_chunk *x = sealed_function(cache, 1024, 5);
    void *rx = code_chunk_span(x).rx;
    code_chunk_free(x);
    struct code_chunk *y = code_cache_alloc(cache, 1024);
    cr_assert_not_null(y);
    cr_assert_neq(code_chunk_span(y).rx, rx, "a function freed just before came back at once");
    cr_assert_neq(y, x);
    code_chunk_free(y);
    code_cache_destroy(cache);
}

/* A kept chunk freed again: the same abort as any double free (and without thread caches). */
Test(tcache, freeing_a_kept_chunk_twice_aborts, .signal = SIGABRT)
{
    struct code_cache *cache = dual_cache(4 * MIB, 0);
    struct code_chunk *c = sealed_function(cache, 64, 1);
    code_chunk_free(c);
    code_chunk_free(c);
}

/* Stats: a kept chunk is neither in use nor a free span; it is free and ready. */
Test(tcache, stats_count_kept_chunks_as_free_and_ready, .init = need_thread_caches)
{
    struct code_cache *cache = dual_cache(4 * MIB, 0);
    struct code_chunk *chunks[10];
    for (int i = 0; i < 10; i++)
        chunks[i] = sealed_function(cache, 200, i);
    struct code_chunk *open = code_cache_alloc(cache, 64);
    struct code_cache_stats before, after;
    code_cache_get_stats(cache, &before);
    cr_assert_eq(before.sealed_chunks, 10);
    cr_assert_eq(before.open_chunks, 1);
    for (int i = 0; i < 10; i += 2)
        code_chunk_free(chunks[i]);
    code_chunk_free(open);
    code_cache_get_stats(cache, &after);
    cr_assert_eq(after.sealed_chunks, 5);
    cr_assert_eq(after.open_chunks, 0);
    cr_assert_eq(after.in_use, before.in_use - 5 * 256 - 64);
    cr_assert_eq(after.free_ready, before.free_ready + 5 * 256 + 64);
    cr_assert_eq(after.free, before.free + 5 * 256 + 64);
    cr_assert_eq(after.committed, before.committed);
    cr_assert_eq(after.free_spans, 0, "kept chunks are not free spans of the index");
    cr_assert_eq(after.chunks_allocated, 11);
    for (int i = 1; i < 10; i += 2)
        code_chunk_free(chunks[i]);
    code_cache_destroy(cache);
}

/* With CODE_CACHE_NO_THREAD_CACHE a free goes back to the index at once. */
Test(tcache, no_thread_cache_frees_into_the_index)
{
    struct code_cache *cache = dual_cache(4 * MIB, CODE_CACHE_NO_THREAD_CACHE);
    struct code_chunk *a = sealed_function(cache, 64, 1);
    struct code_chunk *b = sealed_function(cache, 64, 2);
    code_chunk_free(a);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free_spans, 1);
    code_chunk_free(b);
    code_cache_destroy(cache);
}

struct keeper {
    struct code_cache *cache;
    size_t size, count;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    size_t churn; /* then allocates and frees one chunk this many times (from what it keeps) */
    int stage;    /* 1: freed, kept; 2: may go on */
    int after;    /* errno of an allocation after stage 2, or 0 */
};

/* Allocates `count` chunks (all of the cache if count is 0), frees them all (kept), and waits. */
static void *keeper_run(void *arg)
{
    struct keeper *k = arg;
    struct code_chunk **chunks = calloc(k->count ? k->count : 65536, sizeof *chunks);
    size_t n = 0;
    for (; k->count ? n < k->count : n < 65536; n++) {
        chunks[n] = code_cache_alloc(k->cache, k->size);
        if (chunks[n] == NULL)
            break;
        emit_return(chunks[n], (int)n);
        code_chunk_seal(chunks[n]);
    }
    k->count = n;
    for (size_t i = 0; i < n; i++)
        code_chunk_free(chunks[i]);
    free(chunks);
    for (size_t i = 0; i < k->churn; i++)
        code_chunk_free(code_cache_alloc(k->cache, k->size));
    pthread_mutex_lock(&k->lock);
    k->stage = 1;
    pthread_cond_broadcast(&k->cond);
    while (k->stage != 2)
        pthread_cond_wait(&k->cond, &k->lock);
    pthread_mutex_unlock(&k->lock);
    if (k->after >= 0) {
        struct code_chunk *c = code_cache_alloc(k->cache, k->size);
        k->after = c == NULL ? errno : 0;
        if (c != NULL)
            code_chunk_free(c);
    }
    return NULL;
}

static void keeper_start(struct keeper *k, pthread_t *t)
{
    pthread_mutex_init(&k->lock, NULL);
    pthread_cond_init(&k->cond, NULL);
    cr_assert_eq(pthread_create(t, NULL, keeper_run, k), 0);
    pthread_mutex_lock(&k->lock);
    while (k->stage != 1)
        pthread_cond_wait(&k->cond, &k->lock);
    pthread_mutex_unlock(&k->lock);
}

static void keeper_finish(struct keeper *k, pthread_t t)
{
    pthread_mutex_lock(&k->lock);
    k->stage = 2;
    pthread_cond_broadcast(&k->cond);
    pthread_mutex_unlock(&k->lock);
    cr_assert_eq(pthread_join(t, NULL), 0);
    pthread_mutex_destroy(&k->lock);
    pthread_cond_destroy(&k->cond);
}

/* Another thread filled the cache with 64-byte functions and freed them all, and keeps them:
 * one allocation of the whole cache must still succeed. */
Test(tcache, enospc_takes_back_what_other_threads_keep, .init = need_thread_caches)
{
    const size_t size = 256 << 10;
    struct code_cache *cache = dual_cache(size, 0);
    struct keeper k = {.cache = cache, .size = 64, .after = 0};
    pthread_t t;
    keeper_start(&k, &t);
    cr_assert_eq(k.count, size / 64, "the keeper filled %zu chunks", k.count);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free_ready, size);
    cr_assert_eq(st.free_spans, 0);
    struct code_chunk *all = code_cache_alloc(cache, size);
    cr_assert_not_null(all, "the whole cache: errno %d", errno);
    /* The keeper has nothing left to hand out: its allocation finds the cache full. */
    keeper_finish(&k, t);
    cr_assert_eq(k.after, ENOSPC, "the keeper allocated from a chunk it no longer keeps");
    code_chunk_free(all);
    code_cache_destroy(cache);
}

/* A reset takes what threads keep: afterwards the whole cache is one allocation, and the thread
 * that kept chunks hands out none of them. */
Test(tcache, a_reset_takes_what_threads_keep)
{
    const size_t size = 256 << 10;
    struct code_cache *cache = dual_cache(size, 0);
    struct keeper k = {.cache = cache, .size = 128, .count = 100, .after = 0};
    pthread_t t;
    keeper_start(&k, &t);
    cr_assert_eq(code_cache_reset(cache), 0);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.in_use, 0);
    cr_assert_eq(st.free_ready, 0, "kept chunks survived the reset");
    cr_assert_eq(st.never_used, size);
    struct code_chunk *all = code_cache_alloc(cache, size);
    cr_assert_not_null(all, "errno %d", errno);
    keeper_finish(&k, t);
    cr_assert_eq(k.after, ENOSPC);
    code_chunk_free(all);
    code_cache_destroy(cache);
}

/* A thread that exits gives back what it kept: the index sees the freed span. */
Test(tcache, a_thread_that_exits_gives_its_chunks_back, .init = need_thread_caches)
{
    struct code_cache *cache = dual_cache(4 * MIB, 0);
    struct code_chunk *below = sealed_function(cache, 64, 1);
    /* 1,100 kept, then 10 of them handed out again and freed: the thread allocated 1,110. */
    struct keeper k = {.cache = cache, .size = 64, .count = 1100, .churn = 10, .after = -1};
    pthread_t t;
    keeper_start(&k, &t);
    struct code_chunk *above = sealed_function(cache, 64, 2);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free_spans, 0);
    cr_assert_eq(st.free_ready, 1100 * 64);
    cr_assert_eq(st.chunks_allocated, 1 + 1110 + 1);
    const size_t allocated = st.chunks_allocated;
    keeper_finish(&k, t);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free_spans, 1, "the exited thread's chunks are not back in the index");
    cr_assert_eq(st.free_ready, 1100 * 64);
    cr_assert_eq(st.chunks_allocated, allocated, "chunks_allocated went down at a thread's exit");
    code_chunk_free(below);
    code_chunk_free(above);
    code_cache_destroy(cache);
}

/* A kept chunk's lookup words still name it (lib/find.c): code_cache_find must tell it from a
 * live chunk by its state, and the words must go when it goes back to the index, before its record
 * can name another chunk. The thread frees a 128-byte chunk A, then 1,100 of 1 KiB (more than the
 * 64 records that wait before one is reused, and than the megabyte of freed spans that waits
 * before one is reused: lib/space.c), and exits: A goes back first, so the next record handed
 * out is A's, and the next 64-byte chunk takes A's first granule, the lowest freed. A word of A's
 * second granule left as it was would then name that chunk, which does not cover it. */
struct kept_words {
    struct code_cache *cache;
    struct code_span a;
};

static void *free_a_then_more(void *arg)
{
    struct kept_words *kw = arg;
    struct code_chunk *a = sealed_function(kw->cache, 128, 7);
    static struct code_chunk *more[1100];
    for (size_t i = 0; i < 1100; i++)
        more[i] = sealed_function(kw->cache, 1024, (int)i);
    kw->a = code_chunk_span(a);
    code_chunk_free(a);
    for (int v = 0; v < 2; v++) {
        const char *view = v ? kw->a.rw : kw->a.rx;
        cr_assert_null(code_cache_find(kw->cache, view), "a kept chunk was found");
        cr_assert_null(code_cache_find(kw->cache, view + kw->a.size - 1));
    }
    for (size_t i = 0; i < 1100; i++)
        code_chunk_free(more[i]);
    return NULL;
}

/* Every granule of span: NULL, or a chunk that covers it. */
static void expect_found_as_covering(struct code_cache *cache, struct code_span span)
{
    for (size_t off = 0; off < span.size; off += 64) {
        const char *at = (const char *)span.rx + off;
        struct code_chunk *c = code_cache_find(cache, at);
        if (c == NULL)
            continue;
        struct code_span s = code_chunk_span(c);
        cr_assert(at >= (const char *)s.rx && at < (const char *)s.rx + s.size,
                  "find(%p) gave a chunk at [%p, +%zu), which does not cover it", (void *)at, s.rx,
                  s.size);
    }
}

Test(tcache, a_kept_chunk_is_not_found_and_its_words_go_with_it, .init = need_thread_caches)
{
    struct code_cache *cache = dual_cache(4 * MIB, 0);
    struct kept_words kw = {.cache = cache};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, free_a_then_more, &kw), 0);
    cr_assert_eq(pthread_join(t, NULL), 0);
    struct code_chunk *c[4];
    for (int i = 0; i < 4; i++) {
        c[i] = sealed_function(cache, 64, i);
        expect_found_as_covering(cache, kw.a);
    }
    cr_assert_eq(code_chunk_span(c[0]).rx, kw.a.rx, "the first 64-byte chunk is not at A");
    cr_assert_eq(code_cache_find(cache, (const char *)kw.a.rx + 64), c[1]);
    for (int i = 0; i < 4; i++)
        code_chunk_free(c[i]);
    code_cache_destroy(cache);
}

/* The 2 MiB flush gives back only chunks past their quarantine. A 1 KiB chunk X at the lowest
 * address is freed after 32,000 small ones, alone of its size; the flush comes 753 frees later.
 * Given back then (as "the oldest half of each size" did), X would be the lowest freed span that
 * fits, and the next 1 KiB allocation would take it 800 frees after X was freed. */
Test(tcache, the_flush_keeps_the_quarantine, .init = need_thread_caches)
{
    struct code_cache *cache = dual_cache(64 * MIB, 0);
    struct code_chunk *x = code_cache_alloc(cache, 1024);
    cr_assert_not_null(x);
    const uintptr_t x_rx = (uintptr_t)code_chunk_span(x).rx;
    /* Every other one freed: the freed spans stay apart, hundreds of them (crowded). */
    enum { SMALL = 32000 + 800 };
    struct code_chunk **small = calloc(2 * SMALL, sizeof *small);
    cr_assert_not_null(small);
    for (size_t i = 0; i < 2 * SMALL; i++)
        cr_assert_not_null(small[i] = code_cache_alloc(cache, 64));
    for (size_t i = 0; i < 32000; i++)
        code_chunk_free(small[2 * i]);
    code_chunk_free(x);
    for (size_t i = 32000; i < SMALL; i++)
        code_chunk_free(small[2 * i]);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_geq(st.free_spans, 512, "the flush gave back the oldest small chunks (%zu spans)",
                  st.free_spans);
    struct code_chunk *c = code_cache_alloc(cache, 1024);
    cr_assert_not_null(c);
    cr_assert_neq((uintptr_t)code_chunk_span(c).rx, x_rx,
                  "a chunk freed 800 frees ago was handed out again");
    code_chunk_free(c);
    for (size_t i = 0; i < SMALL; i++)
        code_chunk_free(small[2 * i + 1]);
    free(small);
    code_cache_destroy(cache);
}

/* Exits give whole pages back to the system in the cache's batches: three threads keep 1,900 KiB
 * each (under the 2 MiB a thread keeps); once the third has exited, more than 4 MiB are ready in
 * the index, and everything beyond the last megabyte freed (the quarantine) goes back. */
Test(tcache, thread_exits_give_pages_back_in_batches, .init = need_thread_caches)
{
    struct code_cache *cache = dual_cache(16 * MIB, 0);
    enum { KEEPERS = 3, EACH = 1900 };
    struct keeper k[KEEPERS];
    pthread_t t[KEEPERS];
    for (int i = 0; i < KEEPERS; i++) {
        k[i] = (struct keeper){.cache = cache, .size = 1024, .count = EACH, .after = -1};
        keeper_start(&k[i], &t[i]);
    }
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free_ready, (size_t)KEEPERS * EACH * 1024);
    const size_t committed = st.committed;
    keeper_finish(&k[0], t[0]);
    keeper_finish(&k[1], t[1]);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.committed, committed, "given back before 4 MiB were ready");
    keeper_finish(&k[2], t[2]);
    code_cache_get_stats(cache, &st);
    cr_assert_leq(st.free_ready, MIB + 4096, "%zu bytes still ready after the exits",
                  st.free_ready);
    cr_assert_geq(st.free_ready, MIB, "the last megabyte freed was given back");
    cr_assert_leq(st.committed, committed - (size_t)KEEPERS * EACH * 1024 + MIB + 4096);
    code_cache_destroy(cache);
}

/* The cache is destroyed while another thread keeps chunks of it; then that thread exits. Under
 * valgrind or ASan, a thread that touched the destroyed cache's memory on its way out fails
 * here. */
Test(tcache, a_thread_exiting_after_its_cache_was_destroyed_leaves_it_alone)
{
    struct code_cache *cache = dual_cache(4 * MIB, 0);
    struct keeper k = {.cache = cache, .size = 64, .count = 50, .after = -1};
    pthread_t t;
    keeper_start(&k, &t);
    code_cache_destroy(cache);
    keeper_finish(&k, t);
    struct code_cache *next = dual_cache(4 * MIB, 0);
    struct code_chunk *c = sealed_function(next, 64, 3);
    code_chunk_free(c);
    code_cache_destroy(next);
}

/* More caches than a thread has slots for: the fifth frees the locked way, correctly. */
Test(tcache, more_caches_than_slots, .init = need_thread_caches)
{
    struct code_cache *caches[6];
    for (int i = 0; i < 6; i++) {
        caches[i] = dual_cache(1 * MIB, 0);
        struct code_chunk *c = sealed_function(caches[i], 64, i);
        code_chunk_free(c);
    }
    for (int i = 0; i < 6; i++) {
        struct code_cache_stats st;
        code_cache_get_stats(caches[i], &st);
        cr_assert_eq(st.free_ready, 64, "cache %d", i);
        cr_assert_eq(st.free_spans, i < 4 ? 0 : 1, "cache %d: kept %s", i,
                     i < 4 ? "by the thread" : "in the index");
        code_cache_destroy(caches[i]);
    }
}

/* Past 2 MiB kept, the oldest chunks go back to the index until 1 MiB is left. */
Test(tcache, a_thread_keeps_at_most_two_megabytes, .init = need_thread_caches)
{
    struct code_cache *cache = dual_cache(16 * MIB, 0);
    const size_t n = 2 * MIB / 1024 + 1;
    struct code_chunk **chunks = calloc(n, sizeof *chunks);
    for (size_t i = 0; i < n; i++)
        chunks[i] = code_cache_alloc(cache, 1024);
    for (size_t i = 0; i < n; i++)
        code_chunk_free(chunks[i]);
    free(chunks);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.in_use, 0);
    cr_assert_eq(st.free_ready, n * 1024);
    cr_assert_eq(st.free_spans, 1, "the oldest chunks are back in the index as one span");
    /* The newest 1,024 are still kept (a megabyte): the next allocation of 1 KiB takes the
     * oldest of them, the first not given back. */
    struct code_chunk *c = code_cache_alloc(cache, 1024);
    cr_assert_eq((uintptr_t)code_chunk_span(c).rx - st.base, (n - 1024) * 1024);
    code_chunk_free(c);
    code_cache_destroy(cache);
}

/* n chunks of size, each followed by a live 64-byte chunk in pins (so that each, given back, is a
 * span of its own). */
static struct code_chunk **pinned_chunks(struct code_cache *cache, size_t n, size_t size,
                                         struct code_chunk **pins)
{
    struct code_chunk **chunks = calloc(n, sizeof *chunks);
    cr_assert_not_null(chunks);
    for (size_t i = 0; i < n; i++) {
        chunks[i] = code_cache_alloc(cache, size);
        pins[i] = code_cache_alloc(cache, 64);
        cr_assert(chunks[i] != NULL && pins[i] != NULL, "alloc: errno %d", errno);
    }
    return chunks;
}

/* Functions of 2 KiB: the last 1,024 frees are 2 MiB, all in quarantine, so the flush past 2 MiB
 * gives back only what is past it, and the next waits for 1 MiB more kept. Without that wait,
 * every free past 2 MiB would take the lock and give back one chunk. free_spans counts what
 * went back. */
Test(tcache, functions_over_a_kilobyte_flush_once_per_megabyte, .init = need_thread_caches)
{
    struct code_cache *cache = dual_cache(16 * MIB, 0);
    enum { N = 1538, SIZE = 2048 };
    struct code_chunk **pins = calloc(N, sizeof *pins);
    cr_assert_not_null(pins);
    struct code_chunk **chunks = pinned_chunks(cache, N, SIZE, pins);
    struct code_cache_stats st;
    /* 1,025 frees: 2 MiB + 2 KiB kept; the two chunks past their quarantine go back. Then
     * 2 MiB - 2 KiB are kept, and nothing more goes back until 1 MiB more is. */
    for (size_t i = 0; i < N - 1; i++)
        code_chunk_free(chunks[i]);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free_spans, 2, "given back: %zu chunks, not 2", st.free_spans);
    cr_assert_eq(st.free_ready, (N - 1) * SIZE);
    /* 1,536 kept, 3 MiB: past 2 MiB - 2 KiB + 1 MiB. The 513 past their quarantine (the
     * 1,538th free stamped 1,537: those stamped up to 514) go back, and 1,023 are left. */
    code_chunk_free(chunks[N - 1]);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free_spans, 2 + 513, "given back: %zu chunks, not 515", st.free_spans);
    cr_assert_eq(st.free_ready, N * SIZE);
    for (size_t i = 0; i < N; i++)
        code_chunk_free(pins[i]);
    free(chunks);
    free(pins);
    code_cache_destroy(cache);
}

/* Once a flush gets down to 1 MiB again, the next one is past 2 MiB again, not past the 3 MiB a
 * quarantine of 2 KiB functions had set. */
Test(tcache, the_flush_comes_back_to_two_megabytes, .init = need_thread_caches)
{
    struct code_cache *cache = dual_cache(16 * MIB, 0);
    enum { BIG = 1025, SMALL = 2 * 16385 };
    struct code_chunk **pins = calloc(BIG + SMALL, sizeof *pins);
    cr_assert_not_null(pins);
    struct code_chunk **big = pinned_chunks(cache, BIG, 2048, pins);
    struct code_chunk **small = pinned_chunks(cache, SMALL, 64, pins + BIG);
    struct code_cache_stats st;
    /* 2 MiB + 2 KiB kept: 2 past their quarantine go back; the next flush past 3 MiB - 2 KiB. */
    for (size_t i = 0; i < BIG; i++)
        code_chunk_free(big[i]);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free_spans, 2);
    /* 16,385 x 64 B more is past it: the 1,023 of 2 KiB and one of 64 B go back, 1 MiB is left. */
    for (size_t i = 0; i < SMALL / 2; i++)
        code_chunk_free(small[i]);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free_spans, 2 + 1023 + 1);
    /* 1 MiB more is 2 MiB, not past it; 64 B more is, and 16,385 go back to leave 1 MiB. */
    for (size_t i = SMALL / 2; i < SMALL - 1; i++)
        code_chunk_free(small[i]);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free_spans, 1026, "given back before 2 MiB were kept");
    code_chunk_free(small[SMALL - 1]);
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.free_spans, 1026 + 16385, "not given back past 2 MiB: %zu spans",
                 st.free_spans);
    for (size_t i = 0; i < BIG + SMALL; i++)
        code_chunk_free(pins[i]);
    free(big);
    free(small);
    free(pins);
    code_cache_destroy(cache);
}

/* Giving everything back (here a reset) leaves nothing in quarantine: the next flush is past
 * 2 MiB again, not past the 3 MiB a quarantine of 2 KiB functions had set before it. */
Test(tcache, a_reset_brings_the_flush_back_to_two_megabytes, .init = need_thread_caches)
{
    struct code_cache *cache = dual_cache(16 * MIB, 0);
    enum { N = 1025 };
    struct code_chunk *pins[N];
    struct code_cache_stats st;
    for (int round = 0; round < 2; round++) {
        /* 2 MiB + 2 KiB kept: past 2 MiB, the 2 past their quarantine go back (and the next
         * flush would be past 3 MiB - 2 KiB, but for the reset). */
        struct code_chunk **big = pinned_chunks(cache, N, 2048, pins);
        for (size_t i = 0; i < N; i++)
            code_chunk_free(big[i]);
        free(big);
        code_cache_get_stats(cache, &st);
        cr_assert_eq(st.free_spans, 2, "round %d: %zu chunks given back, not 2", round,
                     st.free_spans);
        cr_assert_eq(code_cache_reset(cache), 0);
    }
    code_cache_destroy(cache);
}
