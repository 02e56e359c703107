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

/* No more failures; counts restart. */
void fault_clear(void);

/* Calls of that kind made by libcodecache since the last fault_inject or fault_clear. */
unsigned fault_calls(enum fault_call call);

/* How many calls were made to fail since the last fault_inject or fault_clear. */
unsigned fault_failures(void);

/* The name of a kind of call, for messages: "mmap", "memfd_create"... */
const char *fault_name(enum fault_call call);

#endif
