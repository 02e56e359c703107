/*
 * The operating system, at the bottom: every call that changes the address space or the shared
 * file goes through here (LuaJIT's mcode_alloc_at / mcode_setprot layer). These are plain calls
 * to the libc functions, so a test program can interpose on mmap, munmap, mprotect, madvise,
 * memfd_create, open, ftruncate, fcntl and fallocate and make any one of them fail; no
 * fault-injection hook is compiled into the library.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "os.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MFD_EXEC
#define MFD_EXEC 0x0010u
#endif
#ifndef F_ADD_SEALS
#define F_ADD_SEALS   1033
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW   0x0004
#endif

size_t os_page_size;

static pthread_once_t os_once = PTHREAD_ONCE_INIT;

static void os_init_once(void)
{
    /* The running kernel's page size: 4 KiB on x86-64, 4, 16 or 64 KiB on aarch64. Nothing in
     * the library assumes one; glibc's sysconf reads it from the auxiliary vector. */
    long page = sysconf(_SC_PAGESIZE);
    os_page_size = page > 0 ? (size_t)page : (size_t)getauxval(AT_PAGESZ);
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

int os_rereserve(void *addr, size_t len)
{
    void *p =
        mmap(addr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    return p == MAP_FAILED ? -1 : 0;
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

int os_dontfork(void *addr, size_t len)
{
    return madvise(addr, len, MADV_DONTFORK);
}

int os_memfd(bool exec_flag)
{
    /* MFD_EXEC (Linux 6.3) says in so many words that the file is for code: where
     * vm.memfd_noexec defaults new memfds to non-executable, it is what keeps PROT_EXEC
     * possible. Older kernels refuse the unknown flag with EINVAL; the caller retries without. */
    return memfd_create("codecache", MFD_CLOEXEC | MFD_ALLOW_SEALING | (exec_flag ? MFD_EXEC : 0));
}

int os_tmpfile(const char *dir)
{
    return open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
}

int os_truncate(int fd, size_t len)
{
    return ftruncate(fd, (off_t)len);
}

int os_seal_shrink(int fd)
{
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
}

int os_allocate(int fd, size_t off, size_t len)
{
    return fallocate(fd, 0, (off_t)off, (off_t)len);
}

int os_punch(int fd, size_t off, size_t len)
{
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len);
}

void os_close(int fd)
{
    close(fd);
}

void *os_map_file(void *addr, size_t len, int prot, int fd, size_t off, bool fixed)
{
    void *p = mmap(addr, len, prot, MAP_SHARED | (fixed ? MAP_FIXED : 0), fd, (off_t)off);
    return p == MAP_FAILED ? NULL : p;
}

void *os_map_file_populated(void *addr, size_t len, int prot, int fd, size_t off)
{
    void *p = mmap(addr, len, prot, MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd, (off_t)off);
    return p == MAP_FAILED ? NULL : p;
}

uint64_t os_random(void)
{
    uint64_t r;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) == (ssize_t)sizeof r)
        return r;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)(uintptr_t)&ts;
}
