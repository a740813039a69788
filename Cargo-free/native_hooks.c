/*
 * native_hooks.c: native allocations, sampled with the same Poisson process and rate as
 * the Python domains of heapspy_shim.c, and folded into its stack table.
 *
 * Two sources (native_hooks.h): the RAW domain (PyMem_RawMalloc & co, which zlib, lzma,
 * bz2 give their libraries) and the C allocator entries of the target's extension modules
 * and shared libraries, redirected in their GOT by native_got.c.
 *
 * RAW without counting twice: pymalloc forwards big MEM/OBJ requests to RAW, and those
 * were already seen by the MEM/OBJ hooks at their requested size. pymalloc calls
 * PyMem_RawMalloc, PyMem_RawCalloc and PyMem_RawFree from a few fixed places, so a RAW
 * hook's return address tells a forwarded call from a direct one: hs_native_start learns
 * these places by calling the allocators below the MEM/OBJ hooks (calibrate), and the RAW
 * hooks skip calls returning there. Nothing is added to the MEM/OBJ path but a wrapper of
 * realloc (pymalloc's realloc may tail-call PyMem_RawRealloc, which then returns to
 * whoever called realloc), which writes its thread's identity into g_pym_owner around the
 * call; the RAW hooks ignore calls made by the thread named there. Only the GIL holder
 * calls MEM/OBJ, so one word suffices, and its readers without the GIL compare it with
 * their own identity, which it can hold only while they write it themselves. Where the
 * places cannot be learnt (3.8's free tail-calls PyMem_RawFree; allocators that are not
 * the interpreter's) or stop being right (a RAW hook installed over ours: every call then
 * returns into it), every MEM/OBJ call that may forward is marked that way instead, at a
 * cost on each free (hs_native_raw_mode says which). When native mode is off the MEM/OBJ
 * hooks chain to pymalloc directly, exactly as before.
 *
 * Without the GIL: RAW and libc's allocator are called from any thread, holding the GIL
 * or not, and from threads native code created. Nothing here takes the GIL. Each thread
 * has a slot in a fixed table found by hashing its thread pointer (no TLS lookup on the
 * fast path): its sampling countdown, its random state and its exact counters, written
 * only by that thread and summed when read. A thread that finds no slot uses a shared one
 * updated atomically. A sample is taken by the thread that allocated: with the calling
 * thread's Python stack when it holds the GIL (its stack is then safe to read, under the
 * same rules as the MEM/OBJ hooks' captures), else attributed to the "[native, no Python
 * stack]" stack. The sampled pointer goes into a map shared by every thread and the
 * per-stack change into an event buffer, both under a small spinlock, taken only when
 * sampling or freeing a block the map may hold; heapspy_shim.c folds the events into the
 * stack table when it is read (hs_read, GIL held).
 *
 * Safety: the fast paths take no lock and call nothing but the real allocator; the slow
 * paths are guarded per thread (a signal handler or our own capture allocating on the same
 * thread passes straight through), check the process id before taking the lock (a forked
 * child switches native mode off instead of waiting on a lock a vanished thread held), and
 * allocate only from libc directly (this library's own GOT is never rewritten). Once any
 * hook was installed the library is pinned (hs_native_pinned): a thread may be inside one,
 * or another tool may have saved one as its "original" and chain to it; hooks reached
 * after detach pass straight through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "heapspy_shim.h"
#include "native_hooks.h"
#include "native_internal.h"

#define HS_EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* ---- CPython, declared by hand (see heapspy_shim.c) ------------------------------ */

typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr);
} py_allocator;

static struct {
    int resolved;
    void (*mem_get)(int, py_allocator *);
    void (*mem_set)(int, py_allocator *);
    void *(*tstate_unchecked)(void);
    void *(*gilstate_this)(void);
} py;

static int py_resolve(void) {
    if (py.resolved)
        return 1;
    *(void **)&py.mem_get = dlsym(RTLD_DEFAULT, "PyMem_GetAllocator");
    *(void **)&py.mem_set = dlsym(RTLD_DEFAULT, "PyMem_SetAllocator");
    *(void **)&py.tstate_unchecked = dlsym(RTLD_DEFAULT, "PyThreadState_GetUnchecked");
    if (py.tstate_unchecked == NULL)
        *(void **)&py.tstate_unchecked = dlsym(RTLD_DEFAULT, "_PyThreadState_UncheckedGet");
    *(void **)&py.gilstate_this = dlsym(RTLD_DEFAULT, "PyGILState_GetThisThreadState");
    py.resolved = py.mem_get && py.mem_set && py.tstate_unchecked && py.gilstate_this;
    return py.resolved;
}

/* Does the calling thread hold the GIL? The thread state CPython calls current is the GIL
 * holder's (a global before 3.12, a thread-local set only while attached since); only
 * this thread can make it equal to this thread's own state. Reads no lock, allocates
 * nothing (pthread_getspecific). */
static int holds_gil(void) {
    void *ts = py.tstate_unchecked();
    return ts != NULL && ts == py.gilstate_this();
}

/* ---- state ---------------------------------------------------------------------- */

static volatile int g_on;         /* hooks account (else pass straight through) */
static int g_raw_installed;       /* our RAW hooks went in and were not taken out by us */
static int g_pym_installed;       /* MEM/OBJ chain through pym_* */
static int g_got_active;          /* GOT entries redirected */
static int g_pinned;
static int g_frames;              /* record native frames with each sample */
static uint32_t *g_nostack_nf;    /* native frames id -> its no-stack stack id + 1 */
static int g_refused_noted;       /* the note that process_vm_readv is refused was made */
static pid_t g_pid;               /* the process native mode was started in */
static uint32_t g_nostack;        /* stack id of samples without a Python stack */
static uint64_t g_seed;
static char g_notes[1024];

static py_allocator g_raw_prev;   /* what RAW chained to before us */
static py_allocator g_pym_orig[2]; /* what MEM/OBJ's hooks chained to before the wrappers */
static uintptr_t g_pym_owner;     /* thread inside a pymalloc call that may reach RAW */

nat_real_fns nat_real;

/* Per-thread slots. */
enum { C_ALLOC, C_BYTES, C_FREE, C_REALLOC, C_N };
#define NAT_PENDING 8
typedef struct {
    uintptr_t owner; /* thread pointer of the owning thread, 0: free */
    int64_t until;   /* bytes left before this thread's next sample */
    uint64_t rng;
    uint32_t npending; /* samples taken without the GIL by a thread that has a Python */
    uint32_t pad;      /* state: given its stack when it takes the GIL back */
    uint64_t c[HS_NNDOMAINS][C_N];
    uintptr_t pending[NAT_PENDING];
    uint64_t spare[8]; /* 256 bytes: a slot's address is the hash shifted, one instruction */
} nat_thread;

#define NAT_TBITS 10
#define NAT_THREADS (1u << NAT_TBITS)
#define NAT_PROBES 16
static nat_thread g_threads[NAT_THREADS];
static nat_thread g_shared; /* threads without a slot: updated atomically */
static uint64_t g_nthreads;

static __thread int t_guard; /* this thread is in a slow path of ours: pass through */
/* Threads whose pending samples wait for PyEval_RestoreThread (NAT_PENDING): while 0, the
 * hook of PyEval_RestoreThread has nothing to look up. */
