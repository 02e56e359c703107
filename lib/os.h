/*
 * os.c: every system call the library makes for a cache, in one small layer at the bottom, so
 * that tests can interpose on exactly these libc functions (mmap, munmap, mprotect, madvise,
 * memfd_create, open, ftruncate, fcntl, fallocate, close) and make any one of them fail.
 */
#ifndef CODE_CACHE_OS_H
#define CODE_CACHE_OS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

extern size_t os_page_size; /* set by os_init */
void os_init(void);         /* idempotent, thread-safe */

/* Reserves len bytes of PROT_NONE, MAP_NORESERVE address space at hint. With noreplace the
 * kernel is asked for MAP_FIXED_NOREPLACE; the caller must still compare the returned address
 * (kernels before 4.17, valgrind and emulators treat the flag as a hint). NULL + errno. */
void *os_reserve(void *hint, size_t len, bool noreplace);
int os_release(void *addr, size_t len); /* munmap: 0 or -1 + errno */
/* Replaces [addr, addr + len), a part of one of our reservations, with fresh PROT_NONE,
 * MAP_NORESERVE address space (MAP_FIXED): 0 or -1 + errno. */
int os_rereserve(void *addr, size_t len);
int os_protect(void *addr, size_t len, int prot); /* mprotect: 0 or -1 + errno */
int os_discard(void *addr, size_t len);           /* madvise(MADV_DONTNEED): 0 or -1 + errno */
/* Takes the first-write faults of [addr, addr+len) in one call (MADV_POPULATE_WRITE, Linux 5.14).
 * Returns 0, or -1 + errno; EINVAL means the kernel does not know the advice (harmless). */
int os_populate(void *addr, size_t len);
int os_dontfork(void *addr, size_t len); /* madvise(MADV_DONTFORK): 0 or -1 + errno */

/* The shared file of the dual-mapped backend. */
int os_memfd(bool exec_flag);    /* memfd_create, MFD_CLOEXEC | MFD_ALLOW_SEALING (| MFD_EXEC) */
int os_tmpfile(const char *dir); /* open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC): fd or -1 */
int os_truncate(int fd, size_t len); /* ftruncate: 0 or -1 + errno */
int os_seal_shrink(int fd);          /* fcntl(F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) */
int os_allocate(int fd, size_t off, size_t len); /* fallocate(0): 0 or -1 + errno */
int os_punch(int fd, size_t off, size_t len);    /* fallocate(PUNCH_HOLE | KEEP_SIZE) */
void os_close(int fd);
/* Maps [off, off + len) of fd, MAP_SHARED, with prot: at exactly addr (MAP_FIXED, over a
 * reservation of ours) when fixed, else anywhere. NULL + errno. */
void *os_map_file(void *addr, size_t len, int prot, int fd, size_t off, bool fixed);
/* The same at exactly addr, with the page tables filled in the same call (MAP_POPULATE): the
 * pages are in the file already, and the first call into each would otherwise fault. */
void *os_map_file_populated(void *addr, size_t len, int prot, int fd, size_t off);

/* A random 64-bit value (getrandom, or the clock when it is not available). */
uint64_t os_random(void);

static inline uintptr_t align_up(uintptr_t x, uintptr_t a)
{
    return (x + a - 1) & ~(a - 1);
}
static inline uintptr_t align_down(uintptr_t x, uintptr_t a)
{
    return x & ~(a - 1);
}

#endif
