/*
 * Names of JIT functions and the tools that learn them, for both backends: code_chunk_name's
 * errors, code_chunk_name_at from both views and from a signal handler, names freed with their
 * chunk, threads naming one sealed chunk; the perf map and jitdump files parsed line by line and
 * record by record against the chunks; the GDB JIT interface's list and in-memory ELF objects;
 * the environment variables; a jitdump whose marker cannot be mapped (tests/fault.c fails the
 * library's mmap). tests/debuginfo_tools.sh runs the real perf and gdb.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include "fault.h"
#include "helpers.h"

#define PAGE test_page_size()

static const unsigned backends[] = {0, CODE_CACHE_DUAL_MAP};

static struct code_cache *cache_for(unsigned flags)
{
    struct code_cache_options opts = {
        .size = 64 * PAGE, .near = (const void *)helper_triple, .flags = flags};
    struct code_cache *cache = code_cache_create(&opts);
    cr_assert_not_null(cache, "create (flags %#x): %s", flags, strerror(errno));
    return cache;
}

/* emit_return's function, named. Returns where it runs. */
static const char *emit_named(struct code_chunk *chunk, int value, const char *name)
{
    jit_fn fn = emit_return(chunk, value);
    cr_assert_eq(code_chunk_name(chunk, (const void *)fn, TEST_RETURN_SIZE, name), 0, "name %s: %s",
                 name, strerror(errno));
    return (const char *)fn;
}

/* The whole of a file, NUL-terminated; *len without the NUL. NULL when it does not exist. */
static char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    for (;;) {
        if (cap - n < 1024) {
            cap *= 2;
            buf = realloc(buf, cap);
            cr_assert_not_null(buf);
        }
        ssize_t r = read(fd, buf + n, cap - n - 1);
        cr_assert(r >= 0);
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    if (len != NULL)
        *len = n;
    return buf;
}

/* ---- Naming ---- */

Test(names, refuses_bad_arguments_with_the_documented_errno)
{
    for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
        struct code_cache *cache = cache_for(backends[b]);
        struct code_chunk *chunk = code_cache_alloc(cache, 256);
        cr_assert_not_null(chunk);
        struct code_span s = code_chunk_span(chunk);
        char rx[1];
        struct {
            struct code_chunk *chunk;
            const void *rx;
            size_t size;
            const char *name;
            int err;
        } bad[] = {
            {NULL, s.rx, 1, "f", EINVAL},
            {chunk, s.rx, 1, NULL, EINVAL},
            {chunk, s.rx, 0, "f", EINVAL},
            {chunk, s.rx, 1, "", EINVAL},
            {chunk, s.rx, 1, "two\nlines", EINVAL},
            {chunk, (char *)s.rx - 1, 1, "f", EINVAL},      /* before the chunk */
            {chunk, (char *)s.rx + s.size, 1, "f", EINVAL}, /* after it */
            {chunk, s.rx, s.size + 1, "f", EINVAL},         /* runs past its end */
            {chunk, rx, 1, "f", EINVAL},                    /* not in the cache at all */
            {chunk, s.rx, SIZE_MAX, "f", EINVAL},
        };
        /* The RW view is not where code runs. */
        if (s.rw != s.rx) {
            errno = 0;
            cr_assert_eq(code_chunk_name(chunk, s.rw, 1, "f"), -1);
            cr_assert_eq(errno, EINVAL, "the RW view");
        }
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            errno = 0;
            cr_assert_eq(code_chunk_name(bad[i].chunk, bad[i].rx, bad[i].size, bad[i].name), -1,
                         "case %zu", i);
            cr_assert_eq(errno, bad[i].err, "case %zu: errno %d", i, errno);
        }
        char *huge = malloc(CODE_CACHE_NAME_MAX + 1);
        cr_assert_not_null(huge);
        memset(huge, 'x', CODE_CACHE_NAME_MAX);
        huge[CODE_CACHE_NAME_MAX] = '\0';
        errno = 0;
        cr_assert_eq(code_chunk_name(chunk, s.rx, 1, huge), -1);
        cr_assert_eq(errno, ENAMETOOLONG);
        huge[CODE_CACHE_NAME_MAX - 1] = '\0'; /* the longest accepted */
        cr_assert_eq(code_chunk_name(chunk, s.rx, s.size, huge), 0, "%s", strerror(errno));
        free(huge);
        cr_assert_eq(code_chunk_name(chunk, s.rx, s.size, "whole chunk"), 0);
        /* Freed (the record waits in quarantine, so its state says so): EPERM. */
        code_chunk_free(chunk);
        errno = 0;
        cr_assert_eq(code_chunk_name(chunk, s.rx, 1, "late"), -1);
        cr_assert_eq(errno, EPERM);
        cr_assert_null(code_chunk_name_at(chunk, s.rx, NULL, NULL), "names freed with it");
        cr_assert_null(code_chunk_name_at(NULL, s.rx, NULL, NULL));
        code_cache_destroy(cache);
    }
}