static uint32_t g_npending_threads;

/* Sampled blocks: pointer -> (stack, size, weight). Linear probing, at most a quarter
 * full. Readers without the lock probe only the home slot of a pointer they are about
 * to free (empty: not sampled), so a map that is replaced by a bigger one stays
 * allocated until the next start (g_retired). */
typedef struct nat_map {
    uint64_t cap, count;
    unsigned shift;
    uintptr_t *keys;
    uint32_t *ids;
    uint32_t *nfs; /* native frames of a sample on the no-stack stack (else 0) */
    uint64_t *sizes;
    double *ws;
    struct nat_map *retired; /* the maps this one replaced */
} nat_map;

#define NAT_MAP_MIN (1u << 10)
#define NAT_MAP_MAX (1u << 22)
static nat_map *volatile g_map;

/* Changes to fold into the stack table under the GIL. */
typedef struct {
    uint32_t id;
    uint32_t kind; /* HS_EV_* (native_hooks.h) */
    uint64_t size;
    double w;
    uint32_t nf; /* id is the no-stack stack: these native frames under it (0: none) */
} nat_event;
#define NAT_EVENTS_MAX (1u << 20)
static nat_event *g_events;
static uint32_t g_nevents, g_cap_events;

static uint64_t g_sampled_count, g_sampled_bytes, g_live_samples, g_live_bytes;
static uint64_t g_nogil_samples, g_dropped; /* under the lock */

static volatile int g_lock;
int nat_restore_hooked;

static inline void lock(void) {
    while (__atomic_exchange_n(&g_lock, 1, __ATOMIC_ACQUIRE)) {
        for (int i = 0; __atomic_load_n(&g_lock, __ATOMIC_RELAXED); i++)
            if (i > 64)
                sched_yield();
    }
}

static inline void unlock(void) { __atomic_store_n(&g_lock, 0, __ATOMIC_RELEASE); }

static int same_process(void);

/* For the exported functions (GIL held): in a forked child the lock may be held by a
 * parent thread that does not exist here; the child is alone with its one thread. */
static void lock_here(void) {
    if (!same_process())
        __atomic_store_n(&g_lock, 0, __ATOMIC_RELEASE);
    lock();
}

/* ---- sampling ------------------------------------------------------------------- */

