/*
 * Proof that `make check` catches memcheck errors: this program reads freed memory and leaks,
 * on purpose, in tests that Criterion itself sees passing. It is listed in XFAIL_TESTS: the run
 * must fail. If the harness ever stops noticing memcheck errors, this test passes, automake
 * reports XPASS, and `make check` fails.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

/* Volatile so the compiler keeps the accesses we want memcheck to see. */
static volatile int sink;

Test(harness_bites, reads_freed_memory)
{
    int *p = malloc(16 * sizeof *p);
    cr_assert_not_null(p);
    memset(p, 0, 16 * sizeof *p);
    /* Through a volatile copy, so the compiler neither warns about nor drops the access. */
    int *volatile stale = p;
    free(p);
    sink = stale[3]; /* invalid read: memcheck must report it */
    cr_assert(true, "Criterion sees this test pass; only memcheck can fail it");
}

Test(harness_bites, leaks_a_block)
{
    char *p = malloc(4096);
    cr_assert_not_null(p);
    memset(p, 'x', 4096);
    sink = p[100];
    p = NULL; /* definitely lost when the worker exits */
    cr_assert(true);
}
