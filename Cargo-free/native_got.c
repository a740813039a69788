/*
 * native_got.c: redirect the allocator entries of the target's extension modules and
 * shared libraries to native_hooks.c, by rewriting their global offset table.
 *
 * Which libraries: every object the dynamic loader lists except the interpreter itself
 * (the executable and libpython: what Python allocates goes through its own domains,
 * already counted), the C library and the loader, allocator libraries, NumPy's core
 * (its array data is counted through its allocator handler) and this library. Which
 * entries: the JUMP_SLOT and GLOB_DAT relocations of the functions in nat_fns. An entry is
 * redirected only if it holds the C library's function or, with lazy binding, a stub of its
 * own library; a library with any entry pointing elsewhere (memray, a sanitizer, a
 * preloaded allocator) is left alone, and whole native mode is refused when malloc itself
 * is not the C library's. RELRO pages are made writable for the store and read-only again.
 *
 * Everything here runs with the GIL held (start, each interval's rescan, stop), inside
 * dl_iterate_phdr's callback, which holds the loader's lock: no library can be unloaded
 * while we write into it. Detach restores an entry only where it still holds our hook:
 * an entry someone changed since keeps their value (and our hook, should they chain to
 * it, stays loaded: the library is pinned).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "native_internal.h"

#define MAX_ENTRIES_PER_LIB 32

typedef struct {
    uintptr_t slot;
    void *orig;
    void *ours;
} got_entry;

typedef struct {
    uintptr_t base;
    char *name;
    char *why;     /* NULL: redirected */
    int nentries;
    int present;   /* seen by the current walk */
    got_entry entries[MAX_ENTRIES_PER_LIB];
} got_lib;

static got_lib *g_libs;
static size_t g_nlibs, g_cap_libs;
static unsigned long long g_adds = ~0ULL, g_subs = ~0ULL;
static uintptr_t g_self_base;
static int g_resolved;
/* What the process resolves each name to, when not the C library's own address: a
 * non-PIE executable that takes a function's address makes its own PLT stub the canonical
 * address, and every library's GOT then holds that stub (which jumps to libc's). */
static void *g_canon[32];

static int in_first_object(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    uintptr_t *addr = data;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start = (uintptr_t)info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && addr[0] >= start && addr[0] < start + ph->p_memsz)
            addr[1] = 1;
    }
    return 1; /* the first object is the executable */
}

static int in_executable(void *p) {
    uintptr_t arg[2] = {(uintptr_t)p, 0};
    dl_iterate_phdr(in_first_object, arg);
    return (int)arg[1];
}

/* ---- the C library's functions ---------------------------------------------------- */

int nat_got_resolve(char *why, size_t whylen) {
#if !defined(__x86_64__)
    snprintf(why, whylen, "GOT rewriting is implemented for x86_64 only");
    return 0;
#else
    Dl_info self;
    if (dladdr((void *)nat_got_resolve, &self) == 0) {
        snprintf(why, whylen, "native allocations are not sampled: this library's own "
                              "address is unknown");
        return 0;
    }
    g_self_base = (uintptr_t)self.dli_fbase;
    if (g_resolved)
        return 1;
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    if (libc == NULL) {
        snprintf(why, whylen, "native allocations are not sampled: glibc's libc.so.6 is not "
                              "loaded (another C library?)");
        return 0;
    }
    for (int i = 0; i < nat_nfns; i++) {
        if (nat_fns[i].only == 2) { /* the interpreter's, wherever it is */
            if (*nat_fns[i].real == NULL)
                *nat_fns[i].real = dlsym(RTLD_DEFAULT, nat_fns[i].name);
            continue;
        }
        void *real = dlsym(libc, nat_fns[i].name);
        if (real == NULL && strcmp(nat_fns[i].name, "reallocarray") != 0) {
            snprintf(why, whylen, "native allocations are not sampled: libc has no %s",
                     nat_fns[i].name);
            dlclose(libc);
            return 0;
        }
        void *seen = dlsym(RTLD_DEFAULT, nat_fns[i].name);
        if (seen != real && seen != NULL && in_executable(seen) && i < 32) {
            g_canon[i] = seen; /* the executable's canonical PLT stub */
        } else if (seen != real && i < 4) {
            Dl_info who;
            const char *lib = dladdr(seen, &who) && who.dli_fname ? who.dli_fname : "?";
            snprintf(why, whylen,
                     "native allocations of libraries are not sampled: %s is interposed by "
                     "%s (another allocator or tool)",
                     nat_fns[i].name, lib);
            dlclose(libc);
            return 0;
        }
        if (*nat_fns[i].real == NULL)
            *nat_fns[i].real = real;
    }
    dlclose(libc); /* RTLD_NOLOAD took a reference: libc stays loaded regardless */
    g_resolved = 1;
    return 1;
#endif
}

