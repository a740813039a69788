/*
 * native_internal.h: shared by native_hooks.c (accounting, RAW hooks, the GOT hooks
 * themselves) and native_got.c (finding and rewriting the GOT entries). Hidden symbols.
 */
#ifndef HEAPSPY_NATIVE_INTERNAL_H
#define HEAPSPY_NATIVE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <pthread.h>

/* The calling thread's thread pointer: its identity, read without a TLS lookup. On
 * x86_64 glibc it is also the address of the thread's descriptor, which sits right above
 * its stack for every thread but the main one (native_frames.c relies on that). */
static inline uintptr_t nat_self_tp(void) {
#if defined(__x86_64__)
    uintptr_t tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    return tp;
#elif defined(__aarch64__)
    uintptr_t tp;
    __asm__ volatile("mrs %0, tpidr_el0" : "=r"(tp));
    return tp;
#else
    return (uintptr_t)pthread_self();
#endif
}

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

/* native_frames.c: native call stacks of samples (HS_NATIVE_FRAMES) */
#define NF_MAX_SETS 65535u /* distinct native stacks kept per session; ids 1..NF_MAX_SETS */
void nf_start(pid_t pid);  /* a new session (no hook is sampling): forget every set */
/* The return addresses above `frame`, the frame of one of our hooks (it has a frame
 * pointer): the hook's own return address, then its callers' as long as their frame
 * pointers stay on this thread's stack, in pages seen readable. Async-signal-safe, never
 * faults, allocates nothing, keeps errno. Returns how many (>= 1). */
int nf_walk(void *frame, uintptr_t *pcs, int max);
/* The id of this sequence (leaf first), interned: 0 when the table is full. Any thread,
 * no GIL; allocates from libc directly (never through a hook). */
uint32_t nf_intern(const uintptr_t *pcs, int n);
uint64_t nf_memory(void);
int nf_probe_refused(void); /* process_vm_readv was refused: first frames only */

/* native_hooks.c */
int nat_same_process(void); /* 0 in a forked child: native mode is off there */
void nat_note(const char *text); /* a process-wide note for hs_native_libraries */
void nat_restore_hook(void *tstate); /* our PyEval_RestoreThread */
extern int nat_restore_hooked;       /* some library's PyEval_RestoreThread entry is ours */

#endif