Test(names, are_found_from_any_byte_of_either_view)
{
    for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
        struct code_cache *cache = cache_for(backends[b]);
        struct code_chunk *chunk = code_cache_alloc(cache, 256);
        cr_assert_not_null(chunk);
        struct code_span whole = code_chunk_span(chunk);
        const char *f = emit_named(chunk, 1, "jit_f");
        const char *u = (const char *)emit_return(chunk, 2); /* not named */
        const char *g = emit_named(chunk, 3, "jit_g");
        const ptrdiff_t rw = (char *)whole.rw - (char *)whole.rx;
        /* emit_return aligns its functions to 8 bytes: padding follows each. */
        cr_assert_gt(u - f, TEST_RETURN_SIZE);
        for (int sealed = 0; sealed < 2; sealed++) {
            for (size_t k = 0; k < TEST_RETURN_SIZE; k++) {
                const void *start = NULL;
                size_t size = 0;
                const char *name = code_chunk_name_at(chunk, f + k, &start, &size);
                cr_assert(name != NULL && strcmp(name, "jit_f") == 0, "byte %zu of f", k);
                cr_assert_eq(start, f);
                cr_assert_eq(size, TEST_RETURN_SIZE);
                cr_assert_str_eq(code_chunk_name_at(chunk, g + k + rw, &start, NULL), "jit_g",
                                 "byte %zu of g through the RW view", k);
                cr_assert_eq(start, g, "the start is where it runs");
            }
            cr_assert_null(code_chunk_name_at(chunk, u, NULL, NULL), "an unnamed function");
            cr_assert_null(code_chunk_name_at(chunk, f + TEST_RETURN_SIZE, NULL, NULL), "padding");
            cr_assert_null(code_chunk_name_at(chunk, g + TEST_RETURN_SIZE, NULL, NULL),
                           "past the last");
            cr_assert_null(code_chunk_name_at(chunk, (const char *)whole.rx - 1, NULL, NULL));
            if (!sealed)
                cr_assert_eq(code_chunk_seal(chunk), 0);
        }
        /* Named after the seal; the newest name of overlapping ones wins. */
        cr_assert_eq(code_chunk_name(chunk, u, TEST_RETURN_SIZE, "jit_late"), 0);
        cr_assert_str_eq(code_chunk_name_at(chunk, u + 2, NULL, NULL), "jit_late");
        cr_assert_eq(code_chunk_name(chunk, f, 2, "jit_f_head"), 0);
        cr_assert_str_eq(code_chunk_name_at(chunk, f + 1, NULL, NULL), "jit_f_head");
        cr_assert_str_eq(code_chunk_name_at(chunk, f + 2, NULL, NULL), "jit_f");
        /* The function runs as written: naming does not touch the code. */
        cr_assert_eq(((jit_fn)(uintptr_t)f)(), 1);
        cr_assert_eq(((jit_fn)(uintptr_t)g)(), 3);
        check_maps(cache);
        code_cache_destroy(cache);
    }
}

/* A crash handler's question: which function was running? */
static struct code_cache *sig_cache;
static const char *sig_name;
static const void *sig_start;
static sigjmp_buf sig_back;

static void on_sigill(int sig, siginfo_t *si, void *uc)
{
    (void)sig, (void)si;
    const void *pc = (const void *)test_context_pc(uc);
    sig_name = code_chunk_name_at(code_cache_find(sig_cache, pc), pc, &sig_start, NULL);
    siglongjmp(sig_back, 1);
}

Test(names, are_found_from_a_signal_handler)
{
    for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
        sig_cache = cache_for(backends[b]);
        struct code_chunk *chunk = code_cache_alloc(sig_cache, 100);
        emit_named(chunk, 7, "jit_before");
        /* Two nops, then an illegal instruction: the pc is inside the function, past its start. */
        const size_t nops = 2 * TEST_INSN_ALIGN, size = nops + TEST_ILLEGAL_SIZE;
        struct code_span s = code_chunk_alloc(chunk, size, 4);
        cr_assert_not_null(s.rw);
        test_write_nops(s.rw, nops);
        test_write_illegal((char *)s.rw + nops);
        cr_assert_eq(code_chunk_name(chunk, s.rx, size, "jit_crashes"), 0);
        cr_assert_eq(code_chunk_seal(chunk), 0);
        struct sigaction sa, old;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigill;
        sa.sa_flags = SA_SIGINFO;
        cr_assert_eq(sigaction(SIGILL, &sa, &old), 0);
        sig_name = NULL;
        if (sigsetjmp(sig_back, 1) == 0)
            ((jit_fn)s.rx)();
        sigaction(SIGILL, &old, NULL);
        cr_assert(sig_name != NULL && strcmp(sig_name, "jit_crashes") == 0, "the handler found %s",
                  sig_name ? sig_name : "no name");
        cr_assert_eq(sig_start, s.rx);
        code_cache_destroy(sig_cache);
    }
}