static uint64_t rng_step(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

/* Bytes until the next sample, with this thread's random state: heapspy_shim.c's
 * draw_left plus one (the +1 makes P(n bytes sampled) exactly 1 - exp(-n / rate)). */
static int64_t draw_gap(uint64_t *s) {
    uint64_t rate = hs__rate();
    if (rate == 0)
        return INT64_MAX;
    if (rate == 1)
        return 1;
    double u = (double)((rng_step(s) >> 11) + 1) * 0x1p-53;
    double gap = -log(u) * (double)rate;
    if (gap >= 0x1p62)
        return (int64_t)1 << 62;
    return (int64_t)gap + 1;
}

static double weight(uint64_t size) {
    uint64_t rate = hs__rate();
    if (rate <= 1)
        return 1.0;
    double p = -expm1(-(double)size / (double)rate);
    return p > 0.0 ? 1.0 / p : 1.0;
}

static nat_thread *thread_claim(uintptr_t tp, uint32_t home) {
    for (uint32_t k = 0; k < NAT_PROBES; k++) {
        nat_thread *t = &g_threads[(home + k) & (NAT_THREADS - 1)];
        uintptr_t owner = __atomic_load_n(&t->owner, __ATOMIC_ACQUIRE);
        if (owner == tp)
            return t;
        if (owner == 0) {
            uint64_t s = g_seed ^ (tp * 0x9E3779B97F4A7C15ULL);
            t->rng = s ? s : 1;
            t->until = draw_gap(&t->rng);
            memset(t->c, 0, sizeof t->c);
            uintptr_t expected = 0;
            if (__atomic_compare_exchange_n(&t->owner, &expected, tp, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                __atomic_add_fetch(&g_nthreads, 1, __ATOMIC_RELAXED);
                return t;
            }
            if (expected == tp)
                return t;
        }
    }
    return &g_shared;
}

static inline nat_thread *thread_slot(void) {
    uintptr_t tp = nat_self_tp();
    uint32_t home = (uint32_t)((tp * 0x9E3779B97F4A7C15ULL) >> (64 - NAT_TBITS));
    nat_thread *t = &g_threads[home];
    if (LIKELY(t->owner == tp))
        return t;
    return thread_claim(tp, home);
}

static inline uint64_t map_slot(const nat_map *m, uintptr_t p) {
    return ((uint64_t)p * 0x9E3779B97F4A7C15ULL) >> m->shift;
}

static nat_map *map_new(uint64_t cap) {
    nat_map *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    m->cap = cap;
    m->shift = 64u - (unsigned)__builtin_ctzll(cap);
    m->keys = calloc(cap, sizeof *m->keys);
    m->ids = malloc(cap * sizeof *m->ids);
    m->nfs = malloc(cap * sizeof *m->nfs);
    m->sizes = malloc(cap * sizeof *m->sizes);
    m->ws = malloc(cap * sizeof *m->ws);
    if (!m->keys || !m->ids || !m->nfs || !m->sizes || !m->ws) {
        free(m->keys);
        free(m->ids);
        free(m->nfs);
        free(m->sizes);
        free(m->ws);
        free(m);
        return NULL;
    }
    return m;
}

static void map_free_all(nat_map *m) {
    while (m != NULL) {
        nat_map *next = m->retired;
        free(m->keys);
        free(m->ids);
        free(m->nfs);
        free(m->sizes);
        free(m->ws);
        free(m);
        m = next;
    }
}

static void map_put(nat_map *m, uintptr_t key, uint32_t id, uint32_t nf, uint64_t size,
                    double w) {
    uint64_t mask = m->cap - 1, i = map_slot(m, key);
    while (m->keys[i] != 0 && m->keys[i] != key)
        i = (i + 1) & mask;
    if (m->keys[i] == 0)
        m->count++;
    m->ids[i] = id;
    m->nfs[i] = nf;
    m->sizes[i] = size;
    m->ws[i] = w;
    __atomic_store_n(&m->keys[i], key, __ATOMIC_RELEASE);
}

/* Under the lock. */
static int map_insert(uintptr_t key, uint32_t id, uint32_t nf, uint64_t size, double w) {
    nat_map *m = g_map;
    if ((m->count + 1) * 4 > m->cap) {
        if (m->cap >= NAT_MAP_MAX)
            return 0;
        nat_map *n = map_new(m->cap * 2);
        if (n == NULL)
            return 0;
        for (uint64_t i = 0; i < m->cap; i++)
            if (m->keys[i])
                map_put(n, m->keys[i], m->ids[i], m->nfs[i], m->sizes[i], m->ws[i]);
        n->retired = m;
        __atomic_store_n(&g_map, n, __ATOMIC_RELEASE);
        m = n;
    }
    map_put(m, key, id, nf, size, w);
    return 1;
}

/* Under the lock; backward-shift deletion (no tombstones, so an empty home slot stays
 * proof of absence for the lock-free probe). */
static int map_remove(uintptr_t key, uint32_t *id, uint32_t *nf, uint64_t *size, double *w) {
    nat_map *m = g_map;
    uint64_t mask = m->cap - 1, i = map_slot(m, key);
    for (;;) {
        uintptr_t k = m->keys[i];
        if (k == 0)
            return 0;
        if (k == key)
            break;
        i = (i + 1) & mask;
    }
    *id = m->ids[i];
    *nf = m->nfs[i];
    *size = m->sizes[i];
    *w = m->ws[i];
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        uintptr_t k = m->keys[j];
        if (k == 0)
            break;
        uint64_t h = map_slot(m, k);
        int stays = (i <= j) ? (h > i && h <= j) : (h > i || h <= j);
        if (!stays) {
            m->ids[i] = m->ids[j];
            m->nfs[i] = m->nfs[j];
            m->sizes[i] = m->sizes[j];
            m->ws[i] = m->ws[j];
            __atomic_store_n(&m->keys[i], k, __ATOMIC_RELEASE);
            i = j;
        }
    }
    __atomic_store_n(&m->keys[i], 0, __ATOMIC_RELEASE);
    m->count--;
    return 1;
}

/* Under the lock. */
static int push_event(uint32_t id, uint32_t nf, int kind, uint64_t size, double w) {
    if (g_nevents == g_cap_events) {
        uint32_t ncap = g_cap_events ? g_cap_events * 2 : 256;
        if (ncap > NAT_EVENTS_MAX)
            return 0;
        nat_event *n = realloc(g_events, (size_t)ncap * sizeof *n);
        if (n == NULL)
            return 0;
        g_events = n;
        g_cap_events = ncap;
    }
    g_events[g_nevents++] = (nat_event){id, (uint32_t)kind, size, w, nf};
    return 1;
}

/* A forked child must not take a lock another (vanished) thread of the parent held. */
static int same_process(void) {
    if (g_pid == 0)
        return 1; /* never started */
    if (LIKELY(getpid() == g_pid))
        return 1;
    g_on = 0;
    return 0;
}

/* frame: the frame of the hook the library called (native_frames.c). */
int nat_same_process(void) { return same_process(); }

static int raw_on_top(void);

static __attribute__((noinline)) void take_sample(nat_thread *t, void *p, size_t size,
                                                  void *frame, int dom) {
    uint64_t rate = hs__rate();
    /* 0 only after hs__native_rate_changed (a drawn countdown stays >= 1): redraw only */
    int redraw = t != &g_shared && t->until == 0;
    if (t != &g_shared)
        t->until = draw_gap(&t->rng);
    else /* threads beyond the table share one countdown: a fixed gap of the mean */
        __atomic_store_n(&g_shared.until, rate ? (int64_t)rate : INT64_MAX / 2, __ATOMIC_RELAXED);
    if (redraw || rate == 0 || t_guard || !g_on || !same_process())
        return;
    t_guard = 1;
    uint32_t id = g_nostack, nf = 0;
    if (g_frames) {
        uintptr_t pcs[HS_NATIVE_MAX_FRAMES];
        nf = nf_intern(pcs, nf_walk(frame, pcs, HS_NATIVE_MAX_FRAMES));
    }
    /* A RAW hook installed over ours (tracemalloc) may call us holding its own lock,
     * which capturing the stack (it may allocate a frame object) would take again: such
     * samples go without a Python stack. */
    int gil = holds_gil() && (dom != HS_NDOM_RAW || raw_on_top());
    int with_stack = gil && hs__capture_stack(&id, nf);
    uint32_t nf_left = with_stack ? 0 : nf; /* the no-stack stack's frames: merged later */
    /* Without the GIL, a thread with a Python state released it around this C call: its
     * Python stack cannot change before it takes the GIL back, where the hook of
     * PyEval_RestoreThread gives the sample that stack. */
    int defer = !gil && t != &g_shared && t->npending < NAT_PENDING &&
                py.gilstate_this() != NULL && nat_restore_hooked;
    double w = weight(size);
    lock();
    if (g_on) {
        if (map_insert((uintptr_t)p, id, nf_left, size, w) &&
            push_event(id, nf_left, HS_EV_ALLOC, size, w)) {
            g_sampled_count++;
            g_sampled_bytes += size;
            g_live_samples++;
            g_live_bytes += size;
            if (!with_stack)
                g_nogil_samples++;
            if (defer) {
                if (t->npending == 0)
                    __atomic_add_fetch(&g_npending_threads, 1, __ATOMIC_RELAXED);
                t->pending[t->npending++] = (uintptr_t)p;
            }
        } else {
            uint32_t i2, f2;
            uint64_t s2;
            double w2;
            map_remove((uintptr_t)p, &i2, &f2, &s2, &w2); /* no half-recorded sample */
            g_dropped++;
        }
    }
    unlock();
    t_guard = 0;
}

static inline void account(int dom, void *p, size_t size, void *frame) {
    nat_thread *t = thread_slot();
    if (UNLIKELY(t == &g_shared)) {
        __atomic_add_fetch(&t->c[dom][C_ALLOC], 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&t->c[dom][C_BYTES], size, __ATOMIC_RELAXED);
        if (p != NULL && __atomic_sub_fetch(&t->until, (int64_t)size, __ATOMIC_RELAXED) <= 0)
            take_sample(t, p, size, frame, dom);
        return;
    }
    t->c[dom][C_ALLOC]++;
    t->c[dom][C_BYTES] += size;
    if (LIKELY(size < (uint64_t)t->until))
        t->until -= (int64_t)size;
    else if (p != NULL && size != 0)
        take_sample(t, p, size, frame, dom);
}

static inline void count(int dom, int what) {
    nat_thread *t = thread_slot();
    if (UNLIKELY(t == &g_shared))
        __atomic_add_fetch(&t->c[dom][what], 1, __ATOMIC_RELAXED);
    else
        t->c[dom][what]++;
}

/* May ptr be a sampled block? One lock-free probe of its home slot. */
static inline int maybe_sampled(void *ptr) {
    nat_map *m = __atomic_load_n(&g_map, __ATOMIC_ACQUIRE);
    return m != NULL && __atomic_load_n(&m->keys[map_slot(m, (uintptr_t)ptr)], __ATOMIC_ACQUIRE) != 0;
}

typedef struct {
    int found;
    uint32_t id, nf;
    uint64_t size;
    double w;
} nat_entry;

/* Take ptr out of the map before the block is released: once released, its address may
 * come back from another thread's allocation and be sampled again. */
static __attribute__((noinline)) nat_entry forget(void *ptr) {
    nat_entry e = {0, 0, 0, 0, 0.0};
    if (t_guard || !same_process())
        return e;
    t_guard = 1;
    lock();
    if (g_on && map_remove((uintptr_t)ptr, &e.id, &e.nf, &e.size, &e.w))
        e.found = 1;
    unlock();
    t_guard = 0;
    return e;
}

/* The block is gone: account its free. */
static __attribute__((noinline)) void forgotten(nat_entry e) {
    if (!e.found || t_guard)
        return;
    t_guard = 1;
    lock();
    if (g_on) {
        if (!push_event(e.id, e.nf, HS_EV_FREE, e.size, e.w))
            g_dropped++;
        g_live_samples--;
        g_live_bytes -= e.size;
    }
    unlock();
    t_guard = 0;
}

/* A realloc failed: the old block and its sample stay. */
static __attribute__((noinline)) void remember(void *ptr, nat_entry e) {
    if (!e.found || t_guard)
        return;
    t_guard = 1;
    lock();
    if (g_on && !map_insert((uintptr_t)ptr, e.id, e.nf, e.size, e.w))
        g_dropped++;
    unlock();
    t_guard = 0;
}

static inline void on_free(int dom, void *ptr) {
    count(dom, C_FREE);
    if (UNLIKELY(maybe_sampled(ptr)))
        forgotten(forget(ptr));
}

/* What a hook that may sample passes down: its own frame, where the return address into
 * the library that called it and that library's frame pointer are (native_frames.c).
 * Asking for it gives the function a frame pointer: the GOT hooks of malloc, calloc and
 * free ask only in their slow paths, which their frameless common case tail-calls (so
 * the slow path's frame holds the library's return address, as the hook's would). */
#define HOOK_FRAME __builtin_frame_address(0)

/* ---- RAW domain ----------------------------------------------------------------- */

/* What pymalloc forwards to RAW, told apart from direct RAW calls (see the top of this
 * file). RAW hooks are called through a function pointer by PyMem_RawMalloc & co, which
 * pymalloc calls from a few fixed places; the hook's return address is one of them.
 * hs_native_start learns these places (calibrate) and the hooks compare. */
enum { RK_MALLOC, RK_CALLOC, RK_FREE, RK_N };
#define NAT_SITES 4
static void *g_sites[RK_N][NAT_SITES]; /* only ever added to: code does not move */
static int g_nsites[RK_N];
static int g_raw_mode;                 /* HS_RAW_* below: how forwarded calls are told apart */
#define HS_RAW_SITES 1                 /* by return address; reallocs marked per call */
#define HS_RAW_MARKED 2                /* every call that may forward marked (pym_*) */

/* Calibration: the RAW hooks of the calibrating thread record their return addresses
 * (phase 0: pymalloc's calls, phase 1: direct calls of PyMem_Raw*). */
static uintptr_t g_cal_tp;
static int g_cal_phase, g_cal_over;
static void *g_cal[2][RK_N][NAT_SITES];
static int g_ncal[2][RK_N];

static __attribute__((noinline)) void cal_record(int kind, void *ret) {
    void **set = g_cal[g_cal_phase][kind];
    int *n = &g_ncal[g_cal_phase][kind];
    for (int i = 0; i < *n; i++)
        if (set[i] == ret)
            return;
    if (*n == NAT_SITES)
        g_cal_over = 1;
    else
        set[(*n)++] = ret;
}

/* Count this RAW call? Not when off, not when the wrappers say this thread is inside a
 * pymalloc call, not when it returns into pymalloc. */
static inline int raw_counts(int kind, void *ret) {
    if (UNLIKELY(!g_on)) {
        if (UNLIKELY(g_cal_tp != 0) && g_cal_tp == nat_self_tp() && kind < RK_N)
            cal_record(kind, ret);
        return 0;
    }
    if (__atomic_load_n(&g_pym_owner, __ATOMIC_RELAXED) == nat_self_tp())
        return 0;
    if (kind < RK_N) {
        int n = __atomic_load_n(&g_nsites[kind], __ATOMIC_ACQUIRE);
        for (int i = 0; i < n; i++)
            if (g_sites[kind][i] == ret)
                return 0;
    }
    return 1;
}

#define RK_REALLOC RK_N /* always marked by pym_realloc_* */
#define CALLER __builtin_return_address(0)

static __attribute__((noinline)) void *raw_malloc(void *ctx, size_t size) {
    (void)ctx;
    void *p = g_raw_prev.malloc(g_raw_prev.ctx, size);
    if (raw_counts(RK_MALLOC, CALLER) && p != NULL)
        account(HS_NDOM_RAW, p, size, HOOK_FRAME);
    return p;
}

static __attribute__((noinline)) void *raw_calloc(void *ctx, size_t nelem, size_t elsize) {
    (void)ctx;
    size_t size;
    void *p = g_raw_prev.calloc(g_raw_prev.ctx, nelem, elsize);
    if (raw_counts(RK_CALLOC, CALLER) && p != NULL && !__builtin_mul_overflow(nelem, elsize, &size))
        account(HS_NDOM_RAW, p, size, HOOK_FRAME);
    return p;
}

static __attribute__((noinline)) void *raw_realloc(void *ctx, void *ptr, size_t size) {
    (void)ctx;
    if (!raw_counts(RK_REALLOC, CALLER))
        return g_raw_prev.realloc(g_raw_prev.ctx, ptr, size);
    nat_entry e = {0, 0, 0, 0, 0.0};
    if (ptr != NULL && maybe_sampled(ptr))
        e = forget(ptr);
    void *p = g_raw_prev.realloc(g_raw_prev.ctx, ptr, size);
    if (p == NULL) {
        remember(ptr, e);
        return p;
    }
    if (ptr != NULL) {
        count(HS_NDOM_RAW, C_FREE);
        count(HS_NDOM_RAW, C_REALLOC);
        forgotten(e);
    }
    account(HS_NDOM_RAW, p, size, HOOK_FRAME);
    return p;
}

static __attribute__((noinline)) void raw_free(void *ctx, void *ptr) {
    (void)ctx;
    if (ptr != NULL && raw_counts(RK_FREE, CALLER))
        on_free(HS_NDOM_RAW, ptr);
    g_raw_prev.free(g_raw_prev.ctx, ptr);
}

static int is_ours_raw(const py_allocator *a) {
    return a->malloc == raw_malloc && a->calloc == raw_calloc && a->realloc == raw_realloc &&
           a->free == raw_free;
}

/* Between the MEM/OBJ hooks and pymalloc: mark the calls that may reach RAW, so that the
 * RAW hooks let them pass. HS_RAW_SITES: reallocs only (pymalloc's realloc may end in a
 * tail call of PyMem_RawRealloc, whose return address is then its caller's, anyone's);
 * HS_RAW_MARKED: also malloc and calloc above pymalloc's 512 bytes (less the debug hooks'
 * padding; size 0 too) and every free. ctx: the saved original allocator. */
#define PYM_SMALL 448

static inline uintptr_t pym_enter(void) {
    uintptr_t old = g_pym_owner;
    __atomic_store_n(&g_pym_owner, nat_self_tp(), __ATOMIC_RELAXED);
    return old;
}

static inline void pym_leave(uintptr_t old) { __atomic_store_n(&g_pym_owner, old, __ATOMIC_RELAXED); }

static void *pym_malloc(void *ctx, size_t size) {
    py_allocator *a = ctx;
    if (size - 1 < PYM_SMALL)
        return a->malloc(a->ctx, size);
    uintptr_t old = pym_enter();
    void *p = a->malloc(a->ctx, size);
    pym_leave(old);
    return p;
}

static void *pym_calloc(void *ctx, size_t nelem, size_t elsize) {
    py_allocator *a = ctx;
    size_t size;
    if (!__builtin_mul_overflow(nelem, elsize, &size) && size - 1 < PYM_SMALL)
        return a->calloc(a->ctx, nelem, elsize);
    uintptr_t old = pym_enter();
    void *p = a->calloc(a->ctx, nelem, elsize);
    pym_leave(old);
    return p;
}

static inline void *pym_realloc_with(const py_allocator *a, void *ptr, size_t size) {
    uintptr_t old = pym_enter();
    void *p = a->realloc(a->ctx, ptr, size);
    pym_leave(old);
    return p;
}

static void *pym_realloc(void *ctx, void *ptr, size_t size) {
    return pym_realloc_with(ctx, ptr, size);
}

/* HS_RAW_SITES: only realloc is wrapped, the other three keep the original's context. */
static void *pym_realloc_mem(void *ctx, void *ptr, size_t size) {
    (void)ctx;
    return pym_realloc_with(&g_pym_orig[0], ptr, size);
}

static void *pym_realloc_obj(void *ctx, void *ptr, size_t size) {
    (void)ctx;
    return pym_realloc_with(&g_pym_orig[1], ptr, size);
}

static void pym_free(void *ctx, void *ptr) {
    py_allocator *a = ctx;
    uintptr_t old = pym_enter();
    a->free(a->ctx, ptr);
    pym_leave(old);
}

static int is_ours_pym(const py_allocator *a) {
    return a->malloc == pym_malloc || a->realloc == pym_realloc_mem ||
           a->realloc == pym_realloc_obj;
}

/* GIL held: no MEM/OBJ call runs meanwhile. */
static void pym_install(int mode) {
    for (int i = 0; i < 2; i++) {
        py_allocator *prev = hs__dom_prev(i);
        if (prev == NULL)
            continue;
        if (!is_ours_pym(prev))
            g_pym_orig[i] = *prev;
        py_allocator *o = &g_pym_orig[i];
        py_allocator wrap = {&g_pym_orig[i], pym_malloc, pym_calloc, pym_realloc, pym_free};
        if (mode == HS_RAW_SITES)
            wrap = (py_allocator){o->ctx, o->malloc, o->calloc,
                                  i == 0 ? pym_realloc_mem : pym_realloc_obj, o->free};
        *prev = wrap;
    }
    g_raw_mode = mode;
}

static int same_object(const void *a, const void *b) {
    Dl_info ia, ib;
    return dladdr(a, &ia) != 0 && dladdr(b, &ib) != 0 && ia.dli_fbase == ib.dli_fbase;
}

/* Learn where pymalloc calls RAW from: call the allocators below the MEM/OBJ hooks the
 * ways that reach RAW (big, zero-sized, calloc; each freed), then PyMem_Raw* directly,
 * recording the RAW hooks' return addresses. Usable only if the allocators are the
 * interpreter's own (pymalloc, its debug hooks, tracemalloc: nothing else forwards from
 * elsewhere), no site is in this library (pymalloc tail-called RAW: the real return
 * address is then its caller's) and no direct call returns to a pymalloc site (a
 * PyMem_Raw* that is not a tail call). Our RAW hooks are installed, native mode not on
 * yet, GIL held. 1: the sites were added. */
static int calibrate(void) {
    void *(*rmalloc)(size_t) = NULL, *(*rcalloc)(size_t, size_t) = NULL;
    void (*rfree)(void *) = NULL;
    *(void **)&rmalloc = dlsym(RTLD_DEFAULT, "PyMem_RawMalloc");
    *(void **)&rcalloc = dlsym(RTLD_DEFAULT, "PyMem_RawCalloc");
    *(void **)&rfree = dlsym(RTLD_DEFAULT, "PyMem_RawFree");
    if (rmalloc == NULL || rcalloc == NULL || rfree == NULL)
        return 0;
    memset(g_ncal, 0, sizeof g_ncal);
    g_cal_over = 0;
    for (int i = 0; i < 2; i++) {
        py_allocator *prev = hs__dom_prev(i);
        if (prev == NULL)
            continue;
        py_allocator a = *prev;
        if (!same_object((void *)a.malloc, (void *)py.mem_get) ||
            !same_object((void *)a.calloc, (void *)py.mem_get) ||
            !same_object((void *)a.free, (void *)py.mem_get))
            return 0;
        g_cal_phase = 0;
        __atomic_store_n(&g_cal_tp, nat_self_tp(), __ATOMIC_RELAXED);
        static const size_t sizes[] = {0, 513, 4096}; /* above pymalloc's 512 bytes */
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            void *p = a.malloc(a.ctx, sizes[k]);
            a.free(a.ctx, p);
            p = a.calloc(a.ctx, 1, sizes[k]);
            a.free(a.ctx, p);
        }
        __atomic_store_n(&g_cal_tp, 0, __ATOMIC_RELAXED);
    }
    g_cal_phase = 1;
    __atomic_store_n(&g_cal_tp, nat_self_tp(), __ATOMIC_RELAXED);
    void *p = rmalloc(4096);
    rfree(p);
    p = rcalloc(1, 4096);
    rfree(p);
    __atomic_store_n(&g_cal_tp, 0, __ATOMIC_RELAXED);
    if (g_cal_over)
        return 0;
    for (int k = 0; k < RK_N; k++) {
        for (int i = 0; i < g_ncal[0][k]; i++) {
            void *site = g_cal[0][k][i];
            if (same_object(site, (void *)calibrate))
                return 0;
            for (int d = 0; d < RK_N; d++)
                for (int j = 0; j < g_ncal[1][d]; j++)
                    if (g_cal[1][d][j] == site)
                        return 0;
        }
    }
    for (int k = 0; k < RK_N; k++) { /* room for every new site, or none is added */
        int extra = 0;
        for (int i = 0; i < g_ncal[0][k]; i++) {
            int known = 0;
            for (int j = 0; j < g_nsites[k]; j++)
                known |= g_sites[k][j] == g_cal[0][k][i];
            extra += !known;
        }
        if (g_nsites[k] + extra > NAT_SITES)
            return 0;
    }
    for (int k = 0; k < RK_N; k++) {
        for (int i = 0; i < g_ncal[0][k]; i++) {
            int n = g_nsites[k], known = 0;
            for (int j = 0; j < n; j++)
                known |= g_sites[k][j] == g_cal[0][k][i];
            if (!known) {
                g_sites[k][n] = g_cal[0][k][i];
                __atomic_store_n(&g_nsites[k], n + 1, __ATOMIC_RELEASE);
            }
        }
    }
    return 1;
}

