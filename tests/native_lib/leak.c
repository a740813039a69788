/*
 * A small C library for the native-allocation tests: it allocates with the C library's
 * functions, through its own GOT (built with -fno-builtin so that no call is folded away).
 * Called via ctypes (which releases the GIL around each call) and from leakext.c (a
 * compiled extension that keeps the GIL).
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define KEEP 65536
static void *kept[KEEP];
static size_t nkept;

static void touch(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

/* Allocate n bytes and keep them until release_all(); NULL when the table is full. */
void *leak(size_t n) {
    if (nkept == KEEP)
        return NULL;
    void *p = malloc(n);
    touch(p);
    kept[nkept++] = p;
    return p;
}

void release_all(void) {
    for (size_t i = 0; i < nkept; i++)
        free(kept[i]);
    nkept = 0;
}

/* One call of each allocator function, each freed: 8 allocations (one of them a realloc,
 * one a reallocarray), 7 frees, 2 reallocs. */
void each_function(size_t n) {
    void *a = calloc(4, n / 4);
    a = realloc(a, n * 2);
    void *b = NULL;
    if (posix_memalign(&b, 64, n) != 0)
        b = NULL;
    void *c = aligned_alloc(64, n);
    void *d = memalign(64, n);
    void *e = valloc(n);
    void *f = malloc(n);
    f = reallocarray(f, 2, n);
    touch(a), touch(b), touch(c), touch(d), touch(e), touch(f);
    free(a), free(b), free(c), free(d), free(e), free(f);
}

/* An anonymous mapping and its unmapping. */
void map_unmap(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    touch(p);
    if (p != MAP_FAILED)
        munmap(p, n);
}

/* What this library's GOT holds for malloc (a GLOB_DAT load): our hook while native mode
 * runs, the C library's malloc otherwise. */
void *malloc_entry(void) {
    void *(*volatile f)(size_t) = malloc;
    return (void *)f;
}

/* Threads of our own (no Python state, no GIL) allocating and freeing. */
typedef struct {
    size_t iters, size;
} storm_arg;

static void *storm_thread(void *arg) {
    storm_arg *a = arg;
    for (size_t i = 0; i < a->iters; i++) {
        void *p = malloc(a->size + (i & 7));
        touch(p);
        p = realloc(p, a->size * 2);
        touch(p);
        free(p);
    }
    return NULL;
}

/* nthreads threads, each iters x (malloc, realloc, free); returns when all are done. */
int storm(int nthreads, size_t iters, size_t size) {
    pthread_t t[64];
    storm_arg a = {iters, size};
    if (nthreads > 64)
        nthreads = 64;
    int started = 0;
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&t[i], NULL, storm_thread, &a) == 0)
            started++;
    for (int i = 0; i < started; i++)
        pthread_join(t[i], NULL);
    return started;
}

/* A storm in the background until storm_stop(). */
static volatile int bg_stop;
static pthread_t bg[64];
static int nbg;

static void *bg_thread(void *arg) {
    size_t size = (size_t)arg;
    while (!bg_stop) {
        void *p = malloc(size);
        touch(p);
        p = realloc(p, size * 3);
        free(p);
        void *q = calloc(1, size);
        free(q);
    }
    return NULL;
}

int storm_start(int nthreads, size_t size) {
    bg_stop = 0;
    nbg = 0;
    for (int i = 0; i < nthreads && i < 64; i++)
        if (pthread_create(&bg[nbg], NULL, bg_thread, (void *)size) == 0)
            nbg++;
    return nbg;
}

void storm_stop(void) {
    bg_stop = 1;
    for (int i = 0; i < nbg; i++)
        pthread_join(bg[i], NULL);
    nbg = 0;
}
