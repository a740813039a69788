/*
 * native_frames.c: the native call stack of a native sample (hs_native_start with
 * HS_NATIVE_FRAMES), as return addresses, interned so that a stack key holds one id.
 *
 * Taken inside malloc, on whatever thread allocated, with or without the GIL, maybe in a
 * signal handler: so the walk takes no lock, allocates nothing, calls nothing that could
 * (no backtrace(), whose first call loads libgcc; no pthread_getattr_np, which allocates
 * and reads /proc) and never faults.
 *
 * The first frame is always there: the return address of the hooked call, read from our
 * hook's own frame (every hook that may sample has a frame pointer). The next ones follow
 * the caller's frame pointers, which only code built with them keeps (-fno-omit-frame-
 * pointer); in code built without, %rbp is just another register, so each candidate is
 * checked before it is read:
 *  - it lies above the previous one (stacks grow down: callers' frames are higher), is
 *    8-byte aligned, and within this thread's stack: from our hook's frame up to the
 *    thread's descriptor (the thread pointer: glibc puts it right above the stack of
 *    every thread it created) or, for the main thread, up to __libc_stack_end. A thread
 *    on a stack of neither kind (a coroutine library's, a signal stack) gets its first
 *    frame only;
 *  - the pages it is read from were seen readable by process_vm_readv on ourselves (one
 *    byte of each page, one call for up to 64 pages: a call that cannot fault), so a
 *    stray %rbp, or a stack with a hole, ends the walk instead of crashing the target.
 *    Where process_vm_readv is refused (a seccomp filter), only the first frame is kept.
 * The pages checked are the thread's own stack, which cannot go away while the thread
 * runs on it. The one case left: a thread running on a stack of its own making that lies
 * within 64 MiB below its descriptor, whose walk may cross other mappings; one of those
 * unmapped by another thread between the probe and the read (microseconds) would fault.
 * A garbage %rbp that happens to point into that stack yields a few wrong
 * frames at the root end, which heapspy shows as they symbolize (or as addresses).
 *
 * Interning: a hash table of sequences under a spin lock of its own (held for a lookup or
 * an insert, never across a call that could sample), grown with libc's allocator (this
 * library's GOT is never rewritten, and the hooks pass straight through on this thread
 * while t_guard is set by the caller).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "hs_common.h"
#include "native_hooks.h"
#include "native_internal.h"

#define HS_EXPORT __attribute__((visibility("default")))

#define NF_PAGE 4096u
#define NF_PROBE_PAGES 64u             /* pages one probe checks at most (256 KiB) */
#define NF_PROBE_AHEAD 4u              /* pages a probe checks at least (16 KiB) */
#define NF_MAX_STACK ((uintptr_t)64 << 20) /* farther than this from our frame: not a stack */
#define NF_MAX_PCS (NF_MAX_SETS * 8u)  /* return addresses kept in all (4 MiB) */

static uintptr_t g_stack_end; /* __libc_stack_end: the main thread's stack top */
static pid_t g_self;
static volatile int g_probe_refused;

typedef struct {
    uint64_t hash;
    uint32_t start; /* in g_pcs */
    uint32_t n;
} nf_set;

static nf_set *g_sets; /* id - 1 */
static size_t g_nsets, g_cap_sets;
static uintptr_t *g_pcs;
static size_t g_npcs, g_cap_pcs;
static uint32_t *g_index; /* id, 0: empty; open addressing */
static uint32_t g_index_cap;
static volatile int g_nf_lock;

static void nf_lock(void) {
    while (__atomic_exchange_n(&g_nf_lock, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&g_nf_lock, __ATOMIC_RELAXED))
            sched_yield();
}

static void nf_unlock(void) { __atomic_store_n(&g_nf_lock, 0, __ATOMIC_RELEASE); }

void nf_start(pid_t pid) {
    void **end = dlsym(RTLD_DEFAULT, "__libc_stack_end");
    g_stack_end = end != NULL ? (uintptr_t)*end : 0;
    g_self = pid;
    g_probe_refused = 0;
    __atomic_store_n(&g_nf_lock, 0, __ATOMIC_RELEASE); /* no hook samples now */
    free(g_sets);
    free(g_pcs);
    free(g_index);
    g_sets = NULL;
    g_pcs = NULL;
    g_index = NULL;
    g_nsets = g_cap_sets = g_npcs = g_cap_pcs = 0;
    g_index_cap = 0;
}

/* The end of the run of readable pages starting at `from` (page-aligned), looking at
 * most up to `to`: one process_vm_readv of one byte per page, which stops at the first
 * page it cannot read instead of faulting. */
static uintptr_t readable_until(uintptr_t from, uintptr_t to) {
    struct iovec local[NF_PROBE_PAGES], remote[NF_PROBE_PAGES];
    char sink[NF_PROBE_PAGES];
    uintptr_t pages = (to - from + NF_PAGE - 1) / NF_PAGE;
    if (pages > NF_PROBE_PAGES)
        pages = NF_PROBE_PAGES;
    for (uintptr_t i = 0; i < pages; i++) {
        local[i].iov_base = &sink[i];
        local[i].iov_len = 1;
        remote[i].iov_base = (void *)(from + i * NF_PAGE);
        remote[i].iov_len = 1;
    }
    int saved = errno;
    long got = syscall(SYS_process_vm_readv, g_self, local, pages, remote, pages, 0ul);
    if (got < 0 && (errno == EPERM || errno == ENOSYS || errno == EACCES))
        g_probe_refused = 1;
    errno = saved;
    return got > 0 ? from + (uintptr_t)got * NF_PAGE : from;
}