void *nat_got_hook_for(void *real) {
    for (int i = 0; i < nat_nfns; i++)
        if (nat_fns[i].only == 0 && (real == *nat_fns[i].real || (i < 32 && g_canon[i] != NULL &&
                                                                  real == g_canon[i])))
            return nat_fns[i].hook;
    return NULL;
}

/* ---- which libraries -------------------------------------------------------------- */

static const char *basename_of(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static int starts(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Why a library is not redirected by policy; NULL: it may be. "" : say nothing. */
static const char *excluded(const struct dl_phdr_info *info) {
    const char *name = info->dlpi_name;
    if (name == NULL || name[0] == '\0')
        return "the interpreter executable (its allocations go through Python's domains)";
    const char *b = basename_of(name);
    if (starts(b, "linux-vdso") || starts(b, "linux-gate"))
        return "";
    if ((uintptr_t)info->dlpi_addr == g_self_base)
        return "heapspy's own shim";
    if (starts(b, "libpython"))
        return "the interpreter (its allocations go through Python's domains)";
    static const char *const clib[] = {"libc.so", "ld-linux", "ld64.so", "libm.so",
                                       "libpthread.so", "libdl.so", "librt.so", "libutil.so",
                                       "libresolv.so", "libmvec.so", "libanl.so"};
    for (size_t i = 0; i < sizeof clib / sizeof clib[0]; i++)
        if (starts(b, clib[i]))
            return "the C library itself";
    if (strstr(b, "jemalloc") || strstr(b, "tcmalloc") || strstr(b, "mimalloc"))
        return "an allocator library";
    if (strstr(b, "_multiarray_umath"))
        return "NumPy's core (its array data is counted through its allocator handler)";
    if (strstr(b, "_heapspy_shim"))
        return "heapspy's own shim";
    return NULL;
}

/* ---- the ELF walk ----------------------------------------------------------------- */

typedef struct {
    uintptr_t relro_start, relro_end; /* page-aligned; empty when none */
    uintptr_t load_start, load_end;   /* extent of the PT_LOAD segments */
} layout;

static uintptr_t dyn_ptr(uintptr_t base, ElfW(Addr) p) {
    /* glibc relocates most pointers of .dynamic in place; others do not. */
    return p < base ? base + p : p;
}

static int writable_store(const layout *l, uintptr_t slot, void *value) {
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t start = slot & ~(uintptr_t)(page - 1);
    int ro = slot >= l->relro_start && slot < l->relro_end;
    if (ro && mprotect((void *)start, (size_t)page, PROT_READ | PROT_WRITE) != 0)
        return 0;
    __atomic_store_n((void **)slot, value, __ATOMIC_RELEASE);
    if (ro)
        mprotect((void *)start, (size_t)page, PROT_READ);
    return 1;
}

typedef struct {
    const ElfW(Sym) *symtab;
    const char *strtab;
    size_t strsz;
    const ElfW(Rela) *rel[2];
    size_t nrel[2];
} dyninfo;

static int read_dynamic(const struct dl_phdr_info *info, dyninfo *d, layout *l) {
    uintptr_t base = (uintptr_t)info->dlpi_addr;
    const ElfW(Dyn) *dyn = NULL;
    long page = sysconf(_SC_PAGESIZE);
    memset(d, 0, sizeof *d);
    memset(l, 0, sizeof *l);
    l->load_start = UINTPTR_MAX;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_DYNAMIC)
            dyn = (const ElfW(Dyn) *)(base + ph->p_vaddr);
        else if (ph->p_type == PT_GNU_RELRO) {
            l->relro_start = (base + ph->p_vaddr) & ~(uintptr_t)(page - 1);
            l->relro_end = (base + ph->p_vaddr + ph->p_memsz) & ~(uintptr_t)(page - 1);
        } else if (ph->p_type == PT_LOAD) {
            uintptr_t s = base + ph->p_vaddr, e = s + ph->p_memsz;
            if (s < l->load_start)
                l->load_start = s;
            if (e > l->load_end)
                l->load_end = e;
        }
    }
    if (dyn == NULL)
        return 0;
    uintptr_t jmprel = 0, rela = 0;
    size_t pltrelsz = 0, relasz = 0;
    long pltrel = DT_RELA;
    for (; dyn->d_tag != DT_NULL; dyn++) {
        switch (dyn->d_tag) {
        case DT_SYMTAB: d->symtab = (const ElfW(Sym) *)dyn_ptr(base, dyn->d_un.d_ptr); break;
        case DT_STRTAB: d->strtab = (const char *)dyn_ptr(base, dyn->d_un.d_ptr); break;
        case DT_STRSZ: d->strsz = dyn->d_un.d_val; break;
        case DT_JMPREL: jmprel = dyn_ptr(base, dyn->d_un.d_ptr); break;
        case DT_PLTRELSZ: pltrelsz = dyn->d_un.d_val; break;
        case DT_PLTREL: pltrel = (long)dyn->d_un.d_val; break;
        case DT_RELA: rela = dyn_ptr(base, dyn->d_un.d_ptr); break;
        case DT_RELASZ: relasz = dyn->d_un.d_val; break;
        default: break;
        }
    }
    if (d->symtab == NULL || d->strtab == NULL || pltrel != DT_RELA)
        return 0;
    d->rel[0] = (const ElfW(Rela) *)jmprel;
    d->nrel[0] = jmprel ? pltrelsz / sizeof(ElfW(Rela)) : 0;
    d->rel[1] = (const ElfW(Rela) *)rela;
    d->nrel[1] = rela ? relasz / sizeof(ElfW(Rela)) : 0;
    return 1;
}