/* Our RAW hooks are the ones PyMem_RawMalloc & co call (GIL held: a sample's slow path).
 * PyMem_GetAllocator takes CPython's allocators lock from 3.12 on (a PyMutex from 3.13,
 * which would let the GIL go while it waits): every other taker holds the GIL too, so
 * it is never contended here. */
static int raw_on_top(void) {
    py_allocator cur;
    py.mem_get(0, &cur);
    return is_ours_raw(&cur);
}

/* Someone hooked RAW over us since the start (tracemalloc.start()): pymalloc's calls now
 * return into their hook, where direct calls return too. Mark every call from now on.
 * GIL held (each read). */
static void raw_check_top(void) {
    if (!g_raw_installed || g_raw_mode != HS_RAW_SITES || !g_on)
        return;
    if (raw_on_top())
        return;
    pym_install(HS_RAW_MARKED);
    nat_note("RAW: another hook was installed over heapspy's (tracemalloc?): what pymalloc "
             "forwards is told apart per call from now on, at a higher cost");
}

/* ---- the GOT hooks -------------------------------------------------------------- */

/* malloc, calloc and free have a fast path for the common case (native mode on, the
 * thread has its slot, not the sampled allocation, not a block the map may hold): count,
 * then tail-call the C library, with no stack frame of our own. As in heapspy_shim.c's
 * hooks, the request is counted before it is made, so the rare one that fails (out of
 * memory) is counted too. Everything else tail-calls the slow path, which then stands in
 * the hook's place: its frame is the one native_frames.c walks from. */
