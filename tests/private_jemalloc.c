/*
 * For the --with-private-jemalloc build only: jemalloc's statistics for tests/helpers.c.
 *
 * The helpers read jemalloc's statistics with dlsym(RTLD_DEFAULT, "mallctl"), which finds the
 * system's libjemalloc. A private jemalloc is linked into libcodecache.so with its names prefixed
 * and hidden, by design, so no mallctl is visible anywhere. This file defines mallctl,
 * mallctlnametomib and mallctlbymib in the test program (exported by -rdynamic, and pulled into
 * the link by -u) and forwards them to the library's own copy, whose hidden symbols stay in the
 * library's static symbol table (.symtab) as local symbols until the library is stripped: the
 * build tree's library never is.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef TEST_JEMALLOC_PREFIX
#error "TEST_JEMALLOC_PREFIX must name the private jemalloc's prefix"
#endif

int mallctl(const char *name, void *old, size_t *old_len, void *new, size_t new_len);
int mallctlnametomib(const char *name, size_t *mib, size_t *mib_len);
int mallctlbymib(const size_t *mib, size_t mib_len, void *old, size_t *old_len, void *new,
                 size_t new_len);

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "private_jemalloc: %s: %s\n", what, detail);
    abort();
}

/* Reads size bytes at offset of fd into a new buffer. */
static void *read_at(int fd, size_t size, off_t offset)
{
    unsigned char *buf = malloc(size ? size : 1);
    if (buf == NULL)
        die("malloc", "out of memory");
    size_t done = 0;
    while (done < size) {
        ssize_t got = pread(fd, buf + done, size - done, offset + (off_t)done);
        if (got <= 0)
            die("pread", "short read of the library");
        done += (size_t)got;
    }
    return buf;
}

/* The loaded libcodecache.so, recognised by its file name (as tests/helpers.c does). */
struct library {
    const char *path;
    ElfW(Addr) bias;
};

static int find_library(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct library *lib = data;
    const char *slash = strrchr(info->dlpi_name, '/');
    const char *base = slash != NULL ? slash + 1 : info->dlpi_name;
    if (strncmp(base, "libcodecache.so", strlen("libcodecache.so")) != 0)
        return 0;
    lib->path = info->dlpi_name;
    lib->bias = info->dlpi_addr;
    return 1;
}

/* The run-time address of the local function symbol name in the loaded libcodecache.so. */
static void *library_symbol(const char *name)
{
    struct library lib = {NULL, 0};
    if (dl_iterate_phdr(find_library, &lib) == 0)
        die("libcodecache.so", "not loaded");

    int fd = open(lib.path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die("open", lib.path);
    ElfW(Ehdr) *eh = read_at(fd, sizeof *eh, 0);
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_shentsize != sizeof(ElfW(Shdr)))
        die(lib.path, "not an ELF file of this class");
    ElfW(Shdr) *sections = read_at(fd, (size_t)eh->e_shnum * sizeof *sections, eh->e_shoff);
    void *address = NULL;
    for (unsigned i = 0; i < eh->e_shnum && address == NULL; i++) {
        if (sections[i].sh_type != SHT_SYMTAB || sections[i].sh_link >= eh->e_shnum)
            continue;
        const ElfW(Shdr) *strtab = &sections[sections[i].sh_link];
        ElfW(Sym) *syms = read_at(fd, sections[i].sh_size, sections[i].sh_offset);
        char *names = read_at(fd, strtab->sh_size, strtab->sh_offset);
        size_t count = sections[i].sh_size / sizeof *syms;
        for (size_t j = 0; j < count; j++) {
            if (syms[j].st_name < strtab->sh_size && syms[j].st_value != 0 &&
                ELF64_ST_TYPE(syms[j].st_info) == STT_FUNC &&
                strcmp(names + syms[j].st_name, name) == 0) {
                address = (void *)(lib.bias + syms[j].st_value);
                break;
            }
        }
        free(names);
        free(syms);
    }
    free(sections);
    free(eh);
    close(fd);
    if (address == NULL)
        die(name, "not in the library's symbol table (stripped, or another prefix?)");
    return address;
}

typedef int (*ctl_fn)(const char *, void *, size_t *, void *, size_t);
typedef int (*nametomib_fn)(const char *, size_t *, size_t *);
typedef int (*bymib_fn)(const size_t *, size_t, void *, size_t *, void *, size_t);

int mallctl(const char *name, void *old, size_t *old_len, void *new, size_t new_len)
{
    static ctl_fn cached;
    ctl_fn fn = __atomic_load_n(&cached, __ATOMIC_ACQUIRE);
    if (fn == NULL) {
        fn = (ctl_fn)library_symbol(TEST_JEMALLOC_PREFIX "mallctl");
        __atomic_store_n(&cached, fn, __ATOMIC_RELEASE);
    }
    return fn(name, old, old_len, new, new_len);
}

int mallctlnametomib(const char *name, size_t *mib, size_t *mib_len)
{
    static nametomib_fn cached;
    nametomib_fn fn = __atomic_load_n(&cached, __ATOMIC_ACQUIRE);
    if (fn == NULL) {
        fn = (nametomib_fn)library_symbol(TEST_JEMALLOC_PREFIX "mallctlnametomib");
        __atomic_store_n(&cached, fn, __ATOMIC_RELEASE);
    }
    return fn(name, mib, mib_len);
}

int mallctlbymib(const size_t *mib, size_t mib_len, void *old, size_t *old_len, void *new,
                 size_t new_len)
{
    static bymib_fn cached;
    bymib_fn fn = __atomic_load_n(&cached, __ATOMIC_ACQUIRE);
    if (fn == NULL) {
        fn = (bymib_fn)library_symbol(TEST_JEMALLOC_PREFIX "mallctlbymib");
        __atomic_store_n(&cached, fn, __ATOMIC_RELEASE);
    }
    return fn(mib, mib_len, old, old_len, new, new_len);
}
