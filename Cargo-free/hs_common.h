/*
 * hs_common.h: the small helpers every C file of the shim library shares (each file is
 * its own translation unit and resolves its own C-API; these need nothing from Python).
 */
#ifndef HS_COMMON_H
#define HS_COMMON_H

#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* A symbol of the process (the interpreter's C-API, libc's), wherever it is defined:
 * NULL when absent. The includer defines _GNU_SOURCE first, for RTLD_DEFAULT. */
static inline void *hs_sym(const char *name) { return dlsym(RTLD_DEFAULT, name); }

/* A 64-bit finaliser (MurmurHash3's fmix64): spreads pointers and ids over hash slots. */
static inline uint64_t hs_mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* Make *buf hold at least `need` items of `item` bytes, doubling from 64; 0 when out of
 * memory (the buffer is then unchanged). */
static inline int hs_reserve(void **buf, size_t *cap, size_t need, size_t item) {
    if (need <= *cap)
        return 1;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *p = realloc(*buf, n * item);
    if (p == NULL)
        return 0;
    *buf = p;
    *cap = n;
    return 1;
}

#endif
