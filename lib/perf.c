/*
 * perf's two ways of naming JIT code, one file each per process.
 *
 * The perf map, /tmp/perf-<pid>.map: a text line "START SIZE name" (hexadecimal, no 0x) per
 * function, which perf report reads when it meets a sample in an anonymous executable mapping
 * (tools/perf/Documentation/jit-interface.txt). It is read whole, after the run, without times:
 * a line cannot be taken back, so once a freed span holds new code, both names cover its
 * addresses and perf picks one of them for every sample there. Freed spans are reused late (the
 * cache bumps through never-used space first), which keeps that rare, not impossible; jitdump
 * has the times to tell them apart. perf looks for the map only for anonymous memory: the dual
 * backend's code runs in a mapping of its file, which perf never looks up in the map.
 *
 * jitdump, jit-<pid>.dump (tools/perf/Documentation/jitdump-specification.txt): a header, then
 * a JIT_CODE_LOAD record per function with its address, name and code bytes, each stamped with
 * CLOCK_MONOTONIC. The program maps the file executable once (the "marker"): perf record logs
 * that mapping, and perf inject --jit finds the file through it, writes an ELF file per record
 * and inserts a mapping of it at the record's time. Samples are matched to mappings by time, so a
 * span reused for new code gets the new name from its new record on: the format has no unload
 * record, and needs none as long as perf record uses the same clock (-k 1). JIT_CODE_MOVE is for
 * code that moves, which ours never does; JIT_CODE_CLOSE ends the file when the process exits.
 *
 * Every line and record is written with one writev(2) on a file opened with O_APPEND, so the
 * lines of concurrent threads never interleave, and no lock is held while writing. The files
 * are created at the first name announced, never before. A child of fork() writes its own.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "debuginfo.h"

#if defined(__x86_64__)
#define PERF_ELF_MACHINE EM_X86_64
#elif defined(__aarch64__)
#define PERF_ELF_MACHINE EM_AARCH64
#else
#define PERF_ELF_MACHINE EM_NONE
#endif

/* The jitdump format (all fields in the machine's byte order). */
#define JITDUMP_MAGIC   0x4A695444u /* "JiTD" */
#define JITDUMP_VERSION 1
enum { JIT_CODE_LOAD = 0, JIT_CODE_MOVE = 1, JIT_CODE_DEBUG_INFO = 2, JIT_CODE_CLOSE = 3 };

struct jitdump_header {
    uint32_t magic;
    uint32_t version;
    uint32_t total_size; /* of this header */
    uint32_t elf_mach;
    uint32_t pad1;
    uint32_t pid;
    uint64_t timestamp;
    uint64_t flags;
};

struct jitdump_record {
    uint32_t id;
    uint32_t total_size; /* of the record, this prefix included */
    uint64_t timestamp;
};

/* Followed by the name (NUL included), then the code bytes, which perf finds at the end of the
 * record: nothing may come after them. */
struct jitdump_load {
    struct jitdump_record p;
    uint32_t pid;
    uint32_t tid;
    uint64_t vma;
    uint64_t code_addr;
    uint64_t code_size;
    uint64_t code_index;
};

/* One per process. The descriptors are written once under the lock and read without it. */
static pthread_mutex_t perf_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t perf_atfork_once = PTHREAD_ONCE_INIT;
static int map_fd = -1, dump_fd = -1;
static bool map_tried, dump_tried;
static void *dump_marker;
static size_t dump_marker_size;
static uint64_t dump_index;

static uint64_t perf_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A child has another pid, so other files: it opens its own at its first name. The parent's
 * descriptors are closed in the child; the lock is held across fork so that it is free there. */
static void perf_before_fork(void)
{
    pthread_mutex_lock(&perf_lock);
}

static void perf_after_fork(void)
{
    pthread_mutex_unlock(&perf_lock);
}

static void perf_in_child(void)
{
    if (map_fd >= 0)
        close(map_fd);
    if (dump_fd >= 0)
        close(dump_fd);
    if (dump_marker != NULL)
        munmap(dump_marker, dump_marker_size);
    map_fd = dump_fd = -1;
    map_tried = dump_tried = false;
    dump_marker = NULL;
    pthread_mutex_unlock(&perf_lock);
}

static void perf_register_atfork(void)
{
    pthread_atfork(perf_before_fork, perf_after_fork, perf_in_child);
}

void perf_watch_fork(void)
{
    pthread_once(&perf_atfork_once, perf_register_atfork);
}

/* The whole buffer list, in one call; a short write (a full disk) is given up, not retried: a
 * retry would interleave with other threads' lines. */
static void perf_write(int fd, const struct iovec *iov, int n, const char *what)
{
    ssize_t want = 0;
    for (int i = 0; i < n; i++)
        want += (ssize_t)iov[i].iov_len;
    ssize_t done = writev(fd, iov, n);
    if (done != want)
        debug_log("perf: writing %s failed (%zd of %zd bytes, errno %d)", what, done, want, errno);
}

/* ---- The perf map ---- */