static inline nat_thread *own_slot(void) {
    uintptr_t tp = nat_self_tp();
    nat_thread *t = &g_threads[(tp * 0x9E3779B97F4A7C15ULL) >> (64 - NAT_TBITS)];
    return LIKELY(t->owner == tp) ? t : NULL;
}

/* The empty asm keeps GCC from pairing the two counters into one vector add (five
 * instructions instead of two). */
static inline void count_fast(nat_thread *t, size_t size) {
    t->until -= (int64_t)size;
    t->c[HS_NDOM_MALLOC][C_ALLOC]++;
    __asm__("" : "+r"(size));
    t->c[HS_NDOM_MALLOC][C_BYTES] += size;
}

static __attribute__((noinline)) void *ng_malloc_slow(size_t size) {
    void *p = nat_real.malloc(size);
    if (g_on && p != NULL)
        account(HS_NDOM_MALLOC, p, size, HOOK_FRAME);
    return p;
}

static void *ng_malloc(size_t size) {
    if (LIKELY(g_on)) {
        nat_thread *t = own_slot();
        if (LIKELY(t != NULL) && LIKELY(size < (uint64_t)t->until)) {
            count_fast(t, size);
            return nat_real.malloc(size);
        }
    }
    return ng_malloc_slow(size);
}