Test(names, are_freed_with_their_chunk)
{
    for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
        for (int how = 0; how < 2; how++) {
            struct code_cache *cache = cache_for(backends[b] | CODE_CACHE_GDB_JIT);
            /* Room for 20 functions of emit_return's, 8-byte aligned. */
            struct code_chunk *chunk = code_cache_alloc(cache, 20 * 16);
            cr_assert_not_null(chunk);
            struct code_cache_stats before, named, after;
            code_cache_get_stats(cache, &before);
            for (int i = 0; i < 20; i++) {
                char name[32];
                snprintf(name, sizeof name, "jit_fn_%d", i);
                emit_named(chunk, i, name);
            }
            cr_assert_eq(code_chunk_seal(chunk), 0);
            code_cache_get_stats(cache, &named);
            cr_assert_gt(named.meta_bytes, before.meta_bytes + 20 * 8, "names in the arena");
            if (how == 0)
                code_chunk_free(chunk);
            else
                cr_assert_eq(code_cache_reset(cache), 0);
            code_cache_get_stats(cache, &after);
            cr_assert_eq(after.meta_bytes, before.meta_bytes, "%s: %zu bytes left after %s",
                         named.backend, after.meta_bytes - before.meta_bytes,
                         how ? "reset" : "free");
            code_cache_destroy(cache);
        }
        /* Destroyed with named chunks still live: memcheck's leak check says whether they went. */
        struct code_cache *cache = cache_for(backends[b] | CODE_CACHE_GDB_JIT);
        struct code_chunk *chunk = code_cache_alloc(cache, 256);
        emit_named(chunk, 1, "jit_left_open");
        struct code_chunk *sealed = code_cache_alloc(cache, 256);
        emit_named(sealed, 1, "jit_left_sealed");
        cr_assert_eq(code_chunk_seal(sealed), 0);
        code_cache_destroy(cache);
    }
}

/* ---- The GDB JIT interface, as a debugger reads it ---- */

struct jit_entry {
    struct jit_entry *next, *prev;
    const char *symfile;
    uint64_t size;
};
struct jit_descriptor {
    uint32_t version, action;
    struct jit_entry *relevant, *first;
};

/* Found by name, as a debugger finds it (a direct reference would make the program link a copy
 * of its own). */
static struct jit_descriptor *gdb_descriptor(void)
{
    struct jit_descriptor *d = dlsym(RTLD_DEFAULT, "__jit_debug_descriptor");
    cr_assert_not_null(d, "__jit_debug_descriptor is not exported");
    cr_assert_not_null(dlsym(RTLD_DEFAULT, "__jit_debug_register_code"));
    cr_assert_eq(d->version, 1);
    return d;
}

static size_t gdb_entries(void)
{
    size_t n = 0;
    const struct jit_descriptor *d = gdb_descriptor();
    for (const struct jit_entry *e = d->first; e != NULL; e = e->next, n++)
        cr_assert(e->next == NULL || e->next->prev == e, "broken back link");
    return n;
}

/* The entry whose object's .text starts at text, or NULL. */
static const struct jit_entry *gdb_entry_at(const void *text)
{
    for (const struct jit_entry *e = gdb_descriptor()->first; e != NULL; e = e->next) {
        const Elf64_Ehdr *eh = (const void *)e->symfile;
        const Elf64_Shdr *sh = (const void *)(e->symfile + eh->e_shoff);
        for (int i = 0; i < eh->e_shnum; i++)
            if (sh[i].sh_type == SHT_NOBITS && sh[i].sh_addr == (uintptr_t)text)
                return e;
    }
    return NULL;
}

/* Checks the object of an entry: an ELF file gdb can read, a NOBITS .text over the chunk, and
 * exactly the expected STT_FUNC symbols at the addresses where the functions run. */
