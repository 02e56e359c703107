/*
 * What the process itself rules out for a cache, read once per process: below vm.mmap_min_addr
 * the kernel refuses every mapping, and the room the main thread's stack may still grow into must
 * stay free. Also CODE_CACHE_NO_RANDOM, the switch to reproducible placement. None of it changes
 * during the life of a process.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "addrspace.h"
#include "arch.h"
#include "maps.h"
#include "os.h"

/* vm.mmap_min_addr when /proc/sys cannot be read: the kernel's usual default. */
#define ADDRSPACE_DEFAULT_MIN_ADDR 65536

/*
 * The main thread's stack grows down from its top, up to RLIMIT_STACK. A cache placed in that
 * room would cap the growth and turn a deep recursion into a crash, so the room counts as taken,
 * for the probes and the scan alike. The kernel itself keeps at least 128 MiB below the stack
 * free for this reason (the gap under its mmap_base), so counting that much takes nothing anyone
 * else would get; more than 1 GiB (an unlimited stack, say) would forbid half a window for a
 * stack that never grows that deep. The kernel's guard gap (stack_guard_gap, 1 MiB by default)
 * comes on top.
 */
#define ADDRSPACE_STACK_ROOM_MIN ((size_t)128 << 20)
#define ADDRSPACE_STACK_ROOM_MAX ((size_t)1 << 30)
#define ADDRSPACE_STACK_GUARD    ((size_t)1 << 20)

static pthread_once_t addrspace_once = PTHREAD_ONCE_INIT;
static struct addrspace_limits limits;

/* The decimal number at p; false when there is none or it does not fit. */
static bool addrspace_parse_decimal(const char *p, uintptr_t *out)
{
    uintptr_t value = 0;
    if (*p < '0' || *p > '9')
        return false;
    for (; *p >= '0' && *p <= '9'; p++) {
        uintptr_t digit = (uintptr_t)(*p - '0');
        if (value > (UINTPTR_MAX - digit) / 10)
            return false;
        value = value * 10 + digit;
    }
    *out = value;
    return true;
}

/* The start of a small /proc file, NUL-terminated; false when it cannot be read. */
static bool addrspace_read_proc(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    return true;
}

/* The top of the main thread's stack: field 28 (startstack) of /proc/self/stat, which is the
 * same for every thread and never moves. 0 when unknown. */
static uintptr_t addrspace_stack_top(void)
{
    char buf[1024];
    if (!addrspace_read_proc("/proc/self/stat", buf, sizeof buf))
        return 0;
    /* Field 2, the command name in parentheses, may itself hold spaces and parentheses: count
     * the fields from the last ')'. */
    const char *p = strrchr(buf, ')');
    for (int field = 2; p != NULL && field < 28; field++)
        p = strchr(p + 1, ' ');
    uintptr_t top;
    return p != NULL && addrspace_parse_decimal(p + 1, &top) ? top : 0;
}

/*
 * The end of the mapping just below the one holding addr (the main thread's stack), or 0 when
 * unknown. The stack can never grow past that mapping, so the address space below it is no room
 * of the stack's. On a kernel's own layout that mapping lies far below (the stack sits under the
 * top, the mmap area starts at least 128 MiB lower), and this changes nothing. qemu-user gives its
 * guest a stack of a fixed size (RLIMIT_STACK) right above the program, its heap and its
 * libraries: counting the room there as the stack's would leave nothing free near the program's
 * own functions. One pass over /proc/self/maps (maps.c), through a buffer on the stack: no cache,
 * so no arena, exists yet.
 */
static uintptr_t addrspace_below_mapping_of(uintptr_t addr)
{
    char buf[8192];
    struct maps maps;
    if (maps_open_buffer(&maps, buf, sizeof buf) != 0)
        return 0;
    uintptr_t lo, hi, prev_hi = 0, found = 0;
    while (maps_next_mapping(&maps, &lo, &hi)) {
        if (lo <= addr && addr < hi) {
            found = prev_hi;
            break;
        }
        prev_hi = hi;
    }
    maps_close(&maps);
    return found;
}

/* What does not change during the life of the process, read once: vm.mmap_min_addr (the kernel
 * refuses anything below it with EPERM), the stack's room, and CODE_CACHE_NO_RANDOM. Address 0
 * is never a candidate even where mmap_min_addr is 0: a mapping at NULL would read as failure. */
static void addrspace_init(void)
{
    char buf[32];
    uintptr_t min_addr;
    if (!addrspace_read_proc("/proc/sys/vm/mmap_min_addr", buf, sizeof buf) ||
        !addrspace_parse_decimal(buf, &min_addr) || min_addr > arch_user_top)
        min_addr = ADDRSPACE_DEFAULT_MIN_ADDR;
    if (min_addr < os_page_size)
        min_addr = os_page_size;
    limits.floor = align_up(min_addr, os_page_size);

    uintptr_t top = addrspace_stack_top();
    if (top != 0 && top < arch_user_top) {
        size_t room = ADDRSPACE_STACK_ROOM_MIN;
        struct rlimit rl;
        if (getrlimit(RLIMIT_STACK, &rl) == 0) {
            if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > ADDRSPACE_STACK_ROOM_MAX)
                room = ADDRSPACE_STACK_ROOM_MAX;
            else if (rl.rlim_cur > room)
                room = (size_t)rl.rlim_cur;
        }
        room += ADDRSPACE_STACK_GUARD;
        limits.stack_lo = top > room ? align_down(top - room, os_page_size) : 0;
        limits.stack_hi = align_up(top, os_page_size);
        uintptr_t below = addrspace_below_mapping_of(top - 1);
        if (below > limits.stack_lo && below < limits.stack_hi)
            limits.stack_lo = align_up(below, os_page_size);
    }

    const char *v = getenv("CODE_CACHE_NO_RANDOM");
    limits.nearest = v != NULL && *v != '\0' && strcmp(v, "0") != 0;
}

const struct addrspace_limits *addrspace_limits(void)
{
    pthread_once(&addrspace_once, addrspace_init);
    return &limits;
}
