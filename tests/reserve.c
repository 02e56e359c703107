/*
 * Claiming bytes in a chunk: code_chunk_reserve / code_chunk_commit (emit in place without knowing
 * the size), alignment padding, and what seal does to every byte nobody claimed. A client that
 * writes through code_chunk_span without claiming loses its bytes at seal (that is the documented
 * contract); reserve/commit is the correct way to write code whose size is known only at the end.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "helpers.h"

#define PAGE test_page_size()

static const unsigned char trap = 0xcc; /* int3 */

static void expect_bytes(const void *p, size_t len, unsigned char value, const char *what)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < len; i++)
        cr_assert_eq(b[i], value, "%s: byte %zu is %#x, expected %#x", what, i, b[i], value);
}

/* mov eax, imm32; ret -- written at rw, 6 bytes. */
static void put_return(void *rw, int value)
{
    unsigned char code[6] = {0xb8, 0, 0, 0, 0, 0xc3};
    memcpy(code + 1, &value, 4);
    memcpy(rw, code, sizeof code);
}

Test(reserve, emits_in_place_then_claims_only_what_was_used)
{
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    cr_assert_not_null(chunk);
    struct code_span whole = code_chunk_span(chunk);

    struct code_span r = code_chunk_reserve(chunk, 16);
    cr_assert_not_null(r.rw, "reserve: %s", strerror(errno));
    cr_assert_eq(r.rx, whole.rx, "the first reservation starts at the chunk's start");
    cr_assert_eq(r.size, whole.size, "and holds all the room left");
    put_return(r.rw, 41);
    cr_assert_eq(code_chunk_commit(chunk, 6), 0, "commit: %s", strerror(errno));

    /* The rest stays available: a second reservation starts after the claimed bytes, aligned. */
    struct code_span r2 = code_chunk_reserve(chunk, 16);
    cr_assert_eq((char *)r2.rx, (char *)whole.rx + 16);
    cr_assert_eq(r2.size, whole.size - 16);
    put_return(r2.rw, 42);
    cr_assert_eq(code_chunk_commit(chunk, 6), 0);
    /* And code_chunk_alloc continues after it. */
    struct code_span f = code_chunk_alloc(chunk, 6, 16);
    cr_assert_eq((char *)f.rx, (char *)whole.rx + 32);
    put_return(f.rw, 43);

    cr_assert_eq(code_chunk_seal(chunk), 0);
    cr_assert_eq(((jit_fn)r.rx)(), 41);
    cr_assert_eq(((jit_fn)r2.rx)(), 42);
    cr_assert_eq(((jit_fn)f.rx)(), 43);
    /* Everything unclaimed is a trap: the padding between the functions and the tail. */
    expect_bytes((char *)whole.rx + 6, 10, trap, "padding after the first function");
    expect_bytes((char *)whole.rx + 22, 10, trap, "padding after the second function");
    expect_bytes((char *)whole.rx + 38, whole.size - 38, trap, "the unclaimed tail");
    check_maps(cache);
    code_cache_destroy(cache);
}

Test(reserve, uncommitted_bytes_are_trapped_and_never_claimed)
{
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    struct code_span r = code_chunk_reserve(chunk, 1);
    cr_assert_not_null(r.rw);
    /* Code written into the reservation but committed with a smaller size: only the committed
     * bytes survive the seal. */
    memset(r.rw, 0x90, 64);
    put_return(r.rw, 5);
    cr_assert_eq(code_chunk_commit(chunk, 6), 0);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    cr_assert_eq(((jit_fn)r.rx)(), 5);
    expect_bytes((char *)r.rx + 6, 58, trap, "written but not committed");
    code_cache_destroy(cache);
}

Test(reserve, writing_through_the_whole_span_without_claiming_is_trapped_at_seal)
{
    /* The documented contract of code_chunk_span: only claimed bytes survive. */
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    struct code_span whole = code_chunk_span(chunk);
    put_return(whole.rw, 9);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    expect_bytes(whole.rx, whole.size, trap, "nothing was claimed");
    code_cache_destroy(cache);
}