static void check_object(const struct jit_entry *e, struct code_span chunk, size_t count,
                         const char *const *names, const char *const *addrs)
{
    const Elf64_Ehdr *eh = (const void *)e->symfile;
    cr_assert_eq(memcmp(eh->e_ident, ELFMAG, SELFMAG), 0);
    cr_assert_eq(eh->e_ident[EI_CLASS], ELFCLASS64);
    cr_assert_eq(eh->e_machine, TEST_ELF_MACHINE);
    cr_assert_eq(eh->e_type, ET_EXEC);
    cr_assert_leq(eh->e_shoff + eh->e_shnum * sizeof(Elf64_Shdr), e->size);
    const Elf64_Shdr *sh = (const void *)(e->symfile + eh->e_shoff);
    const char *shstr = e->symfile + sh[eh->e_shstrndx].sh_offset;
    const Elf64_Shdr *text = NULL, *symtab = NULL;
    for (int i = 0; i < eh->e_shnum; i++) {
        if (strcmp(shstr + sh[i].sh_name, ".text") == 0)
            text = &sh[i];
        if (sh[i].sh_type == SHT_SYMTAB)
            symtab = &sh[i];
        if (sh[i].sh_type != SHT_NOBITS)
            cr_assert_leq(sh[i].sh_offset + sh[i].sh_size, e->size, "section %d past the end", i);
    }
    cr_assert(text != NULL && symtab != NULL);
    cr_assert_eq(text->sh_type, SHT_NOBITS);
    cr_assert_eq(text->sh_flags, SHF_ALLOC | SHF_EXECINSTR);
    cr_assert_eq(text->sh_addr, (uintptr_t)chunk.rx, "the text is where the code runs");
    cr_assert_eq(text->sh_size, chunk.size);
    const Elf64_Sym *sym = (const void *)(e->symfile + symtab->sh_offset);
    const char *str = e->symfile + sh[symtab->sh_link].sh_offset;
    size_t nsyms = symtab->sh_size / sizeof *sym;
    cr_assert_eq(nsyms, count + 1, "%zu symbols, expected %zu", nsyms - 1, count);
    for (size_t k = 0; k < count; k++) {
        size_t i = 1;
        while (i < nsyms && strcmp(str + sym[i].st_name, names[k]) != 0)
            i++;
        cr_assert_lt(i, nsyms, "no symbol %s", names[k]);
        cr_assert_eq(ELF64_ST_TYPE(sym[i].st_info), STT_FUNC);
        cr_assert_eq(sym[i].st_value, (uintptr_t)addrs[k], "%s's address", names[k]);
        cr_assert_eq(sym[i].st_size, TEST_RETURN_SIZE);
        cr_assert_eq(sym[i].st_shndx, (size_t)(text - sh));
    }
}

Test(gdbjit, one_object_per_sealed_named_chunk_until_it_is_freed)
{
    for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
        const size_t base = gdb_entries();
        struct code_cache *cache = cache_for(backends[b] | CODE_CACHE_GDB_JIT);
        struct code_chunk *a = code_cache_alloc(cache, 256), *plain = code_cache_alloc(cache, 256);
        struct code_chunk *c = code_cache_alloc(cache, 256);
        const char *na[] = {"jit_a1", "jit_a2"}, *aa[2];
        for (int i = 0; i < 2; i++)
            aa[i] = emit_named(a, i, na[i]);
        emit_return(plain, 0);
        const char *nc[] = {"jit_c"}, *ac[] = {emit_named(c, 0, nc[0])};
        cr_assert_eq(gdb_entries(), base, "nothing is registered before the seal");
        cr_assert_eq(code_chunk_seal(a), 0);
        cr_assert_eq(code_chunk_seal(plain), 0);
        cr_assert_eq(code_chunk_seal(c), 0);
        cr_assert_eq(gdb_entries(), base + 2, "one object per sealed chunk with names");
        const struct jit_descriptor *d = gdb_descriptor();
        cr_assert_eq(d->action, 1, "JIT_REGISTER_FN");
        cr_assert_eq(d->relevant, d->first, "the newest object is the relevant one");
        check_object(gdb_entry_at(code_chunk_span(a).rx), code_chunk_span(a), 2, na, aa);
        check_object(gdb_entry_at(code_chunk_span(c).rx), code_chunk_span(c), 1, nc, ac);
        cr_assert_null(gdb_entry_at(code_chunk_span(plain).rx));
        /* A name after the seal: the chunk's object is replaced by one with every name. */
        struct code_chunk *d2 = code_cache_alloc(cache, 256);
        const char *nd[] = {"jit_d1", "jit_d2"}, *ad[2];
        ad[0] = emit_named(d2, 1, nd[0]);
        ad[1] = (const char *)emit_return(d2, 2);
        cr_assert_eq(code_chunk_seal(d2), 0);
        cr_assert_eq(code_chunk_name(d2, ad[1], TEST_RETURN_SIZE, nd[1]), 0);
        cr_assert_eq(gdb_entries(), base + 3);
        check_object(gdb_entry_at(code_chunk_span(d2).rx), code_chunk_span(d2), 2, nd, ad);
        /* Freed: gone from the list. */
        struct code_span sa = code_chunk_span(a);
        code_chunk_free(a);
        cr_assert_eq(gdb_entries(), base + 2);
        cr_assert_null(gdb_entry_at(sa.rx));
        cr_assert_eq(d->action, 0, "JIT_NOACTION once the debugger was told");
        /* Reset: every object of the cache gone; destroy after naming again: likewise. */
        cr_assert_eq(code_cache_reset(cache), 0);
        cr_assert_eq(gdb_entries(), base);
        struct code_chunk *e = code_cache_alloc(cache, 256);
        emit_named(e, 1, "jit_e");
        cr_assert_eq(code_chunk_seal(e), 0);
        cr_assert_eq(gdb_entries(), base + 1);
        code_cache_destroy(cache);
        cr_assert_eq(gdb_entries(), base);
    }
}

