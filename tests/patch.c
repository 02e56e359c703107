/*
 * code_chunk_patch: rewriting sealed code through the RW view of a dual-mapped cache. An aligned
 * patch of up to 8 bytes inside one 8-byte word is one atomic store: a thread running the code
 * meanwhile sees the old bytes or the new ones, never a mix. Errors: ENOTSUP with the mprotect
 * backend (whatever the arguments, once they are not NULL or empty), EINVAL outside the chunk,
 * EPERM on an OPEN or freed chunk.
 *
 * Run once per backend (helpers.h): with mprotect every patch of a sealed chunk is ENOTSUP and
 * leaves the code as it was; with dual it takes effect at once, valgrind included (the library
 * discards its translations).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>

#include "helpers.h"

#define PAGE test_page_size()

typedef uint64_t (*fn64)(void);

/* test_write_return64's function: the value is one aligned 8-byte word 8 bytes into it. */
static fn64 emit_return64(struct code_chunk *chunk, uint64_t value, void **imm)
{
    struct code_span span = code_chunk_alloc(chunk, TEST_RETURN64_SIZE, 16);
    cr_assert_not_null(span.rw, "code_chunk_alloc: %s", strerror(errno));
    test_write_return64(span.rw, value);
    *imm = (char *)span.rx + 8;
    cr_assert_eq((uintptr_t)*imm % 8, 0);
    return (fn64)span.rx;
}

/* The result every patch call must have on this cache: 0, or ENOTSUP with mprotect. */
static void expect_patch(const struct code_cache *cache, int rc, int err_if_dual)
{
    if (!test_cache_is_dual(cache)) {
        cr_assert_eq(rc, -1, "the mprotect backend patched");
        cr_assert_eq(errno, ENOTSUP);
        return;
    }
    if (err_if_dual == 0) {
        cr_assert_eq(rc, 0, "code_chunk_patch: %s", strerror(errno));
    } else {
        cr_assert_eq(rc, -1);
        cr_assert_eq(errno, err_if_dual, "errno %d (%s), expected %d", errno, strerror(errno),
                     err_if_dual);
    }
}

Test(patch, a_sealed_function_is_patched_at_once)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    const bool dual = test_cache_is_dual(cache);
    struct code_chunk *chunk = code_cache_alloc(cache, 256);
    cr_assert_not_null(chunk);
    jit_fn ret = emit_return(chunk, 1);
    jit_fn call = emit_call(chunk, helper_triple, 5);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    check_maps(cache);
    cr_assert_eq(ret(), 1);
    cr_assert_eq(call(), 16);

    /* The immediate of the returned value (x86-64: mov eax, imm32 at offset 1; A64: the movz
     * at offset 0), inside one aligned word (an atomic store). The code ran before, so valgrind
     * holds a translation of it that must go. */
    expect_patch(cache, test_patch_return(chunk, ret, 12345), 0);
    cr_assert_eq(ret(), dual ? 12345 : 1);
    /* The argument of the helper call (x86-64: mov edi, imm32 at offset 5, across two words). */
    expect_patch(cache, test_patch_call_arg(chunk, call, 100), 0);
    cr_assert_eq(call(), dual ? 301 : 16);
    /* A whole new function over the old one, straddling nothing but itself. */
    unsigned char code[TEST_RETURN_SIZE];
    test_write_return(code, 42);
    expect_patch(cache, code_chunk_patch(chunk, (void *)ret, code, TEST_RETURN_SIZE), 0);
    cr_assert_eq(ret(), dual ? 42 : 1);
    /* The last byte of the chunk is in it. */
    struct code_span span = code_chunk_span(chunk);
    unsigned char trap = TEST_TRAP_BYTE;
    expect_patch(cache, code_chunk_patch(chunk, (char *)span.rx + span.size - 1, &trap, 1), 0);
    check_maps(cache);
    expect_sealed_chunk(chunk);
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(st.sealed_chunks, 1);
    code_cache_destroy(cache);
}