static __attribute__((noinline)) void *ng_calloc_slow(size_t nelem, size_t elsize) {
    size_t size;
    void *p = nat_real.calloc(nelem, elsize);
    if (g_on && p != NULL && !__builtin_mul_overflow(nelem, elsize, &size))
        account(HS_NDOM_MALLOC, p, size, HOOK_FRAME);
    return p;
}

static void *ng_calloc(size_t nelem, size_t elsize) {
    size_t size;
    if (LIKELY(g_on) && !__builtin_mul_overflow(nelem, elsize, &size)) {
        nat_thread *t = own_slot();
        if (LIKELY(t != NULL) && LIKELY(size < (uint64_t)t->until)) {
            count_fast(t, size);
            return nat_real.calloc(nelem, elsize);
        }
    }
    return ng_calloc_slow(nelem, elsize);
}

static void *realloc_common(void *ptr, size_t size, void *(*call)(void *, size_t, size_t),
                            size_t n1, size_t n2, void *frame) {
    nat_entry e = {0, 0, 0, 0, 0.0};
    if (ptr != NULL && maybe_sampled(ptr))
        e = forget(ptr);
    void *p = call(ptr, n1, n2);
    if (p == NULL && (size != 0 || ptr == NULL)) {
        remember(ptr, e); /* failed: the old block stays */
        return p;
    }
    if (ptr != NULL) {
        count(HS_NDOM_MALLOC, C_FREE);
        count(HS_NDOM_MALLOC, C_REALLOC);
        forgotten(e);
    }
    if (p != NULL)
        account(HS_NDOM_MALLOC, p, size, frame);
    return p;
}

static void *call_realloc(void *ptr, size_t size, size_t unused) {
    (void)unused;
    return nat_real.realloc(ptr, size);
}

static void *call_reallocarray(void *ptr, size_t n, size_t m) {
    return nat_real.reallocarray(ptr, n, m);
}

static void *ng_realloc(void *ptr, size_t size) {
    if (!g_on)
        return nat_real.realloc(ptr, size);
    return realloc_common(ptr, size, call_realloc, size, 0, HOOK_FRAME);
}

static void *ng_reallocarray(void *ptr, size_t n, size_t m) {
    size_t size;
    if (!g_on || __builtin_mul_overflow(n, m, &size))
        return nat_real.reallocarray(ptr, n, m);
    return realloc_common(ptr, size, call_reallocarray, n, m, HOOK_FRAME);
}

static __attribute__((noinline)) void ng_free_slow(void *ptr) {
    if (g_on && ptr != NULL)
        on_free(HS_NDOM_MALLOC, ptr);
    nat_real.free(ptr);
}

static void ng_free(void *ptr) {
    if (LIKELY(g_on) && LIKELY(ptr != NULL)) {
        nat_thread *t = own_slot();
        if (LIKELY(t != NULL) && LIKELY(!maybe_sampled(ptr))) {
            t->c[HS_NDOM_MALLOC][C_FREE]++;
            return nat_real.free(ptr);
        }
        return ng_free_slow(ptr);
    }
    nat_real.free(ptr);
}

static int ng_posix_memalign(void **out, size_t align, size_t size) {
    int rc = nat_real.posix_memalign(out, align, size);
    if (g_on && rc == 0)
        account(HS_NDOM_MALLOC, *out, size, HOOK_FRAME);
    return rc;
}

static void *ng_aligned_alloc(size_t align, size_t size) {
    void *p = nat_real.aligned_alloc(align, size);
    if (g_on && p != NULL)
        account(HS_NDOM_MALLOC, p, size, HOOK_FRAME);
    return p;
}

static void *ng_memalign(size_t align, size_t size) {
    void *p = nat_real.memalign(align, size);
    if (g_on && p != NULL)
        account(HS_NDOM_MALLOC, p, size, HOOK_FRAME);
    return p;
}

static void *ng_valloc(size_t size) {
    void *p = nat_real.valloc(size);
    if (g_on && p != NULL)
        account(HS_NDOM_MALLOC, p, size, HOOK_FRAME);
    return p;
}

/* Anonymous mappings only: a file mapping is not heap. A munmap is matched by its start
 * address (the whole sampled size counts as freed, even for a partial unmap). */
static void *ng_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    void *p = nat_real.mmap(addr, len, prot, flags, fd, off);
    if (g_on && p != MAP_FAILED && (flags & MAP_ANONYMOUS))
        account(HS_NDOM_MMAP, p, len, HOOK_FRAME);
    return p;
}

static int ng_munmap(void *addr, size_t len) {
    if (g_on && addr != NULL)
        on_free(HS_NDOM_MMAP, addr);
    return nat_real.munmap(addr, len);
}

/* ctypes finds C functions with dlsym and calls them through the pointer, which no GOT
 * entry covers: its dlsym hands out our hook for an allocator function. */
static void *ng_dlsym(void *handle, const char *name) {
    void *p = nat_real.dlsym(handle, name);
    if (g_on && p != NULL) {
        void *hook = nat_got_hook_for(p);
        if (hook != NULL)
            return hook;
    }
    return p;
}

/* The thread holds the GIL again, and its Python stack is still the one it left with:
 * give the samples it took meanwhile that stack (moved off the no-stack stack). A block
 * freed meanwhile is moved too, as an allocation and its free. */