/* Threads naming one sealed chunk at once: every name is kept, and the debugger's object, rebuilt
 * by each of them, ends up with all of them. */
struct namer {
    struct code_chunk *chunk;
    const char *code;
    int first;
};

enum { NAMERS = 4, NAMES_EACH = 40 };

static void *name_many(void *arg)
{
    struct namer *n = arg;
    for (int i = n->first; i < n->first + NAMES_EACH; i++) {
        char name[32];
        snprintf(name, sizeof name, "jit_byte_%d", i);
        if (code_chunk_name(n->chunk, n->code + i, 1, name) != 0)
            return (void *)1;
    }
    return NULL;
}

Test(names, many_threads_may_name_a_sealed_chunk)
{
    for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
        struct code_cache *cache = cache_for(backends[b] | CODE_CACHE_GDB_JIT);
        struct code_chunk *chunk = code_cache_alloc(cache, NAMERS * NAMES_EACH);
        cr_assert_not_null(chunk);
        cr_assert_eq(code_chunk_seal(chunk), 0);
        const char *code = code_chunk_span(chunk).rx;
        pthread_t t[NAMERS];
        struct namer n[NAMERS];
        for (int i = 0; i < NAMERS; i++) {
            n[i] = (struct namer){chunk, code, i * NAMES_EACH};
            cr_assert_eq(pthread_create(&t[i], NULL, name_many, &n[i]), 0);
        }
        for (int i = 0; i < NAMERS; i++) {
            void *rc;
            pthread_join(t[i], &rc);
            cr_assert_null(rc, "a thread's name was refused");
        }
        for (int i = 0; i < NAMERS * NAMES_EACH; i++) {
            char name[32];
            snprintf(name, sizeof name, "jit_byte_%d", i);
            const char *found = code_chunk_name_at(chunk, code + i, NULL, NULL);
            cr_assert(found != NULL && strcmp(found, name) == 0, "byte %d: %s", i, found);
        }
        const struct jit_entry *e = gdb_entry_at(code);
        cr_assert_not_null(e);
        const Elf64_Ehdr *eh = (const void *)e->symfile;
        const Elf64_Shdr *sh = (const void *)(e->symfile + eh->e_shoff);
        size_t nsyms = 0;
        for (int i = 0; i < eh->e_shnum; i++)
            if (sh[i].sh_type == SHT_SYMTAB)
                nsyms = sh[i].sh_size / sizeof(Elf64_Sym) - 1;
        cr_assert_eq(nsyms, NAMERS * NAMES_EACH, "the object has %zu of the names", nsyms);
        code_cache_destroy(cache);
    }
}

/* ---- perf map ---- */

static char perf_map_path[64];

static void perf_map_init(void)
{
    snprintf(perf_map_path, sizeof perf_map_path, "/tmp/perf-%ld.map", (long)getpid());
    unlink(perf_map_path);
}

static void perf_map_fini(void)
{
    unlink(perf_map_path);
}

/* Is there a line "START SIZE name" for this function? Every line must be well formed. */
static bool perf_map_has(const char *text, const void *start, size_t size, const char *name)
{
    bool found = false;
    for (const char *line = text; *line != '\0';) {
        const char *eol = strchr(line, '\n');
        cr_assert_not_null(eol, "the last line has no newline");
        char *end;
        unsigned long long a = strtoull(line, &end, 16);
        cr_assert(end > line && *end == ' ', "bad start: %.*s", (int)(eol - line), line);
        const char *p = end + 1;
        unsigned long long n = strtoull(p, &end, 16);
        cr_assert(end > p && *end == ' ' && end + 1 < eol, "bad size or name: %.*s",
                  (int)(eol - line), line);
        cr_assert_neq(line[0], '0', "hexadecimal without 0x or leading zeros");
        if (a == (uintptr_t)start && n == size && (size_t)(eol - end - 1) == strlen(name) &&
            memcmp(end + 1, name, strlen(name)) == 0)
            found = true;
        line = eol + 1;
    }
    return found;
}