Test(patch, refuses_what_is_not_a_sealed_chunk)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    struct code_chunk *chunk = code_cache_alloc(cache, 256);
    cr_assert_not_null(chunk);
    jit_fn fn = emit_return(chunk, 7);
    int value = 8;
    void *imm = (char *)fn + 1;

    /* Arguments: EINVAL whatever the backend. */
    errno = 0;
    cr_assert_eq(code_chunk_patch(NULL, imm, &value, 4), -1);
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_eq(code_chunk_patch(chunk, imm, NULL, 4), -1);
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_eq(code_chunk_patch(chunk, imm, &value, 0), -1);
    cr_assert_eq(errno, EINVAL);

    /* OPEN: EPERM (the code is still being written through code_chunk_alloc's spans). */
    errno = 0;
    expect_patch(cache, code_chunk_patch(chunk, imm, &value, 4), EPERM);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    cr_assert_eq(fn(), 7);

    /* Outside the chunk: before it, past it, reaching past its end, in the RW view. */
    struct code_span span = code_chunk_span(chunk);
    char *rx = span.rx;
    errno = 0;
    expect_patch(cache, code_chunk_patch(chunk, rx - 1, &value, 1), EINVAL);
    expect_patch(cache, code_chunk_patch(chunk, rx - 2, &value, 4), EINVAL);
    expect_patch(cache, code_chunk_patch(chunk, rx + span.size, &value, 1), EINVAL);
    expect_patch(cache, code_chunk_patch(chunk, rx + span.size - 2, &value, 4), EINVAL);
    expect_patch(cache, code_chunk_patch(chunk, rx, &value, SIZE_MAX), EINVAL);
    expect_patch(cache, code_chunk_patch(chunk, (void *)UINTPTR_MAX, &value, 2), EINVAL);
    if (span.rw != span.rx)
        expect_patch(cache, code_chunk_patch(chunk, span.rw, &value, 4), EINVAL);
    cr_assert_eq(fn(), 7, "nothing was written");
    check_maps(cache);

    /* FREED: EPERM while the record waits in its quarantine; after a reset: EPERM. */
    code_chunk_free(chunk);
    errno = 0;
    expect_patch(cache, code_chunk_patch(chunk, imm, &value, 4), EPERM);
    struct code_chunk *other = code_cache_alloc(cache, 256);
    cr_assert_not_null(other);
    jit_fn ofn = emit_return(other, 9);
    cr_assert_eq(code_chunk_seal(other), 0);
    cr_assert_eq(code_cache_reset(cache), 0);
    errno = 0;
    expect_patch(cache, code_chunk_patch(other, (char *)ofn + 1, &value, 4), EPERM);
    check_maps(cache);
    code_cache_destroy(cache);
}

struct runner {
    fn64 fn;
    uint64_t a, b;
    int stop;
    long seen_a, seen_b, torn;
    uint64_t torn_value;
};