int nf_walk(void *frame, uintptr_t *pcs, int max) {
    const uintptr_t *hook = frame;
    int n = 0;
    pcs[n++] = hook[1];
#if defined(__x86_64__) || defined(__aarch64__)
    uintptr_t lo = (uintptr_t)frame, tp = nat_self_tp(), hi;
    if (lo < tp && tp - lo <= NF_MAX_STACK)
        hi = tp;
    else if (g_stack_end != 0 && lo < g_stack_end && g_stack_end - lo <= NF_MAX_STACK)
        hi = g_stack_end;
    else
        return n;
    /* our hook's frame is readable (we run on it), to the end of its page */
    uintptr_t seen = (lo & ~(uintptr_t)(NF_PAGE - 1)) + NF_PAGE;
    uintptr_t prev = lo, fp = hook[0];
    while (n < max) {
        if (fp <= prev || (fp & 7) != 0 || fp > hi - 16)
            break;
        if (fp + 16 > seen) {
            if (g_probe_refused || fp + 16 - seen > NF_PROBE_PAGES * NF_PAGE)
                break;
            /* ahead of need: a stack is one mapping, so one call usually covers the
             * rest of the walk (a page at a time cost a call per page crossed) */
            uintptr_t want = seen + NF_PROBE_AHEAD * NF_PAGE;
            seen = readable_until(seen, fp + 16 > want ? fp + 16 : want < hi ? want : hi);
            if (fp + 16 > seen)
                break;
        }
        const uintptr_t *f = (const uintptr_t *)fp;
        uintptr_t ra = f[1];
        if (ra < NF_PAGE)
            break;
        pcs[n++] = ra;
        prev = fp;
        fp = f[0];
    }
#endif
    return n;
}

static uint64_t pcs_hash(const uintptr_t *pcs, int n) {
    uint64_t h = hs_mix64((uint64_t)n);
    for (int i = 0; i < n; i++)
        h = hs_mix64(h ^ (uint64_t)pcs[i]);
    return h | 1;
}

static int index_grow(void) {
    uint32_t cap = g_index_cap ? g_index_cap * 2 : 1024;
    uint32_t *idx = calloc(cap, sizeof *idx);
    if (idx == NULL)
        return 0;
    for (size_t id = 1; id <= g_nsets; id++) {
        uint32_t i = (uint32_t)g_sets[id - 1].hash & (cap - 1);
        while (idx[i])
            i = (i + 1) & (cap - 1);
        idx[i] = (uint32_t)id;
    }
    free(g_index);
    g_index = idx;
    g_index_cap = cap;
    return 1;
}

uint32_t nf_intern(const uintptr_t *pcs, int n) {
    if (n <= 0)
        return 0;
    uint64_t h = pcs_hash(pcs, n);
    uint32_t id = 0;
    nf_lock();
    if ((g_nsets + 1) * 2 > g_index_cap && g_nsets < NF_MAX_SETS && !index_grow())
        goto out;
    uint32_t mask = g_index_cap - 1, i = (uint32_t)h & mask;
    for (uint32_t v; g_index_cap && (v = g_index[i]) != 0; i = (i + 1) & mask) {
        const nf_set *s = &g_sets[v - 1];
        if (s->hash == h && s->n == (uint32_t)n &&
            memcmp(g_pcs + s->start, pcs, (size_t)n * sizeof *pcs) == 0) {
            id = v;
            goto out;
        }
    }
    if (g_nsets >= NF_MAX_SETS || g_npcs + (size_t)n > NF_MAX_PCS ||
        !hs_reserve((void **)&g_sets, &g_cap_sets, g_nsets + 1, sizeof *g_sets) ||
        !hs_reserve((void **)&g_pcs, &g_cap_pcs, g_npcs + (size_t)n, sizeof *g_pcs))
        goto out;
    memcpy(g_pcs + g_npcs, pcs, (size_t)n * sizeof *pcs);
    g_sets[g_nsets] = (nf_set){h, (uint32_t)g_npcs, (uint32_t)n};
    g_npcs += (size_t)n;
    id = (uint32_t)++g_nsets;
    g_index[i] = id;
out:
    nf_unlock();
    return id;
}

int nf_probe_refused(void) { return g_probe_refused; }

uint64_t nf_memory(void) {
    return (uint64_t)(g_cap_sets * sizeof *g_sets + g_cap_pcs * sizeof *g_pcs +
                      (size_t)g_index_cap * sizeof *g_index);
}

HS_EXPORT int hs_native_frames(uint32_t id, uint64_t *out, int max) {
    if (!nat_same_process()) /* a forked child: the lock may be a vanished thread's */
        __atomic_store_n(&g_nf_lock, 0, __ATOMIC_RELEASE);
    int n = 0;
    nf_lock();
    if (id >= 1 && id <= g_nsets) {
        const nf_set *s = &g_sets[id - 1];
        n = (int)s->n;
        for (int k = 0; k < n && k < max && out != NULL; k++)
            out[k] = (uint64_t)g_pcs[s->start + (uint32_t)k];
    }
    nf_unlock();
    return n;
}