Test(perf, map_has_a_line_per_named_function_at_its_rx_address, .init = perf_map_init,
     .fini = perf_map_fini)
{
    for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
        struct code_cache *cache = cache_for(backends[b] | CODE_CACHE_PERF_MAP);
        struct code_chunk *plain = code_cache_alloc(cache, 256);
        emit_return(plain, 1);
        cr_assert_eq(code_chunk_seal(plain), 0);
        struct stat st;
        if (b == 0)
            cr_assert_eq(stat(perf_map_path, &st), -1, "created before any name");
        struct code_chunk *chunk = code_cache_alloc(cache, 256);
        const char *f = emit_named(chunk, 1, "jit f with spaces (args)");
        const char *g = emit_named(chunk, 2, "jit_g");
        if (b == 0)
            cr_assert_eq(stat(perf_map_path, &st), -1, "written before the seal");
        cr_assert_eq(code_chunk_seal(chunk), 0);
        const char *h = (const char *)emit_return(code_cache_alloc(cache, 64), 3);
        struct code_chunk *later = code_cache_find(cache, h);
        cr_assert_eq(code_chunk_seal(later), 0);
        cr_assert_eq(code_chunk_name(later, h, TEST_RETURN_SIZE, "jit_named_after_the_seal"), 0);
        char *text = slurp(perf_map_path, NULL);
        cr_assert_not_null(text, "no %s", perf_map_path);
        cr_assert(perf_map_has(text, f, TEST_RETURN_SIZE, "jit f with spaces (args)"), "%s", text);
        cr_assert(perf_map_has(text, g, TEST_RETURN_SIZE, "jit_g"), "%s", text);
        cr_assert(perf_map_has(text, h, TEST_RETURN_SIZE, "jit_named_after_the_seal"), "%s", text);
        /* The RW view never appears: only addresses where code runs. */
        struct code_span s = code_chunk_span(chunk);
        if (s.rw != s.rx)
            cr_assert(!perf_map_has(text, (char *)s.rw + (f - (char *)s.rx), TEST_RETURN_SIZE,
                                    "jit f with spaces (args)"));
        free(text);
        code_cache_destroy(cache);
    }
}

/* ---- jitdump ---- */

/* Records follow each other with no padding (a load record ends with its name and code bytes):
 * packed, so that reading one at any offset is defined (UBSan's alignment check). */
struct jd_header {
    uint32_t magic, version, total_size, elf_mach, pad1, pid;
    uint64_t timestamp, flags;
} __attribute__((packed));
struct jd_record {
    uint32_t id, total_size;
    uint64_t timestamp;
} __attribute__((packed));
struct jd_load {
    struct jd_record p;
    uint32_t pid, tid;
    uint64_t vma, code_addr, code_size, code_index;
} __attribute__((packed));

/* Records follow one another with no padding: read them by copying, at any alignment. */
static struct jd_record jd_record_at(const char *data, size_t off)
{
    struct jd_record r;
    memcpy(&r, data + off, sizeof r);
    return r;
}

static char jd_dir[64];

static void jitdump_init(void)
{
    snprintf(jd_dir, sizeof jd_dir, "/tmp/codecache-jd.XXXXXX");
    cr_assert_not_null(mkdtemp(jd_dir));
    /* Read by the library when it creates the file, at the first name it writes. */
    setenv("JITDUMPDIR", jd_dir, 1);
}

static void jitdump_fini(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", jd_dir);
    (void)!system(cmd);
}

static char *jitdump_read(pid_t pid, size_t *len)
{
    char path[128];
    snprintf(path, sizeof path, "%s/jit-%ld.dump", jd_dir, (long)pid);
    char *data = slurp(path, len);
    cr_assert_not_null(data, "no %s", path);
    return data;
}

/* Walks the records; checks the header and that the records tile the file. Returns the number
 * of records, and the offset of each in at[] (up to max). */