/* The runner is the only writer of its counts; the patching thread reads them as it goes. */
static void count_one(long *count)
{
    __atomic_store_n(count, __atomic_load_n(count, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
}

static long count_read(const long *count)
{
    return __atomic_load_n(count, __ATOMIC_RELAXED);
}

static void *run_loop(void *arg)
{
    struct runner *r = arg;
    while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
        uint64_t v = r->fn();
        if (v == r->a) {
            count_one(&r->seen_a);
        } else if (v == r->b) {
            count_one(&r->seen_b);
        } else {
            r->torn++;
            r->torn_value = v;
        }
    }
    return NULL;
}

Test(patch, an_aligned_8_byte_patch_is_atomic_while_another_thread_runs_the_code)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    const bool dual = test_cache_is_dual(cache);
    struct code_chunk *chunk = code_cache_alloc(cache, 64);
    cr_assert_not_null(chunk);
    /* Every bit differs between the two values: any mix of their bytes is neither. */
    struct runner r = {.a = 0x0123456789abcdefu, .b = ~(uint64_t)0x0123456789abcdefu};
    void *imm;
    r.fn = emit_return64(chunk, r.a, &imm);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    check_maps(cache);
    cr_assert_eq(r.fn(), r.a);

    pthread_t tid;
    cr_assert_eq(pthread_create(&tid, NULL, run_loop, &r), 0);
    /* The runner runs the code once before any patch: under valgrind, where threads take turns,
     * it could otherwise get no turn before the patches are over. */
    while (count_read(&r.seen_a) == 0)
        sched_yield();
    /* Fewer under valgrind, and in an emulator, where each patch maps the page again (helpers.h:
     * test_dual_fetch_is_stale). And more, within a bound, until the runner has run the patched
     * value too: under valgrind it runs only when valgrind gives it a turn. */
    const int patches = test_under_valgrind() ? 2000 : test_under_emulator() ? 20000 : 200000;
    for (int i = 0; i < patches || (dual && count_read(&r.seen_b) == 0); i++) {
        cr_assert(i < 50 * patches, "the runner never ran the patched code in %d patches", i);
        uint64_t next = i % 2 ? r.a : r.b;
        int rc = code_chunk_patch(chunk, imm, &next, sizeof next);
        if (!dual) {
            cr_assert(rc == -1 && errno == ENOTSUP, "the mprotect backend patched");
            break;
        }
        cr_assert_eq(rc, 0, "patch %d: %s", i, strerror(errno));
        cr_assert_eq(r.fn(), next, "patch %d is not seen by the thread that made it", i);
        /* Let the runner in between (under valgrind threads take turns at system calls). Every
         * 17th patch, an odd period, so that the runner finds the original value at one turn
         * and the patched one at the next: every 16th always left it the patched one. */
        if (i % 17 == 0)
            sched_yield();
    }
    __atomic_store_n(&r.stop, 1, __ATOMIC_RELEASE);
    pthread_join(tid, NULL);
    cr_log_info("%ld runs saw the old value, %ld the new, %ld a mix", r.seen_a, r.seen_b, r.torn);
    cr_assert_eq(r.torn, 0, "%ld runs returned %#llx: a torn patch", r.torn,
                 (unsigned long long)r.torn_value);
    if (dual)
        cr_assert(r.seen_a > 0 && r.seen_b > 0, "the runner saw only one value (%ld, %ld)",
                  r.seen_a, r.seen_b);
    else
        cr_assert_eq(r.seen_b, 0, "the code changed without a patch");
    check_maps(cache);
    code_cache_destroy(cache);
}

struct byte_patcher {
    struct code_chunk *chunk;
    unsigned char *at;
    int rounds;
    unsigned char last;
    int failures;
};

static void *patch_one_byte(void *arg)
{
    struct byte_patcher *p = arg;
    for (int i = 0; i < p->rounds; i++) {
        p->last = (unsigned char)i;
        if (code_chunk_patch(p->chunk, p->at, &p->last, 1) != 0)
            p->failures++;
    }
    return NULL;
}

/* Two threads patch different bytes of one 8-byte word, each store a whole word: neither may undo
 * the other's (the library merges with compare-and-swap). */
Test(patch, two_threads_patching_bytes_of_one_word_both_win)
{
    struct code_cache *cache = test_cache_near_helper(1 << 20);
    if (!test_cache_is_dual(cache))
        cr_skip_test("the mprotect backend cannot patch (ENOTSUP: a_sealed_function_*)");
    struct code_chunk *chunk = code_cache_alloc(cache, 64);
    cr_assert_not_null(chunk);
    struct code_span data = code_chunk_alloc(chunk, 8, 8);
    cr_assert_not_null(data.rw);
    memset(data.rw, 0, 8);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    const int rounds = test_under_valgrind() ? 3000 : test_under_emulator() ? 30000 : 300000;
    struct byte_patcher p[2] = {
        {chunk, (unsigned char *)data.rx + 2, rounds, 0, 0},
        {chunk, (unsigned char *)data.rx + 5, rounds - 1, 0, 0},
    };
    pthread_t tid[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&tid[i], NULL, patch_one_byte, &p[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(tid[i], NULL);
    cr_assert_eq(p[0].failures + p[1].failures, 0);
    const unsigned char *word = data.rx; /* r-x: readable where it runs */
    cr_assert_eq(word[2], p[0].last, "byte 2 is %#x, its last patch %#x", word[2], p[0].last);
    cr_assert_eq(word[5], p[1].last, "byte 5 is %#x, its last patch %#x", word[5], p[1].last);
    cr_assert(word[0] == 0 && word[1] == 0 && word[3] == 0 && word[4] == 0 && word[6] == 0 &&
                  word[7] == 0,
              "a patch changed a byte it did not cover");
    check_maps(cache);
    code_cache_destroy(cache);
}