/* Only the owning thread changes its npending, so the count of threads with pending
 * samples goes up and down exactly once per batch. */
static void pending_done(nat_thread *t) {
    if (t->npending != 0)
        __atomic_sub_fetch(&g_npending_threads, 1, __ATOMIC_RELAXED);
    t->npending = 0;
}

static __attribute__((noinline)) void attribute_pending(nat_thread *t) {
    if (t_guard || !same_process()) {
        pending_done(t);
        return;
    }
    t_guard = 1;
    /* One capture per native frames id among the pending samples (usually one). */
    uint32_t nfs[NAT_PENDING], ids[NAT_PENDING], ncap = 0;
    lock();
    nat_map *m = g_map;
    for (uint32_t k = 0; k < t->npending; k++) {
        uintptr_t key = t->pending[k];
        uint64_t mask = m->cap - 1, i = map_slot(m, key);
        while (m->keys[i] != 0 && m->keys[i] != key)
            i = (i + 1) & mask;
        uint32_t nf = m->keys[i] == key ? m->nfs[i] : 0, c = 0;
        while (c < ncap && nfs[c] != nf)
            c++;
        if (c == ncap)
            nfs[ncap++] = nf;
    }
    unlock();
    for (uint32_t c = 0; c < ncap; c++) {
        if (!hs__capture_stack(&ids[c], nfs[c])) {
            pending_done(t);
            t_guard = 0;
            return;
        }
    }
    lock();
    m = g_map;
    for (uint32_t k = 0; g_on && k < t->npending; k++) {
        uintptr_t key = t->pending[k];
        uint64_t mask = m->cap - 1, i = map_slot(m, key);
        while (m->keys[i] != 0 && m->keys[i] != key)
            i = (i + 1) & mask;
        if (m->keys[i] != key || m->ids[i] != g_nostack)
            continue; /* freed and not sampled again, or not ours to move: leave it */
        uint32_t nf = m->nfs[i], c = 0;
        while (c < ncap && nfs[c] != nf)
            c++;
        if (c == ncap)
            continue; /* freed and sampled again meanwhile, with other frames */
        uint64_t size = m->sizes[i];
        double w = m->ws[i];
        if (push_event(g_nostack, nf, HS_EV_UNALLOC, size, w) &&
            push_event(g_nostack, nf, HS_EV_FREE, size, w) &&
            push_event(ids[c], 0, HS_EV_ALLOC, size, w)) {
            m->ids[i] = ids[c];
            m->nfs[i] = 0;
            g_nogil_samples--;
        }
    }
    pending_done(t);
    unlock();
    t_guard = 0;
}

static void (*g_real_restore)(void *);

static __attribute__((noinline)) void restore_slow(void) {
    nat_thread *t = thread_slot();
    if (t->npending != 0)
        attribute_pending(t);
}

/* Called each time a thread takes the GIL back (sqlite3 does around every step): one load
 * decides while no thread has samples pending. */
void nat_restore_hook(void *tstate) {
    g_real_restore(tstate);
    if (UNLIKELY(__atomic_load_n(&g_npending_threads, __ATOMIC_RELAXED) != 0) && g_on)
        restore_slow();
}

const nat_fn nat_fns[] = {
    {"malloc", (void *)ng_malloc, (void **)&nat_real.malloc, 0},
    {"calloc", (void *)ng_calloc, (void **)&nat_real.calloc, 0},
    {"realloc", (void *)ng_realloc, (void **)&nat_real.realloc, 0},
    {"free", (void *)ng_free, (void **)&nat_real.free, 0},
    {"posix_memalign", (void *)ng_posix_memalign, (void **)&nat_real.posix_memalign, 0},
    {"aligned_alloc", (void *)ng_aligned_alloc, (void **)&nat_real.aligned_alloc, 0},
    {"memalign", (void *)ng_memalign, (void **)&nat_real.memalign, 0},
    {"valloc", (void *)ng_valloc, (void **)&nat_real.valloc, 0},
    {"reallocarray", (void *)ng_reallocarray, (void **)&nat_real.reallocarray, 0},
    {"mmap", (void *)ng_mmap, (void **)&nat_real.mmap, 0},
    {"mmap64", (void *)ng_mmap, (void **)&nat_real.mmap, 0},
    {"munmap", (void *)ng_munmap, (void **)&nat_real.munmap, 0},
    {"dlsym", (void *)ng_dlsym, (void **)&nat_real.dlsym, 1},
    {"PyEval_RestoreThread", (void *)nat_restore_hook, (void **)&g_real_restore, 2},
};
const int nat_nfns = (int)(sizeof nat_fns / sizeof nat_fns[0]);

/* ---- life cycle ----------------------------------------------------------------- */

void nat_note(const char *text) {
    size_t used = strlen(g_notes);
    snprintf(g_notes + used, sizeof g_notes - used, "N\t\t%s\n", text);
}

static void reset_session(void) {
    memset(g_threads, 0, sizeof g_threads);
    memset(&g_shared, 0, sizeof g_shared);
    g_nthreads = 0;
    g_npending_threads = 0;
    map_free_all(g_map); /* stopped long ago: no thread probes it any more */
    g_map = NULL;
    free(g_events);
    g_events = NULL;
    g_nevents = g_cap_events = 0;
    g_sampled_count = g_sampled_bytes = g_live_samples = g_live_bytes = 0;
    g_nogil_samples = g_dropped = 0;
    nat_restore_hooked = 0;
    g_notes[0] = '\0';
    g_frames = 0;
    g_refused_noted = 0;
    free(g_nostack_nf);
    g_nostack_nf = NULL;
}

HS_EXPORT int hs_native_abi(void) { return HS_NATIVE_ABI; }

HS_EXPORT int hs_native_report_size(void) { return (int)sizeof(hs_native_report); }

HS_EXPORT int hs_native_pinned(void) { return g_pinned; }

HS_EXPORT int hs_native_raw_mode(void) { return g_raw_mode; }

