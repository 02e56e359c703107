/*
 * The operating system, at the bottom: every call that changes the address space goes through
 * here (LuaJIT's mcode_alloc_at / mcode_setprot layer). These are plain calls to the libc
 * functions, so a test program can interpose on mmap, munmap, mprotect and madvise and make any
 * one of them fail; no fault-injection hook is compiled into the library.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

size_t os_page_size;

static pthread_once_t os_once = PTHREAD_ONCE_INIT;

static void os_init_once(void)
{
    long page = sysconf(_SC_PAGESIZE);
    os_page_size = page > 0 ? (size_t)page : 4096;
}

void os_init(void)
{
    pthread_once(&os_once, os_init_once);
}

void *os_reserve(void *hint, size_t len, bool noreplace)
{
    /* MAP_NORESERVE: a reservation is address space only; memory is committed chunk by chunk,
     * so a 2 GiB cache must not count against the overcommit limit up front. */
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    if (noreplace)
        flags |= MAP_FIXED_NOREPLACE;
    void *p = mmap(hint, len, PROT_NONE, flags, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

int os_release(void *addr, size_t len)
{
    return munmap(addr, len);
}

int os_protect(void *addr, size_t len, int prot)
{
    return mprotect(addr, len, prot);
}

int os_discard(void *addr, size_t len)
{
    return madvise(addr, len, MADV_DONTNEED);
}

int os_populate(void *addr, size_t len)
{
    return madvise(addr, len, MADV_POPULATE_WRITE);
}