static got_lib *new_lib(const struct dl_phdr_info *info) {
    if (g_nlibs == g_cap_libs) {
        size_t ncap = g_cap_libs ? g_cap_libs * 2 : 32;
        got_lib *n = realloc(g_libs, ncap * sizeof *n);
        if (n == NULL)
            return NULL;
        g_libs = n;
        g_cap_libs = ncap;
    }
    got_lib *lib = &g_libs[g_nlibs];
    memset(lib, 0, sizeof *lib);
    lib->base = (uintptr_t)info->dlpi_addr;
    lib->name = strdup(info->dlpi_name && info->dlpi_name[0] ? info->dlpi_name : "[executable]");
    if (lib->name == NULL)
        return NULL;
    lib->present = 1;
    g_nlibs++;
    return lib;
}

static got_lib *find_lib(const struct dl_phdr_info *info) {
    const char *name = info->dlpi_name && info->dlpi_name[0] ? info->dlpi_name : "[executable]";
    for (size_t i = 0; i < g_nlibs; i++)
        if (g_libs[i].base == (uintptr_t)info->dlpi_addr && strcmp(g_libs[i].name, name) == 0)
            return &g_libs[i];
    return NULL;
}

static void set_why(got_lib *lib, const char *why) {
    free(lib->why);
    lib->why = strdup(why);
    lib->nentries = 0;
}

static void redirect(const struct dl_phdr_info *info, got_lib *lib) {
    dyninfo d;
    layout l;
    if (!read_dynamic(info, &d, &l)) {
        set_why(lib, "no dynamic relocations to read");
        return;
    }
    int ctypes = strstr(basename_of(lib->name), "_ctypes") != NULL;
    got_entry found[MAX_ENTRIES_PER_LIB];
    int n = 0;
    for (int t = 0; t < 2; t++) {
        for (size_t r = 0; r < d.nrel[t]; r++) {
            const ElfW(Rela) *rel = &d.rel[t][r];
            unsigned long type = ELF64_R_TYPE(rel->r_info);
            if (type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT)
                continue;
            const ElfW(Sym) *sym = &d.symtab[ELF64_R_SYM(rel->r_info)];
            if (sym->st_name == 0 || (d.strsz && sym->st_name >= d.strsz))
                continue;
            const char *name = d.strtab + sym->st_name;
            for (int f = 0; f < nat_nfns; f++) {
                if (strcmp(name, nat_fns[f].name) != 0 || (nat_fns[f].only == 1 && !ctypes))
                    continue;
                if (*nat_fns[f].real == NULL)
                    break;
                uintptr_t slot = lib->base + rel->r_offset;
                void *cur = *(void **)slot;
                int stub = (uintptr_t)cur >= l.load_start && (uintptr_t)cur < l.load_end;
                int canon = f < 32 && g_canon[f] != NULL && cur == g_canon[f];
                if (cur != *nat_fns[f].real && !stub && !canon && cur != nat_fns[f].hook) {
                    Dl_info who;
                    const char *other = dladdr(cur, &who) && who.dli_fname ? who.dli_fname : "?";
                    char why[512];
                    snprintf(why, sizeof why, "its %s entry points into %s (another tool)",
                             name, other);
                    set_why(lib, why);
                    return;
                }
                if (cur == nat_fns[f].hook) {
                    set_why(lib, "already redirected (an earlier heapspy session's hook)");
                    return;
                }
                if (n < MAX_ENTRIES_PER_LIB)
                    found[n++] = (got_entry){slot, cur, nat_fns[f].hook};
                break;
            }
        }
    }
    if (n == 0) {
        set_why(lib, "calls no allocator function");
        return;
    }
    for (int i = 0; i < n; i++) {
        if (!writable_store(&l, found[i].slot, found[i].ours)) {
            /* undo what this library got so far */
            for (int k = 0; k < i; k++)
                writable_store(&l, found[k].slot, found[k].orig);
            set_why(lib, "its GOT page could not be made writable");
            return;
        }
    }
    for (int i = 0; i < n; i++)
        if (found[i].ours == (void *)nat_restore_hook)
            nat_restore_hooked = 1;
    memcpy(lib->entries, found, (size_t)n * sizeof *found);
    lib->nentries = n;
    free(lib->why);
    lib->why = NULL;
}

