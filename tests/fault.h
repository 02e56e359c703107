/*
 * System call failure injection for the tests. A program that links tests/fault.c defines mmap,
 * munmap, mprotect, madvise, memfd_create, open, ftruncate, fcntl and fallocate itself (test
 * programs are linked with -rdynamic, so the library's calls bind to these); calls made from
 * inside libcodecache are counted and can be made to fail, every other call (jemalloc, Criterion,
 * libc, the test itself) goes straight to the kernel.
 */
#ifndef CODE_CACHE_TEST_FAULT_H
#define CODE_CACHE_TEST_FAULT_H

/* What arg of fault_inject is compared with, for each kind of call. */
enum fault_call {
    FAULT_MMAP,         /* the protection, exactly */
    FAULT_MUNMAP,       /* nothing: use FAULT_ANY */
    FAULT_MPROTECT,     /* the protection, exactly */
    FAULT_MADVISE,      /* the advice, exactly */
    FAULT_MEMFD_CREATE, /* flags: the call matches when it asks for every bit of arg (0: all) */
    FAULT_OPEN,         /* flags: the call matches when it asks for every bit of arg (O_TMPFILE) */
    FAULT_FTRUNCATE,    /* nothing: use FAULT_ANY */
    FAULT_FCNTL,        /* the command, exactly (F_ADD_SEALS) */
    FAULT_FALLOCATE,    /* the mode, exactly */
    FAULT_KINDS
};

/* Matches any protection, advice, flags, command or mode. */
#define FAULT_ANY (-1)

/*
 * From now on, the nth call of the given kind made by libcodecache whose argument matches arg (see
 * above), or any with FAULT_ANY, fails with err; nth == 0 makes every such call fail. Replaces the
 * previous injection and restarts the counts.
 */
void fault_inject(enum fault_call call, int arg, unsigned nth, int err);

/* And also, from now on, the nth call matching this rule (counted by this rule alone) fails
 * with err; the earlier rules stay. A call is judged by the first rule that matches it. */
void fault_also(enum fault_call call, int arg, unsigned nth, int err);

/* No more failures; counts restart. */
void fault_clear(void);

/* Calls of that kind made by libcodecache since the last fault_inject or fault_clear. */
unsigned fault_calls(enum fault_call call);

/* The same, counting only the calls whose argument matches arg (as for fault_inject). */
unsigned fault_calls_with(enum fault_call call, int arg);

/* How many calls were made to fail since the last fault_inject or fault_clear. */
unsigned fault_failures(void);

/* The name of a kind of call, for messages: "mmap", "memfd_create"... */
const char *fault_name(enum fault_call call);

/* Calls of mmap or mprotect from the library that asked for a writable and executable mapping,
 * since the process started: never expected to be anything but 0. */
unsigned fault_wx_requests(void);

/* Asserts that nothing the library mapped at an address of its choosing (mmap without MAP_FIXED)
 * since the last fault_inject or fault_clear is still mapped: after a failed create, a destroy. */
void fault_expect_nothing_left_mapped(const char *what);

#endif
