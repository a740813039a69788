/*
 * native_internal.h: shared by native_hooks.c (accounting, RAW hooks, the GOT hooks
 * themselves) and native_got.c (finding and rewriting the GOT entries). Hidden symbols.
 */
#ifndef HEAPSPY_NATIVE_INTERNAL_H
#define HEAPSPY_NATIVE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The C library's own functions: what the GOT hooks call, and what a GOT entry must hold
 * (or the library's lazy-binding stub) for us to redirect it. Resolved once, never
 * cleared: a hook reached after detach still has somewhere to go. */
typedef struct {
    void *(*malloc)(size_t);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void (*free)(void *);
    int (*posix_memalign)(void **, size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    void *(*memalign)(size_t, size_t);
    void *(*valloc)(size_t);
    void *(*reallocarray)(void *, size_t, size_t);
    void *(*mmap)(void *, size_t, int, int, int, off_t);
    int (*munmap)(void *, size_t);
    void *(*dlsym)(void *, const char *);
} nat_real_fns;

extern nat_real_fns nat_real;

/* One redirectable function: its name, our hook, where its real address lives. */
typedef struct {
    const char *name;
    void *hook;
    void **real;
    int only; /* 1: only in ctypes' own module (dlsym); 2: resolved from the process, not
                 libc, and optional (PyEval_RestoreThread) */
} nat_fn;

extern const nat_fn nat_fns[];
extern const int nat_nfns;

/* native_got.c */
int nat_got_resolve(char *why, size_t whylen); /* 1: libc's functions found, no interposer */
void nat_got_scan(void);                       /* redirect libraries not seen yet */
int nat_got_restore(void);                     /* 1: some entry was left (not ours any more) */
size_t nat_got_describe(char *buf, size_t len);
void nat_got_counts(uint64_t *libraries, uint64_t *entries);
uint64_t nat_got_memory(void);
void *nat_got_hook_for(void *real); /* our hook for a real allocator function, else NULL */

/* native_hooks.c */
void nat_note(const char *text); /* a process-wide note for hs_native_libraries */
void nat_restore_hook(void *tstate); /* our PyEval_RestoreThread */
extern int nat_restore_hooked;       /* some library's PyEval_RestoreThread entry is ours */

#endif