static int scan_one(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    (void)data;
    got_lib *lib = find_lib(info);
    if (lib != NULL) {
        lib->present = 1;
        return 0;
    }
    const char *why = excluded(info);
    if (why != NULL && why[0] == '\0')
        return 0;
    lib = new_lib(info);
    if (lib == NULL)
        return 0;
    if (why != NULL)
        set_why(lib, why);
    else
        redirect(info, lib);
    return 0;
}

static int counters(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    unsigned long long *out = data;
    out[0] = info->dlpi_adds;
    out[1] = info->dlpi_subs;
    return 1;
}

/* Drop libraries that were unloaded (their entries went with them). */
static void forget_absent(void) {
    size_t k = 0;
    for (size_t i = 0; i < g_nlibs; i++) {
        if (g_libs[i].present) {
            g_libs[k++] = g_libs[i];
        } else {
            free(g_libs[i].name);
            free(g_libs[i].why);
        }
    }
    g_nlibs = k;
}

void nat_got_scan(void) {
    unsigned long long c[2] = {0, 0};
    dl_iterate_phdr(counters, c);
    if (c[0] == g_adds && c[1] == g_subs)
        return; /* nothing loaded or unloaded since the last walk */
    g_adds = c[0];
    g_subs = c[1];
    for (size_t i = 0; i < g_nlibs; i++)
        g_libs[i].present = 0;
    dl_iterate_phdr(scan_one, NULL);
    forget_absent();
}

typedef struct {
    int left;
} restore_state;

static int restore_one(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    restore_state *st = data;
    got_lib *lib = find_lib(info);
    if (lib == NULL || lib->nentries == 0)
        return 0;
    dyninfo d;
    layout l;
    if (!read_dynamic(info, &d, &l))
        return 0;
    for (int i = 0; i < lib->nentries; i++) {
        got_entry *e = &lib->entries[i];
        if (*(void **)e->slot == e->ours)
            writable_store(&l, e->slot, e->orig);
        else
            st->left = 1; /* someone changed it since: theirs stays */
    }
    lib->nentries = 0;
    return 0;
}

int nat_got_restore(void) {
    restore_state st = {0};
    dl_iterate_phdr(restore_one, &st);
    for (size_t i = 0; i < g_nlibs; i++) {
        free(g_libs[i].name);
        free(g_libs[i].why);
    }
    free(g_libs);
    g_libs = NULL;
    g_nlibs = g_cap_libs = 0;
    g_adds = g_subs = ~0ULL;
    return st.left;
}

void nat_got_counts(uint64_t *libraries, uint64_t *entries) {
    *libraries = *entries = 0;
    for (size_t i = 0; i < g_nlibs; i++) {
        if (g_libs[i].nentries > 0) {
            (*libraries)++;
            *entries += (uint64_t)g_libs[i].nentries;
        }
    }
}

uint64_t nat_got_memory(void) { return (uint64_t)g_cap_libs * sizeof *g_libs; }

size_t nat_got_describe(char *buf, size_t len) {
    size_t need = 0, used = 0; /* used: whole lines copied into buf */
    char line[1024];
    for (size_t i = 0; i < g_nlibs; i++) {
        got_lib *lib = &g_libs[i];
        int n = lib->why ? snprintf(line, sizeof line, "S\t%s\t%s\n", lib->name, lib->why)
                         : snprintf(line, sizeof line, "R\t%s\t%d\n", lib->name, lib->nentries);
        if (n < 0)
            continue;
        size_t ln = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
        if (buf != NULL && used == need && used + ln < len) {
            memcpy(buf + used, line, ln);
            used += ln;
        }
        need += ln;
    }
    if (buf != NULL && len > 0)
        buf[used] = '\0';
    return need;
}
