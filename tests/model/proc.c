/*
 * What the kernel and jemalloc say about this process (see proc.h).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proc.h"

/* The whole of a /proc file, NUL-terminated, in a malloc'd buffer; NULL + errno. */
static char *proc_read_file(const char *path, size_t *length)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (buf == NULL)
            break;
        if (cap - len < 8192) {
            char *bigger = realloc(buf, cap * 2);
            if (bigger == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int saved = errno;
            free(buf);
            buf = NULL;
            errno = saved;
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    int saved = errno;
    close(fd);
    errno = saved;
    if (buf == NULL)
        return NULL;
    buf[len] = '\0';
    if (length != NULL)
        *length = len;
    return buf;
}

static uint64_t proc_hex(const char **pos)
{
    uint64_t v = 0;
    const char *p = *pos;
    for (;; p++) {
        int d = *p >= '0' && *p <= '9'   ? *p - '0'
                : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10
                : *p >= 'A' && *p <= 'F' ? *p - 'A' + 10
                                         : -1;
        if (d < 0)
            break;
        v = v << 4 | (uint64_t)d;
    }
    *pos = p;
    return v;
}

static const char *proc_skip_field(const char *p)
{
    while (*p == ' ')
        p++;
    while (*p != ' ' && *p != '\n' && *p != '\0')
        p++;
    while (*p == ' ')
        p++;
    return p;
}

/* "lo-hi prot offset dev inode   path": false on a line that is not one. */
static bool proc_parse_line(const char *p, struct proc_mapping *m)
{
    m->lo = (uintptr_t)proc_hex(&p);
    if (*p++ != '-')
        return false;
    m->hi = (uintptr_t)proc_hex(&p);
    if (*p++ != ' ')
        return false;
    memcpy(m->prot, p, 4);
    m->prot[4] = '\0';
    p = proc_skip_field(p);
    m->offset = proc_hex(&p);
    p = proc_skip_field(p); /* dev */
    m->inode = strtoull(p, NULL, 10);
    p = proc_skip_field(p);
    size_t n = strcspn(p, "\n");
    if (n >= sizeof m->path)
        n = sizeof m->path - 1;
    memcpy(m->path, p, n);
    m->path[n] = '\0';
    return true;
}

int proc_maps_read(struct proc_maps *maps)
{
    *maps = (struct proc_maps){0};
    char *text = proc_read_file("/proc/self/maps", NULL);
    if (text == NULL)
        return -1;
    for (const char *line = text; *line != '\0';) {
        const char *eol = strchr(line, '\n');
        struct proc_mapping m;
        if (proc_parse_line(line, &m)) {
            if (maps->n == maps->cap) {
                size_t cap = maps->cap ? 2 * maps->cap : 256;
                struct proc_mapping *v = realloc(maps->v, cap * sizeof *v);
                if (v == NULL) {
                    free(text);
                    proc_maps_free(maps);
                    errno = ENOMEM;
                    return -1;
                }
                maps->v = v;
                maps->cap = cap;
            }
            maps->v[maps->n++] = m;
        }
        if (eol == NULL)
            break;
        line = eol + 1;
    }
    free(text);
    return 0;
}

void proc_maps_free(struct proc_maps *maps)
{
    free(maps->v);
    *maps = (struct proc_maps){0};
}

const struct proc_mapping *proc_maps_at(const struct proc_maps *maps, uintptr_t addr)
{
    size_t lo = 0, hi = maps->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (maps->v[mid].hi <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < maps->n ? &maps->v[lo] : NULL;
}

bool proc_smaps_vmflags(uintptr_t addr, char *flags, size_t size)
{
    char *text = proc_read_file("/proc/self/smaps", NULL);
    if (text == NULL)
        return false;
    bool inside = false, found = false;
    for (const char *line = text; *line != '\0';) {
        const char *eol = strchr(line, '\n');
        size_t len = eol != NULL ? (size_t)(eol - line) : strlen(line);
        struct proc_mapping m;
        /* A mapping's header line starts with a hexadecimal address and a '-'. */
        const char *p = line;
        uint64_t lo = proc_hex(&p);
        if (p != line && *p == '-' && proc_parse_line(line, &m)) {
            (void)lo;
            inside = addr >= m.lo && addr < m.hi;
        } else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            size_t n = len - 8 < size - 1 ? len - 8 : size - 1;
            memcpy(flags, line + 8, n);
            flags[n] = '\0';
            found = true;
            break;
        }
        if (eol == NULL)
            break;
        line = eol + 1;
    }
    free(text);
    return found;
}

size_t proc_open_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL)
        return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(dir);
    return n - 1; /* the directory's own descriptor */
}

size_t proc_file_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL)
        return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        char path[300], target[256];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t len = readlink(path, target, sizeof target - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        n += strstr(target, "(deleted)") != NULL || strncmp(target, "/memfd:", 7) == 0;
    }
    closedir(dir);
    return n;
}

static size_t proc_status_kib(const char *key)
{
    char *text = proc_read_file("/proc/self/status", NULL);
    if (text == NULL)
        return 0;
    const char *line = strstr(text, key);
    size_t kib = line != NULL ? strtoul(line + strlen(key), NULL, 10) : 0;
    free(text);
    return kib;
}

size_t proc_rss_kib(void)
{
    return proc_status_kib("VmRSS:");
}

size_t proc_mapping_count(void)
{
    size_t len;
    char *text = proc_read_file("/proc/self/maps", &len);
    if (text == NULL)
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += text[i] == '\n';
    free(text);
    return n;
}

size_t proc_jemalloc_allocated(void)
{
    typedef int (*ctl_fn)(const char *, void *, size_t *, void *, size_t);
    ctl_fn ctl = (ctl_fn)dlsym(RTLD_DEFAULT, "mallctl");
    if (ctl == NULL)
        return SIZE_MAX;
    uint64_t epoch = 1;
    size_t len = sizeof epoch;
    if (ctl("epoch", &epoch, &len, &epoch, len) != 0)
        return SIZE_MAX;
    unsigned narenas;
    len = sizeof narenas;
    if (ctl("arenas.narenas", &narenas, &len, NULL, 0) != 0)
        return SIZE_MAX;
    size_t total = 0;
    for (unsigned i = 0; i < narenas; i++) {
        static const char *const kinds[] = {"small", "large"};
        for (int k = 0; k < 2; k++) {
            char name[64];
            size_t value;
            len = sizeof value;
            snprintf(name, sizeof name, "stats.arenas.%u.%s.allocated", i, kinds[k]);
            /* An arena index never initialised has no statistics: it holds nothing. */
            if (ctl(name, &value, &len, NULL, 0) == 0)
                total += value;
        }
    }
    return total;
}
