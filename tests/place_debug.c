/*
 * CODE_CACHE_DEBUG=1: placement explains itself on standard error (the window, what the scan
 * saw, the result or why it failed). The library reads the variable once per process, so this
 * program sets it before anything runs, and each test captures standard error in a file.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "place_helpers.h"

__attribute__((constructor)) static void enable_debug(void)
{
    setenv("CODE_CACHE_DEBUG", "1", 1);
}

static __attribute__((noinline, used)) int place_debug_helper(int x)
{
    return x - 1;
}

struct capture {
    FILE *file;
    int saved_fd;
};

static struct capture capture_begin(void)
{
    struct capture c = {tmpfile(), dup(STDERR_FILENO)};
    cr_assert(c.file != NULL && c.saved_fd >= 0);
    fflush(stderr);
    cr_assert(dup2(fileno(c.file), STDERR_FILENO) >= 0);
    return c;
}

/* Restores standard error and returns what was written meanwhile (malloc'ed). */
static char *capture_end(struct capture c)
{
    fflush(stderr);
    dup2(c.saved_fd, STDERR_FILENO);
    close(c.saved_fd);
    long len = ftell(c.file);
    cr_assert(len >= 0);
    char *text = calloc(1, (size_t)len + 1);
    cr_assert_not_null(text);
    rewind(c.file);
    cr_assert_eq(fread(text, 1, (size_t)len, c.file), (size_t)len);
    fclose(c.file);
    return text;
}

Test(place_debug, a_placement_reports_its_window_and_result)
{
    struct capture c = capture_begin();
    struct code_cache_options opts = {.near = (const void *)place_debug_helper, .size = 1 * MiB};
    struct code_cache *cache = code_cache_create(&opts);
    char *text = capture_end(c);
    cr_assert_not_null(cache, "errno %d", errno);

    struct test_region r = test_cache_region(cache);
    uintptr_t t = (uintptr_t)place_debug_helper;
    char expected[128];
    snprintf(expected, sizeof expected, "near [%#lx, %#lx), reach %#zx: window [", (unsigned long)t,
             (unsigned long)(t + 1), TEST_CALL_REACH);
    cr_assert(strstr(text, expected) != NULL, "no window line like \"%s\" in:\n%s", expected, text);
    snprintf(expected, sizeof expected, "claimed [%#lx, %#lx)", (unsigned long)r.lo,
             (unsigned long)r.hi);
    cr_assert(strstr(text, expected) != NULL, "no result line like \"%s\" in:\n%s", expected, text);
    cr_assert(strstr(text, "attempt") != NULL);
    free(text);
    code_cache_destroy(cache);
}

Test(place_debug, an_impossible_window_says_why)
{
    struct capture c = capture_begin();
    struct code_cache_options opts = {.near = (const void *)0xffffffffff600000, .size = 1 * MiB};
    struct code_cache *cache = code_cache_create(&opts);
    int err = errno;
    char *text = capture_end(c);
    cr_assert_null(cache);
    cr_assert_eq(err, ERANGE);
    cr_assert(strstr(text, "ERANGE") != NULL, "no reason in:\n%s", text);
    free(text);
}

Test(place_debug, a_full_window_reports_the_scan_and_enomem)
{
    const size_t reach = 16 * MiB;
    uintptr_t area = test_free_area(4 * reach);
    struct test_crowd crowd = {0};
    test_crowd_fill(&crowd, area + reach / 2, area + 4 * reach - reach / 2);
    struct capture c = capture_begin();
    struct code_cache_options opts = {
        .near = (const void *)(area + 2 * reach), .size = 1 * MiB, .reach = reach};
    struct code_cache *cache = code_cache_create(&opts);
    int err = errno;
    char *text = capture_end(c);
    test_crowd_release(&crowd);
    cr_assert_null(cache);
    cr_assert_eq(err, ENOMEM);
    cr_assert(strstr(text, "place: scan: ") != NULL && strstr(text, "none fits") != NULL,
              "no scan line in:\n%s", text);
    cr_assert(strstr(text, "no free gap within reach") != NULL, "no reason in:\n%s", text);
    free(text);
}