static int map_open(void)
{
    int fd = __atomic_load_n(&map_fd, __ATOMIC_ACQUIRE);
    if (fd >= 0 || __atomic_load_n(&map_tried, __ATOMIC_ACQUIRE))
        return fd;
    perf_watch_fork();
    pthread_mutex_lock(&perf_lock);
    if (!map_tried) {
        char path[64];
        snprintf(path, sizeof path, "/tmp/perf-%ld.map", (long)getpid());
        /* Appended to, never truncated: another JIT of this process (a JavaScript engine, say)
         * may be writing its own lines into the same file. O_NOFOLLOW: /tmp is everyone's. */
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0)
            debug_log("perf: cannot open %s (errno %d): no perf map", path, errno);
        __atomic_store_n(&map_fd, fd, __ATOMIC_RELEASE);
        __atomic_store_n(&map_tried, true, __ATOMIC_RELEASE);
    }
    fd = map_fd;
    pthread_mutex_unlock(&perf_lock);
    return fd;
}

void perf_map_announce(uintptr_t start, size_t size, const char *name, size_t len)
{
    int saved = errno;
    int fd = map_open();
    if (fd >= 0) {
        char head[48];
        int n = snprintf(head, sizeof head, "%lx %zx ", (unsigned long)start, size);
        struct iovec iov[3] = {
            {head, (size_t)n}, {(void *)(uintptr_t)name, len}, {(void *)(uintptr_t) "\n", 1}};
        perf_write(fd, iov, 3, "the perf map");
    }
    errno = saved;
}

/* ---- jitdump ---- */

/* $JITDUMPDIR, as perf's own Java agent reads it, else the current directory, as V8 and wasmtime
 * do: perf inject writes an ELF file per function next to the dump, and /tmp is shared. */
static int dump_create(char *path, size_t cap)
{
    const char *dir = getenv("JITDUMPDIR");
    if (dir == NULL || *dir == '\0')
        dir = ".";
    if ((size_t)snprintf(path, cap, "%s/jit-%ld.dump", dir, (long)getpid()) >= cap) {
        errno = ENAMETOOLONG;
        return -1;
    }
    /* Truncated: a file of that name is a dead process's with the same pid. The code it holds
     * is the program's, so it is not for every user to read. */
    return open(path, O_RDWR | O_APPEND | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
}

/* The header, then the marker: perf records executable mappings only, and looks for
 * jit-<pid>.dump among them. The marker stays until exit, since perf may start recording at any
 * time. 0, or -1 + errno (EPERM for a directory on a noexec mount). */
static int dump_start(int fd)
{
    struct jitdump_header h = {
        .magic = JITDUMP_MAGIC,
        .version = JITDUMP_VERSION,
        .total_size = sizeof h,
        .elf_mach = PERF_ELF_MACHINE,
        .pid = (uint32_t)getpid(),
        .timestamp = perf_now(),
    };
    if (write(fd, &h, sizeof h) != (ssize_t)sizeof h)
        return -1;
    long page = sysconf(_SC_PAGESIZE);
    void *marker = mmap(NULL, (size_t)page, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
    if (marker == MAP_FAILED)
        return -1;
    dump_marker = marker;
    dump_marker_size = (size_t)page;
    return 0;
}

static int dump_open(void)
{
    int fd = __atomic_load_n(&dump_fd, __ATOMIC_ACQUIRE);
    if (fd >= 0 || __atomic_load_n(&dump_tried, __ATOMIC_ACQUIRE))
        return fd;
    perf_watch_fork();
    pthread_mutex_lock(&perf_lock);
    if (!dump_tried) {
        char path[PATH_MAX];
        fd = dump_create(path, sizeof path);
        if (fd >= 0 && dump_start(fd) != 0) {
            /* A dump perf cannot find is of no use: leave nothing behind. */
            int saved = errno;
            close(fd);
            unlink(path);
            fd = -1;
            errno = saved;
        }
        if (fd < 0)
            debug_log("perf: cannot create %s (errno %d): no jitdump", path, errno);
        __atomic_store_n(&dump_fd, fd, __ATOMIC_RELEASE);
        __atomic_store_n(&dump_tried, true, __ATOMIC_RELEASE);
    }
    fd = dump_fd;
    pthread_mutex_unlock(&perf_lock);
    return fd;
}

void perf_jitdump_announce(uintptr_t start, size_t size, const char *name, size_t len)
{
    int saved = errno;
    int fd = dump_open();
    if (fd < 0 || size > UINT32_MAX - sizeof(struct jitdump_load) - len - 1) {
        errno = saved;
        return;
    }
    struct jitdump_load r = {
        .p = {.id = JIT_CODE_LOAD,
              .total_size = (uint32_t)(sizeof r + len + 1 + size),
              .timestamp = perf_now()},
        .pid = (uint32_t)getpid(),
        .tid = (uint32_t)syscall(SYS_gettid), /* gettid() needs glibc 2.30 */
        .vma = start,
        .code_addr = start,
        .code_size = size,
        .code_index = __atomic_fetch_add(&dump_index, 1, __ATOMIC_RELAXED),
    };
    /* The code is read where it runs: the RX view, readable in both backends. */
    struct iovec iov[3] = {
        {&r, sizeof r}, {(void *)(uintptr_t)name, len + 1}, {(void *)start, size}};
    perf_write(fd, iov, 3, "the jitdump");
    errno = saved;
}

/* The end of the JIT runtime: at exit, or when the library is unloaded. */
__attribute__((destructor)) static void perf_close(void)
{
    if (dump_fd < 0)
        return;
    struct jitdump_record r = {
        .id = JIT_CODE_CLOSE, .total_size = sizeof r, .timestamp = perf_now()};
    struct iovec iov = {&r, sizeof r};
    perf_write(dump_fd, &iov, 1, "the jitdump");
}