Test(reserve, alignment_padding_is_a_trap)
{
    /* Before the fix only [used, veneer_floor) was filled at seal; the gaps code_chunk_alloc
     * skipped for alignment stayed 0x00 (add [rax], al). */
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    struct code_span whole = code_chunk_span(chunk);
    struct code_span a = code_chunk_alloc(chunk, 1, 1);
    struct code_span b = code_chunk_alloc(chunk, 6, 64);
    struct code_span c = code_chunk_alloc(chunk, 3, 256);
    cr_assert(a.rw && b.rw && c.rw);
    memset(a.rw, 0xc3, 1);
    put_return(b.rw, 7);
    memset(c.rw, 0x90, 3);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    cr_assert_eq(((jit_fn)b.rx)(), 7);
    expect_bytes((char *)whole.rx + 1, 63, trap, "padding before the 64-aligned function");
    size_t c_off = (size_t)((char *)c.rx - (char *)whole.rx);
    cr_assert_eq(c_off, 256);
    expect_bytes((char *)whole.rx + 70, c_off - 70, trap, "padding before the 256-aligned one");
    expect_bytes((char *)c.rx + 3, whole.size - c_off - 3, trap, "the tail");
    code_cache_destroy(cache);
}

Test(reserve, rules_and_errors)
{
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    errno = 0;
    cr_assert_null(code_chunk_reserve(NULL, 1).rw);
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_null(code_chunk_reserve(chunk, 3).rw, "align not a power of two");
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_eq(code_chunk_commit(NULL, 1), -1);
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_eq(code_chunk_commit(chunk, 1), -1, "no reservation");
    cr_assert_eq(errno, EPERM);

    struct code_span r = code_chunk_reserve(chunk, 1);
    cr_assert_not_null(r.rw);
    /* While a reservation is outstanding nothing else may claim bytes, nor may the chunk seal. */
    errno = 0;
    cr_assert_null(code_chunk_alloc(chunk, 1, 1).rw);
    cr_assert_eq(errno, EBUSY);
    errno = 0;
    cr_assert_eq(code_chunk_seal(chunk), -1);
    cr_assert_eq(errno, EBUSY);
    errno = 0;
    cr_assert_eq(code_chunk_commit(chunk, r.size + 1), -1, "more than the reservation");
    cr_assert_eq(errno, EINVAL);
    /* Reserving again replaces the reservation; committing 0 claims nothing and ends it. */
    struct code_span again = code_chunk_reserve(chunk, 1);
    cr_assert_eq(again.rx, r.rx);
    cr_assert_eq(code_chunk_commit(chunk, 0), 0);
    cr_assert_not_null(code_chunk_alloc(chunk, 1, 1).rw);
    /* A full chunk has nothing to reserve. */
    cr_assert_not_null(code_chunk_alloc(chunk, PAGE - 1, 1).rw);
    errno = 0;
    cr_assert_null(code_chunk_reserve(chunk, 1).rw);
    cr_assert_eq(errno, ENOSPC);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    errno = 0;
    cr_assert_null(code_chunk_reserve(chunk, 1).rw, "sealed");
    cr_assert_eq(errno, EPERM);
    code_cache_destroy(cache);
}

Test(reserve, veneers_taken_during_a_reservation_come_off_its_top)
{
    struct code_cache *cache = test_cache_near_helper(16 * PAGE);
    int (*far)(int) = far_function(cache);
    struct code_chunk *chunk = code_cache_alloc(cache, PAGE);
    struct code_span whole = code_chunk_span(chunk);
    struct code_span r = code_chunk_reserve(chunk, 16);
    cr_assert_eq(r.size, whole.size);
    /* A single-pass emitter asks for a veneer in the middle of its function: it lands at the top
     * of the reservation, which the emitter has not reached. */
    const void *v = code_chunk_call_target(chunk, (const void *)far);
    cr_assert_not_null(v, "%s", strerror(errno));
    cr_assert_eq((const char *)v, (const char *)whole.rx + whole.size - CODE_CACHE_VENEER_SIZE);
    /* The function: sub rsp, 8; mov edi, 20; call veneer; add rsp, 8; ret. */
    unsigned char code[18] = {0x48, 0x83, 0xec, 0x08, 0xbf, 20,   0,    0,    0,
                              0xe8, 0,    0,    0,    0,    0x48, 0x83, 0xc4, 0x08};
    int32_t disp = (int32_t)((const char *)v - ((const char *)r.rx + 14));
    memcpy(code + 10, &disp, 4);
    memcpy(r.rw, code, sizeof code);
    ((unsigned char *)r.rw)[18] = 0xc3;
    /* Committing into the veneer would have overwritten it: refused, reservation kept. */
    errno = 0;
    cr_assert_eq(code_chunk_commit(chunk, whole.size - CODE_CACHE_VENEER_SIZE + 1), -1);
    cr_assert_eq(errno, ENOSPC);
    cr_assert_eq(code_chunk_commit(chunk, 19), 0);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    cr_assert_eq(((jit_fn)r.rx)(), 2 * 20 + 5, "through the veneer to the far function");
    code_cache_destroy(cache);
    far_function_release(far);
}