static size_t jitdump_records(const char *data, size_t len, pid_t pid, size_t *at, size_t max)
{
    struct jd_header h;
    cr_assert_geq(len, sizeof h);
    memcpy(&h, data, sizeof h);
    cr_assert_eq(h.magic, 0x4A695444u, "magic %#x", h.magic);
    cr_assert_eq(h.version, 1);
    cr_assert_eq(h.total_size, sizeof h);
    cr_assert_eq(h.elf_mach, TEST_ELF_MACHINE);
    cr_assert_eq(h.pid, (uint32_t)pid);
    cr_assert_eq(h.flags, 0, "CLOCK_MONOTONIC timestamps, not the TSC");
    size_t n = 0, off = h.total_size;
    uint64_t last = h.timestamp;
    while (off < len) {
        cr_assert_geq(len - off, sizeof(struct jd_record), "a torn record header");
        struct jd_record r = jd_record_at(data, off);
        cr_assert_geq(r.total_size, sizeof r);
        cr_assert_leq(r.total_size, len - off, "a record runs past the end");
        cr_assert_geq(r.timestamp, last, "time goes back");
        last = r.timestamp;
        if (n < max)
            at[n] = off;
        n++;
        off += r.total_size;
    }
    return n;
}

/* The code emit_return writes for value. */
static const unsigned char *return_code(int value)
{
    static unsigned char code[TEST_RETURN_SIZE];
    test_write_return(code, value);
    return code;
}

/* The JIT_CODE_LOAD record of a function at code: its fields, its name, and its bytes as they
 * were when it was announced. */
static void check_load(const char *data, size_t off, const void *code, const void *bytes,
                       size_t size, const char *name, uint64_t index)
{
    struct jd_load r;
    memcpy(&r, data + off, sizeof r);
    cr_assert_eq(r.p.id, 0, "JIT_CODE_LOAD");
    cr_assert_eq(r.p.total_size, sizeof r + strlen(name) + 1 + size);
    cr_assert_eq(r.pid, (uint32_t)getpid());
    cr_assert_eq(r.tid, (uint32_t)gettid());
    cr_assert_eq(r.vma, (uintptr_t)code, "vma %#" PRIx64 ", code at %p", r.vma, code);
    cr_assert_eq(r.code_addr, (uintptr_t)code);
    cr_assert_eq(r.code_size, size);
    cr_assert_eq(r.code_index, index);
    cr_assert_str_eq(data + off + sizeof r, name);
    /* perf finds the code at the end of the record. */
    cr_assert_eq(memcmp(data + off + r.p.total_size - size, bytes, size), 0, "%s's code", name);
}

/* The marker: the dump file mapped executable, for perf record to log. */
static bool jitdump_marked(pid_t pid)
{
    char name[64];
    snprintf(name, sizeof name, "/jit-%ld.dump", (long)pid);
    char *maps = slurp("/proc/self/maps", NULL);
    bool found = false;
    for (char *line = strtok(maps, "\n"); line != NULL; line = strtok(NULL, "\n"))
        if (strstr(line, name) != NULL && strstr(line, " r-xp ") != NULL)
            found = true;
    free(maps);
    return found;
}

Test(perf, jitdump_has_a_load_record_per_named_function, .init = jitdump_init, .fini = jitdump_fini)
{
    uint64_t index = 0;
    for (size_t b = 0; b < sizeof backends / sizeof backends[0]; b++) {
        struct code_cache_options opts = {.size = 2 * PAGE,
                                          .flags = backends[b] | CODE_CACHE_PERF_JITDUMP};
        struct code_cache *cache = code_cache_create(&opts);
        cr_assert_not_null(cache);
        struct code_cache_stats st;
        code_cache_get_stats(cache, &st);
        /* Two chunks fill the cache: the third takes the first one's span again. */
        size_t chunk_size = st.reserved / 2;
        struct code_chunk *chunk = code_cache_alloc(cache, chunk_size);
        const char *f = emit_named(chunk, 1, "jit_f");
        const char *g = emit_named(chunk, 2, "jit_g");
        if (b == 0) {
            char path[128];
            snprintf(path, sizeof path, "%s/jit-%ld.dump", jd_dir, (long)getpid());
            cr_assert_eq(access(path, F_OK), -1, "created before any seal");
        }
        cr_assert_eq(code_chunk_seal(chunk), 0);
        struct code_chunk *other = code_cache_alloc(cache, chunk_size);
        cr_assert_eq(code_chunk_seal(other), 0);
        cr_assert_eq(code_chunk_name(other, code_chunk_span(other).rx, 1, "jit_after"), 0);
        cr_assert(jitdump_marked(getpid()), "no r-x mapping of the dump file");
        /* The first chunk's span reused: a new record, a later time, the same address. */
        code_chunk_free(chunk);
        struct code_chunk *again = code_cache_alloc(cache, chunk_size);
        const char *f2 = emit_named(again, 3, "jit_f_reused");
        cr_assert_eq(f2, f, "the span was not reused");
        cr_assert_eq(code_chunk_seal(again), 0);

        size_t len, at[16];
        char *data = jitdump_read(getpid(), &len);
        size_t n = jitdump_records(data, len, getpid(), at, 16);
        cr_assert_eq(n, index + 4, "%zu records", n);
        /* Newest names first within a chunk. */
        const void *after = code_chunk_span(other).rx;
        check_load(data, at[index], g, return_code(2), TEST_RETURN_SIZE, "jit_g", index);
        check_load(data, at[index + 1], f, return_code(1), TEST_RETURN_SIZE, "jit_f", index + 1);
        check_load(data, at[index + 2], after, after, 1, "jit_after", index + 2);
        check_load(data, at[index + 3], f2, return_code(3), TEST_RETURN_SIZE, "jit_f_reused",
                   index + 3);
        struct jd_record first = jd_record_at(data, at[index + 1]);
        struct jd_record reused = jd_record_at(data, at[index + 3]);
        cr_assert_gt(reused.timestamp, first.timestamp, "reuse is told apart by time");
        free(data);
        index += 4;
        code_cache_destroy(cache);
    }
}

