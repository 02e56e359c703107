/*
 * System call failure injection for the tests. A program that links tests/fault.c defines mmap,
 * munmap, mprotect and madvise itself (test programs are linked with -rdynamic, so the library's
 * calls bind to these); calls made from inside libcodecache are counted and can be made to fail,
 * every other call (jemalloc, Criterion, libc) goes straight to the kernel.
 */
#ifndef CODE_CACHE_TEST_FAULT_H
#define CODE_CACHE_TEST_FAULT_H

enum fault_call { FAULT_MMAP, FAULT_MUNMAP, FAULT_MPROTECT, FAULT_MADVISE, FAULT_KINDS };

/* Matches any protection or advice. */
#define FAULT_ANY (-1)

/*
 * From now on, the nth call of the given kind made by libcodecache whose protection (mprotect)
 * or advice (madvise) equals arg, or any with FAULT_ANY, fails with err; nth == 0 makes every
 * such call fail. Replaces the previous injection and restarts the counts.
 */
void fault_inject(enum fault_call call, int arg, unsigned nth, int err);

/* No more failures; counts restart. */
void fault_clear(void);

/* Calls of that kind made by libcodecache since the last fault_inject or fault_clear. */
unsigned fault_calls(enum fault_call call);

/* How many calls were made to fail since the last fault_inject or fault_clear. */
unsigned fault_failures(void);

#endif
