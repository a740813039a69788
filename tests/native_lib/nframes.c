/*
 * The library of the --native-frames tests: a leak two C calls below the Python line
 * (nf_outer -> nf_leaky_alloc -> malloc), built twice by the tests, with frame pointers
 * (both functions expected under the Python line) and without (at least nf_leaky_alloc,
 * the caller of malloc, whose return address is always recorded). -fno-builtin keeps
 * malloc a call through the GOT; noinline keeps the two frames apart.
 */
#include <stdlib.h>

#define KEEP 65536
static void *kept[KEEP];
static size_t nkept;

static void touch(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

__attribute__((noinline)) void *nf_leaky_alloc(size_t n) {
    void *p = malloc(n);
    touch(p);
    if (p != NULL && nkept < KEEP)
        kept[nkept++] = p;
    return p;
}

/* Keep n bytes until the process exits; 1 when they were allocated. */
__attribute__((noinline)) int nf_outer(size_t n) {
    void *p = nf_leaky_alloc(n);
    touch(p);
    return p != NULL;
}