/* Where the marker cannot be mapped (a noexec mount, say), perf could never find the dump: the
 * library leaves no file behind, and naming and sealing go on unharmed. */
Test(perf, jitdump_without_its_marker_leaves_no_file, .init = jitdump_init, .fini = jitdump_fini)
{
    struct code_cache *cache = cache_for(CODE_CACHE_PERF_JITDUMP);
    struct code_chunk *chunk = code_cache_alloc(cache, 64);
    const char *f = emit_named(chunk, 7, "jit_unmarked");
    fault_inject(FAULT_MMAP, PROT_READ | PROT_EXEC, 0, EPERM);
    cr_assert_eq(code_chunk_seal(chunk), 0, "%s", strerror(errno));
    cr_assert_eq(fault_failures(), 1, "the marker was not tried");
    fault_clear();
    char path[128];
    snprintf(path, sizeof path, "%s/jit-%ld.dump", jd_dir, (long)getpid());
    cr_assert_eq(access(path, F_OK), -1, "%s was left behind", path);
    cr_assert(!jitdump_marked(getpid()));
    cr_assert_eq(((jit_fn)(uintptr_t)f)(), 7);
    cr_assert_str_eq(code_chunk_name_at(chunk, f, NULL, NULL), "jit_unmarked");
    code_cache_destroy(cache);
}

/* The record is written by the library's destructor, when the process exits: by a program of
 * its own (a forked test worker would run the test framework's exit handlers too). */
Test(perf, jitdump_ends_with_a_close_record_at_exit, .init = jitdump_init, .fini = jitdump_fini)
{
    pid_t child = fork();
    cr_assert_neq(child, -1);
    if (child == 0) {
        execl("tests/debuginfo_tools", "debuginfo_tools", "exit", "mprotect", (char *)NULL);
        _exit(127);
    }
    int status;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "tests/debuginfo_tools exit: %d",
              WEXITSTATUS(status));
    size_t len, at[4];
    char *data = jitdump_read(child, &len);
    size_t n = jitdump_records(data, len, child, at, 4);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(data + at[0] + sizeof(struct jd_load), "jit_spin_alpha");
    struct jd_record last = jd_record_at(data, at[1]);
    cr_assert_eq(last.id, 3, "JIT_CODE_CLOSE");
    cr_assert_eq(last.total_size, sizeof last);
    free(data);
}

/* ---- The environment turns the tools on for every cache ---- */

Test(env, turns_every_tool_on_without_flags, .init = jitdump_init, .fini = jitdump_fini)
{
    /* Read once, at the first seal with names: this test's process has not sealed any yet. */
    setenv("CODE_CACHE_PERF", "map,jitdump", 1);
    setenv("CODE_CACHE_GDB", "1", 1);
    perf_map_init();
    const size_t base = gdb_entries();
    struct code_cache *cache = cache_for(CODE_CACHE_DUAL_MAP);
    struct code_chunk *chunk = code_cache_alloc(cache, 64);
    const char *f = emit_named(chunk, 1, "jit_by_env");
    cr_assert_eq(code_chunk_seal(chunk), 0);
    char *text = slurp(perf_map_path, NULL);
    cr_assert(text != NULL && perf_map_has(text, f, TEST_RETURN_SIZE, "jit_by_env"));
    free(text);
    size_t len, at[2];
    char *data = jitdump_read(getpid(), &len);
    cr_assert_eq(jitdump_records(data, len, getpid(), at, 2), 1);
    check_load(data, at[0], f, return_code(1), TEST_RETURN_SIZE, "jit_by_env", 0);
    free(data);
    cr_assert_eq(gdb_entries(), base + 1);
    code_cache_destroy(cache);
    cr_assert_eq(gdb_entries(), base);
    perf_map_fini();
}