HS_EXPORT int hs_native_start(unsigned flags) {
    if (hs_state() != HS_STATE_RUNNING)
        return HS_ERR_NOT_RUNNING;
    if (g_on || g_raw_installed || g_pym_installed || g_got_active)
        return HS_ERR_RUNNING;
    if (!py_resolve())
        return HS_ERR_SYMBOLS;
    reset_session();
    g_map = map_new(NAT_MAP_MIN);
    if (g_map == NULL)
        return HS_ERR_NOMEM;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    g_seed = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ULL ^ (uint64_t)getpid();
    g_pid = getpid();
    g_nostack = hs__native_stack(0);
    if (flags & HS_NATIVE_FRAMES) {
        nf_start(g_pid);
        g_nostack_nf = calloc(NF_MAX_SETS + 1, sizeof *g_nostack_nf);
        if (g_nostack_nf == NULL)
            return HS_ERR_NOMEM;
        g_frames = 1;
        nat_note("native frames: walked by frame pointers; a library built without them "
                 "(-O2 omits them) shows only the function that called the allocator");
    }
    if (flags & HS_NATIVE_RAW) {
        /* Our hooks take the previous context as theirs: CPython copies the allocator
         * struct field by field while other threads may call it without the GIL, and a
         * call mixing our function with its context, or its function with ours, then
         * still works (ours ignore the context). */
        py.mem_get(0, &g_raw_prev);
        py_allocator ours = {g_raw_prev.ctx, raw_malloc, raw_calloc, raw_realloc, raw_free};
        g_pinned = 1;
        py.mem_set(0, &ours);
        g_raw_installed = 1;
        /* native mode is not on yet: the hooks pass everything through */
        int sites = calibrate();
        pym_install(sites ? HS_RAW_SITES : HS_RAW_MARKED);
        g_pym_installed = 1;
        if (!sites)
            nat_note("RAW: pymalloc's calls to RAW could not be told apart by where they "
                     "return to: marked per call instead, at a higher cost");
    }
    if (flags & HS_NATIVE_GOT) {
#if defined(__x86_64__)
        char why[256];
        if (nat_got_resolve(why, sizeof why)) {
            g_pinned = 1;
            g_got_active = 1;
            nat_got_scan();
        } else {
            nat_note(why);
        }
#else
        nat_note("native allocations of libraries are not sampled: GOT rewriting is "
                 "implemented for x86_64 only");
#endif
    }
    __atomic_store_n(&g_on, 1, __ATOMIC_RELEASE);
    return HS_OK;
}

HS_EXPORT int hs_native_rescan(void) {
    if (!g_on || !g_got_active)
        return HS_ERR_NOT_RUNNING;
    if (!same_process())
        return HS_ERR_NOT_RUNNING;
    nat_got_scan();
    return HS_OK;
}

/* Take everything out: hooks that are still ours are restored, those someone replaced
 * since are left (they pass straight through from now on). GIL held. */
HS_EXPORT int hs_native_stop(void) {
    int left = 0;
    __atomic_store_n(&g_on, 0, __ATOMIC_RELEASE);
    if (g_got_active) {
        left |= nat_got_restore();
        g_got_active = 0;
    }
    if (g_raw_installed) {
        py_allocator cur;
        py.mem_get(0, &cur);
        if (is_ours_raw(&cur))
            py.mem_set(0, &g_raw_prev);
        else
            left = 1;
        g_raw_installed = 0;
    }
    if (g_pym_installed) {
        for (int i = 0; i < 2; i++) {
            py_allocator *prev = hs__dom_prev(i);
            if (prev != NULL && is_ours_pym(prev))
                *prev = g_pym_orig[i];
        }
        g_pym_installed = 0;
        g_raw_mode = 0;
    }
    lock_here();
    g_nevents = 0;
    unlock();
    return left;
}

/* The rate changed (GIL held): every thread draws a fresh gap at its next allocation.
 * The store races with the owner's own update of its countdown; either value is a valid
 * countdown, so the race only decides whether the old gap runs out first. */
void hs__native_rate_changed(void) {
    if (!g_on)
        return;
    for (uint32_t k = 0; k < NAT_THREADS; k++)
        if (__atomic_load_n(&g_threads[k].owner, __ATOMIC_RELAXED) != 0)
            __atomic_store_n(&g_threads[k].until, 0, __ATOMIC_RELAXED);
    uint64_t rate = hs__rate();
    __atomic_store_n(&g_shared.until, rate ? (int64_t)rate : INT64_MAX / 2, __ATOMIC_RELAXED);
}

void hs__native_on_stop(void) {
    if (g_on || g_raw_installed || g_pym_installed || g_got_active)
        hs_native_stop();
}

/* Fold the events into the stack table (GIL held, from hs_read). */
void hs__native_merge(void) {
    if (!same_process())
        return;
    raw_check_top();
    if (g_events == NULL)
        return;
    lock();
    for (uint32_t i = 0; i < g_nevents; i++) {
        nat_event *e = &g_events[i];
        uint32_t id = e->id;
        if (e->nf != 0 && id == g_nostack && g_nostack_nf != NULL && e->nf <= NF_MAX_SETS) {
            /* the no-stack stack with these frames: interned once, never evicted, so the
             * alloc and the free of one block meet on the same stack */
            if (g_nostack_nf[e->nf] == 0)
                g_nostack_nf[e->nf] = hs__native_stack(e->nf) + 1;
            id = g_nostack_nf[e->nf] - 1;
        }
        hs__stack_event(id, e->size, e->w, (int)e->kind);
    }
    g_nevents = 0;
    unlock();
}

HS_EXPORT int hs_native_read(hs_native_report *out) {
    if (out == NULL)
        return HS_ERR_ARG;
    memset(out, 0, sizeof *out);
    out->abi = HS_NATIVE_ABI;
    out->active = (uint64_t)(g_raw_installed ? 1 : 0) | (uint64_t)(g_got_active ? 2 : 0);
    for (uint32_t k = 0; k <= NAT_THREADS; k++) {
        nat_thread *t = k < NAT_THREADS ? &g_threads[k] : &g_shared;
        if (k < NAT_THREADS && __atomic_load_n(&t->owner, __ATOMIC_ACQUIRE) == 0)
            continue;
        for (int d = 0; d < HS_NNDOMAINS; d++) {
            out->alloc_count[d] += __atomic_load_n(&t->c[d][C_ALLOC], __ATOMIC_RELAXED);
            out->alloc_bytes[d] += __atomic_load_n(&t->c[d][C_BYTES], __ATOMIC_RELAXED);
            out->free_count[d] += __atomic_load_n(&t->c[d][C_FREE], __ATOMIC_RELAXED);
            out->realloc_count[d] += __atomic_load_n(&t->c[d][C_REALLOC], __ATOMIC_RELAXED);
        }
    }
    lock_here();
    out->sampled_count = g_sampled_count;
    out->sampled_bytes = g_sampled_bytes;
    out->live_samples = g_live_samples;
    out->live_sampled_bytes = g_live_bytes;
    out->nogil_samples = g_nogil_samples;
    out->dropped_samples = g_dropped;
    uint64_t mem = (uint64_t)g_cap_events * sizeof *g_events;
    for (nat_map *m = g_map; m != NULL; m = m->retired)
        mem += m->cap * (sizeof *m->keys + sizeof *m->ids + sizeof *m->sizes + sizeof *m->ws);
    unlock();
    nat_got_counts(&out->libraries, &out->entries);
    out->threads = __atomic_load_n(&g_nthreads, __ATOMIC_RELAXED);
    out->shim_memory = mem + nat_got_memory() + (g_frames ? nf_memory() : 0) +
                       (g_nostack_nf != NULL ? (NF_MAX_SETS + 1) * sizeof *g_nostack_nf : 0);
    return HS_OK;
}

HS_EXPORT size_t hs_native_libraries(char *buf, size_t len) {
    if (g_frames && nf_probe_refused() && !g_refused_noted) {
        g_refused_noted = 1;
        nat_note("native frames: process_vm_readv is refused here (a seccomp filter?): "
                 "only the function that called the allocator is recorded");
    }
    size_t notes = strlen(g_notes);
    if (buf != NULL && len > 0) {
        snprintf(buf, len, "%s", g_notes);
        size_t used = notes < len ? notes : len - 1;
        return notes + nat_got_describe(buf + used, len - used);
    }
    return notes + nat_got_describe(NULL, 0);
}
