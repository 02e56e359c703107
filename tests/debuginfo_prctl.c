/*
 * The reservation is named for /proc/PID/maps with prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME):
 * [anon:codecache] on kernels built with CONFIG_ANON_VMA_NAME. The kernels of these machines are
 * not (EINVAL), so this program defines prctl itself: it records the library's calls, answers
 * them as such a kernel would, and passes everyone else's to the C library.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>

#include "helpers.h"

#ifndef PR_SET_VMA
#define PR_SET_VMA           0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif

static struct {
    int calls;
    int option;
    unsigned long arg2, arg3, arg4;
    char name[64];
} seen;
static int answer_errno; /* what the kernel says: 0 (named) or EINVAL (not built with it) */

int prctl(int option, ...)
{
    va_list ap;
    va_start(ap, option);
    unsigned long a2 = va_arg(ap, unsigned long), a3 = va_arg(ap, unsigned long);
    unsigned long a4 = va_arg(ap, unsigned long), a5 = va_arg(ap, unsigned long);
    va_end(ap);
    if (test_called_from_library(__builtin_return_address(0))) {
        seen.calls++;
        seen.option = option;
        seen.arg2 = a2;
        seen.arg3 = a3;
        seen.arg4 = a4;
        snprintf(seen.name, sizeof seen.name, "%s", a5 ? (const char *)a5 : "(null)");
        if (answer_errno != 0) {
            errno = answer_errno;
            return -1;
        }
        return 0;
    }
    int (*real)(int, ...) = (int (*)(int, ...))dlsym(RTLD_NEXT, "prctl");
    return real(option, a2, a3, a4, a5);
}

static void check_named(const struct code_cache *cache)
{
    struct code_cache_stats st;
    code_cache_get_stats(cache, &st);
    cr_assert_eq(seen.calls, 1, "prctl called %d times", seen.calls);
    cr_assert_eq(seen.option, PR_SET_VMA);
    cr_assert_eq(seen.arg2, PR_SET_VMA_ANON_NAME);
    /* The whole reservation, guard pages included. */
    cr_assert_eq(seen.arg3, st.base - test_page_size(), "start %#lx, base %#lx", seen.arg3,
                 (unsigned long)st.base);
    cr_assert_eq(seen.arg4, st.reserved + 2 * test_page_size());
    cr_assert_str_eq(seen.name, "codecache");
}

Test(prctl, names_the_reservation_of_either_backend)
{
    static const unsigned backends[] = {0, CODE_CACHE_DUAL_MAP};
    for (size_t b = 0; b < 2; b++) {
        memset(&seen, 0, sizeof seen);
        answer_errno = 0;
        struct code_cache_options opts = {.size = 16 * test_page_size(), .flags = backends[b]};
        struct code_cache *cache = code_cache_create(&opts);
        cr_assert_not_null(cache, "%s", strerror(errno));
        check_named(cache);
        code_cache_destroy(cache);
    }
}

Test(prctl, a_kernel_without_names_changes_nothing)
{
    memset(&seen, 0, sizeof seen);
    answer_errno = EINVAL;
    struct code_cache *cache = test_cache_near_helper(16 * test_page_size());
    check_named(cache);
    struct code_chunk *chunk = code_cache_alloc(cache, 64);
    cr_assert_not_null(chunk);
    jit_fn fn = emit_call(chunk, helper_triple, 5);
    cr_assert_eq(code_chunk_seal(chunk), 0);
    cr_assert_eq(fn(), 16);
    code_cache_destroy(cache);
}
