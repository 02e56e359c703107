/*
 * examples/exec_allocator.c driven the way sljit and asmjit drive their executable allocators:
 * write at the pointer handed out, run it at that pointer plus the executable offset, rewrite a
 * constant in sealed code and publish it, free by either pointer. No table of the client's own.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "exec_allocator.h"
#include "helpers.h"

static const unsigned backends[] = {0, CODE_CACHE_DUAL_MAP};

static void write_return(unsigned char *p, int value)
{
    p[0] = 0xb8; /* mov eax, imm32; ret */
    memcpy(p + 1, &value, 4);
    p[5] = 0xc3;
}

Test(exec_allocator, sljit_generate_code_run_rewrite_and_free)
{
    for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
        struct code_cache_options opts = {
            .size = 1 << 20, .near = (const void *)helper_triple, .flags = backends[b]};
        cr_assert_eq(exec_allocator_init(&opts), 0, "%s", strerror(errno));
        /* sljit_generate_code: malloc, make writable, write, make executable. */
        unsigned char *code = exec_malloc(6, NULL);
        cr_assert_not_null(code);
        exec_update_wx_flags(code, code + 6, 0);
        write_return(code, 17);
        exec_update_wx_flags(code, code + 6, 1);
        jit_fn fn = (jit_fn)(uintptr_t)(code + exec_offset(code));
        cr_assert_eq(fn(), 17);
        cr_assert_eq(exec_offset(code),
                     (char *)code_chunk_span(code_cache_find(exec_allocator_cache(), code)).rx -
                         (char *)code);
        if (backends[b] == CODE_CACHE_DUAL_MAP) {
            /* sljit_set_const: rewrite the immediate through the writable pointer, then make it
             * executable again: with two views, the write lands at once and is published. */
            int value = 99;
            exec_update_wx_flags(code + 1, code + 5, 0);
            memcpy(code + 1, &value, 4);
            exec_update_wx_flags(code + 1, code + 5, 1);
            cr_assert_eq(fn(), 99);
            cr_assert_neq((void *)code, (void *)fn, "two views");
        }
        /* sljit_free_code hands back the pointer it was given. */
        exec_free(code, NULL);
        cr_assert_null(code_cache_find(exec_allocator_cache(), code));
        exec_allocator_fini();
    }
}

Test(exec_allocator, asmjit_alloc_query_release_by_the_rx_address)
{
    for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
        struct code_cache_options opts = {.size = 1 << 20, .flags = backends[b]};
        cr_assert_eq(exec_allocator_init(&opts), 0);
        void *rx[16], *rw[16];
        for (int i = 0; i < 16; i++) {
            cr_assert_eq(jit_alloc(100, &rx[i], &rw[i]), 0);
            write_return(rw[i], i);
            exec_update_wx_flags(rw[i], (char *)rw[i] + 6, 1);
        }
        for (int i = 0; i < 16; i++) {
            void *w;
            size_t size;
            cr_assert_eq(jit_query(rx[i], &w, &size), 0);
            cr_assert_eq(w, rw[i]);
            cr_assert_geq(size, 100);
            cr_assert_eq(((jit_fn)rx[i])(), i);
        }
        for (int i = 0; i < 16; i += 2)
            cr_assert_eq(jit_release(rx[i]), 0);
        for (int i = 1; i < 16; i += 2)
            cr_assert_eq(((jit_fn)rx[i])(), i, "neighbours of freed blocks still run");
        errno = 0;
        cr_assert_eq(jit_release(rx[0]), -1, "released twice");
        cr_assert_eq(errno, EINVAL);
        exec_allocator_fini();
    }
}
