/*
 * heapspy_shim.c: sampling allocation hooks for CPython 3.8-3.14, without Python.h.
 *
 * The shim hooks the MEM and OBJ allocator domains (both are called with the GIL held) and
 * leaves RAW alone. Every allocation is counted exactly; about one per `rate` bytes is
 * sampled the way Go's runtime samples (the gap between samples is exponential with mean
 * `rate`), and for a sampled block it records the Python stack and keeps the pointer so
 * that its free can be accounted. ABI and data layout: heapspy_shim.h.
 *
 * One build serves every interpreter because it never includes Python.h: the few C-API
 * functions used are looked up with dlsym() in the running process, and the only layouts
 * relied on are PyMemAllocatorEx (unchanged since 3.5) and, on 3.8 only, the first fields
 * of PyThreadState and PyFrameObject (3.8 has no PyFrame_GetBack/PyFrame_GetCode).
 *
 * Concurrency: the hooks and every hs_* function run with the GIL held, which serialises
 * all of them; that is why the sampling countdown and the tables are plain globals (a
 * global countdown is a single Poisson process over the process's allocated bytes, with
 * the same statistics as per-thread ones, and costs no TLS lookup). The one thread-local
 * is the reentrancy guard: while a thread captures a stack, the allocations that capture
 * makes (frame objects on 3.11+) go straight to the previous allocator; a global mode
 * word says whether any capture is under way, so the common path never reads the TLS.
 *
 * The estimate: each sample of n bytes weighs 1 / (1 - exp(-n / rate)), Go's pprof scale
 * for a single allocation; per stack the shim sums raw and weighted values. Go applies the
 * scale to (count, bytes) of a bucket keyed by stack *and size*; our stacks are not keyed
 * by size, and the per-sample sum is the same estimator without the bias Go's formula
 * would have on a stack mixing sizes (measured: -17 % on a line allocating 1000-byte and
 * 1 MiB objects), and it stays right across live rate changes.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "frame_walk.h"
#include "heapspy_labels.h"
#include "hs_common.h"
#include "heapspy_shim.h"
#include "native_hooks.h"

#define HS_EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

#define HS_MAX_FRAMES 512
#define HS_MAX_STACKS (1u << 24)
#define HS_FRAMES_PER_STACK 16     /* frame storage budget: max_stacks * this */
#define HS_MAP_MIN (1u << 10)      /* pointer map slots at start */
#define HS_MAP_MAX (1u << 23)      /* at most a quarter full: 2M live samples, 224 MiB */

/* ---- what we need from CPython, declared by hand ---------------------------------- */

/* PyMemAllocatorEx, Include/cpython/pymem.h: identical in 3.5-3.14. */
typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr);
} py_allocator;

/* PyMemAllocatorDomain. */
enum { PYMEM_DOMAIN_RAW = 0, PYMEM_DOMAIN_MEM = 1, PYMEM_DOMAIN_OBJ = 2 };

static struct {
    int resolved;
    int minor;
    int free_threaded;
    void (*mem_get)(int, py_allocator *);
    void (*mem_set)(int, py_allocator *);
    void *(*tstate_unchecked)(void);
    void *(*tstate_get_frame)(void *);   /* 3.9+ */
    void *(*tstate_get_interp)(void *);  /* 3.9+ */
    void *(*eval_get_frame)(void);       /* 3.8 */
    void *(*frame_get_back)(void *);     /* 3.9+ */
    void *(*frame_get_code)(void *);     /* 3.9+ */
    int (*frame_get_line)(void *);
    int (*frame_get_lasti)(void *);      /* 3.11+ */
    int (*code_addr2line)(void *, int);  /* 3.11+: with frame_get_lasti, lines at drain */
    void *(*interp_main)(void);
    void *(*interp_head)(void);
    void *(*interp_next)(void *);
    int (*gc_disable)(void);             /* 3.10+ */
    int (*gc_enable)(void);
    void *(*err_occurred)(void);
    void (*err_fetch)(void **, void **, void **);
    void (*err_restore)(void *, void *, void *);
    void (*incref)(void *);
    void (*decref)(void *);
    int (*gil_check)(void);
    /* 3.8: offsets into PyFrameObject (after PyObject_VAR_HEAD) and PyThreadState. */
    size_t off_f_back, off_f_code, off_ts_interp;
} api;

#define RESOLVE(field, name) (*(void **)(&api.field) = hs_sym(name))

static int resolve_api(void) {
    if (api.resolved)
        return HS_OK;
    const char *(*get_version)(void);
    *(void **)(&get_version) = hs_sym("Py_GetVersion");
    if (get_version == NULL)
        return HS_ERR_SYMBOLS;
    const char *v = get_version();
    if (v == NULL || v[0] != '3' || v[1] != '.')
        return HS_ERR_VERSION;
    int minor = (int)strtol(v + 2, NULL, 10);
    if (minor < 8)
        return HS_ERR_VERSION;
    api.minor = minor;
    /* Defined only in free-threaded builds (Objects/object.c, under Py_GIL_DISABLED). */
    api.free_threaded = hs_sym("_Py_DecRefShared") != NULL || hs_sym("_Py_MergeZeroLocalRefcount") != NULL;

    int ok = 1;
    ok &= RESOLVE(mem_get, "PyMem_GetAllocator") != NULL;
    ok &= RESOLVE(mem_set, "PyMem_SetAllocator") != NULL;
    if (RESOLVE(tstate_unchecked, "PyThreadState_GetUnchecked") == NULL)      /* 3.13+ */
        ok &= RESOLVE(tstate_unchecked, "_PyThreadState_UncheckedGet") != NULL; /* -3.12 */
    ok &= RESOLVE(frame_get_line, "PyFrame_GetLineNumber") != NULL;
    ok &= RESOLVE(interp_main, "PyInterpreterState_Main") != NULL;
    ok &= RESOLVE(interp_head, "PyInterpreterState_Head") != NULL;
    ok &= RESOLVE(interp_next, "PyInterpreterState_Next") != NULL;
    ok &= RESOLVE(err_occurred, "PyErr_Occurred") != NULL;
    ok &= RESOLVE(err_fetch, "PyErr_Fetch") != NULL;
    ok &= RESOLVE(err_restore, "PyErr_Restore") != NULL;
    ok &= RESOLVE(incref, "Py_IncRef") != NULL;
    ok &= RESOLVE(decref, "Py_DecRef") != NULL;
    ok &= RESOLVE(gil_check, "PyGILState_Check") != NULL;
    if (minor == 8) {
        ok &= RESOLVE(eval_get_frame, "PyEval_GetFrame") != NULL;
        /* PyFrameObject starts with PyObject_VAR_HEAD (24 bytes, 40 with Py_TRACE_REFS,
         * recognisable by _Py_PrintReferences), then f_back, then f_code. PyThreadState
         * starts with prev, next, interp. Include/frameobject.h, cpython/pystate.h. */
        size_t head = hs_sym("_Py_PrintReferences") != NULL ? 40 : 24;
        api.off_f_back = head;
        api.off_f_code = head + sizeof(void *);
        api.off_ts_interp = 2 * sizeof(void *);
    } else {
        ok &= RESOLVE(tstate_get_frame, "PyThreadState_GetFrame") != NULL;
        ok &= RESOLVE(tstate_get_interp, "PyThreadState_GetInterpreter") != NULL;
        ok &= RESOLVE(frame_get_back, "PyFrame_GetBack") != NULL;
        ok &= RESOLVE(frame_get_code, "PyFrame_GetCode") != NULL;
    }
    if (minor >= 11) {
        /* 3.11 can run a collection inside the allocation of a frame object. */
        ok &= RESOLVE(gc_disable, "PyGC_Disable") != NULL;
        ok &= RESOLVE(gc_enable, "PyGC_Enable") != NULL;
        /* optional: stacks by instruction, lines found at drain (g_lines_at_drain) */
        RESOLVE(frame_get_lasti, "PyFrame_GetLasti");
        RESOLVE(code_addr2line, "PyCode_Addr2Line");
    }
    if (!ok)
        return HS_ERR_SYMBOLS;
    api.resolved = 1;
    return HS_OK;
}

/* ---- state ---------------------------------------------------------------------- */

typedef struct {
    py_allocator prev; /* what was installed before us: we chain to it */
    int domain;        /* PYMEM_DOMAIN_MEM or PYMEM_DOMAIN_OBJ */
    int installed;     /* our hooks went in and have not been taken out by us */
    /* Allocations: the sum of size_classes. frees: free() calls; a realloc's free is in
     * realloc_count (hs_read adds the two), so that realloc's fast path counts one. */
    uint64_t alloc_bytes, frees, realloc_count;
    uint64_t size_classes[HS_NCLASSES];
} hs_dom;

typedef struct {
    uint64_t hash;
    /* nframes code objects leaf first, then their nframes int32 lines, in one block of
     * its own (freed when the stack is evicted); NULL when nframes is 0. */
    void **codes;
    uint16_t nframes;
    uint8_t flags;
    uint8_t dirty;
    uint8_t reported; /* a drain handed it out: the caller knows its frames */
    uint8_t in_use;   /* 0: a free slot, on the free list (next_free) */
    uint32_t label;   /* label set (heapspy_labels.h): part of the stack's key */
    uint32_t touched; /* drain epoch of its last change (see hs_evict) */
    uint32_t next_free;
    uint32_t native;  /* native frames id (native_hooks.h): part of the stack's key */
    uint64_t alloc_count, alloc_bytes, live_count, live_bytes; /* raw sampled values */
    double est[4]; /* estimated alloc count, alloc bytes, live count, live bytes */
    double var[4]; /* variances of est: a sample of weight w adds w(w-1), w(w-1)size^2 */
} hs_stack;

static inline int32_t *stack_lines(const hs_stack *s) { return (int32_t *)(s->codes + s->nframes); }

/* The two CPython domains we hook, then NumPy's array data (not a PyMem domain). */
static hs_dom g_dom[HS_NDOMAINS] = {
    {.domain = PYMEM_DOMAIN_MEM}, {.domain = PYMEM_DOMAIN_OBJ}, {.domain = -1}};
static int g_state = HS_STATE_IDLE;
/* What the hooks do, read once per call: 0 pass through (stopped, hooks left installed),
 * MODE_ACTIVE account, MODE_ACTIVE|MODE_CAPTURING a stack capture is under way. Under the
 * GIL a hook that sees MODE_CAPTURING is (barring a capture that released the GIL) that
 * capture's own allocation; the thread-local guard confirms it, so the common path never
 * pays for a TLS lookup. */
#define MODE_ACTIVE 1
#define MODE_CAPTURING 2
static int g_mode;
static __thread int t_guard; /* this thread is capturing: pass straight through */

static uint64_t g_rate;
/* The largest allocation that does not reach the next sample (the sampled one is the
 * first with size > g_left; each one that is not takes its size off), and the hooks'
 * one-load gate: it is 0 whenever g_mode is not exactly MODE_ACTIVE (stopped, or a
 * capture under way), which sends every allocation of 1 byte or more to the slow path,
 * where the mode is looked at. The fast paths take 1 <= size <= g_left, tested as
 * size - 1 < g_left (unsigned: one compare), so that their size class needs no test
 * for sizes 0 and 1 (size_class_fast). */
static int64_t g_left;
static uint64_t g_rng;
static int g_max_frames;
static void *g_main_interp;

static uint64_t g_sampled_count, g_sampled_bytes, g_live_samples, g_live_bytes;
static uint64_t g_dropped, g_overflow;

/* Stack table: records, an open-addressing index of ids, dirty list. Ids below g_nstacks
 * have been used; evicted ones (hs_evict) are free slots, reused first (g_free_head). */
static hs_stack *g_stacks;
static uint32_t g_nstacks, g_cap_stacks, g_max_stacks, g_used_stacks;
static uint32_t g_free_head; /* id + 1 of the first free slot, 0 = none */
static uint32_t *g_index; /* id + 1, 0 = empty */
static uint32_t g_index_cap;
static uint32_t g_nframes, g_max_frames_total; /* frames held by the stacks in use */
static uint32_t *g_dirty;
static uint32_t g_ndirty;
static uint32_t g_epoch;    /* drains so far */
static uint64_t g_evicted;  /* stacks evicted so far */
static int g_evicting;      /* hs_evict is releasing code objects */
static uint32_t *g_out_evicted;
static size_t g_out_evicted_cap;

/* Line numbers cost most of a capture (CPython scans the code's line table each time:
 * measured on 3.14, three quarters of a sample's instructions, ~10,000 of them, when the
 * leaf's line was not cached). From 3.11 a frame's instruction offset is public, so the
 * capture records offsets instead (g_lines_at_drain): stacks are interned by (code,
 * offset) per frame, and hs_read turns offsets into lines once per stack, when a drain
 * first hands it out, off the allocating thread's path. Lines are cached by (code,
 * offset) for the code objects the stack table holds a reference to (g_cset, with the
 * number of frames holding each): their addresses cannot be reused while held; hs_evict
 * clears the cache when it lets one go, stop clears everything. */
static int g_lines_at_drain;
#define HS_LINE_CACHE 1024
typedef struct {
    void *code;
    int32_t lasti, line;
} hs_line;
static hs_line *g_lcache;
typedef struct {
    void *code;    /* NULL = empty */
    uint32_t refs; /* frames of stacks in use that hold it */
} hs_code;
static hs_code *g_cset; /* open addressing set of interned code objects */
static uint32_t g_cset_cap, g_cset_count;

/* Capture buffer: captures happen one at a time under the GIL (MODE_CAPTURING). */
static void **g_cap_codes;
static int32_t *g_cap_lines;

/* Pointer map: sampled block -> (stack, size, weight); linear probing, key 0 = empty.
 * g_mstacks holds the stack id (< HS_MAX_STACKS = 2**24) and, above it, the block's domain
 * (HS_DOM_*): what hs_live_foreach() reports. */
#define HS_MAP_DOM_SHIFT 24
#define HS_MAP_STACK_MASK ((1u << HS_MAP_DOM_SHIFT) - 1)
static uintptr_t *g_mkeys;
/* The free path's filter: FILTER_PER_SLOT bits per map slot, bit f set while a live
 * sampled block's hash has its top log2(g_mcap * FILTER_PER_SLOT) bits equal to f (its
 * home slot is f / FILTER_PER_SLOT). It answers "not sampled" for almost every free with
 * one load from a table 64x smaller than the keys (1 KiB at the map's least size, L1
 * resident where the keys' 8+ KiB of random probes missed L1 on ~12 % of frees), and
 * FILTER_PER_SLOT times fewer frees reach the probe of an occupied slot. */
#define FILTER_LOG2 3
#define FILTER_PER_SLOT (1u << FILTER_LOG2)
static uint64_t *g_mfilter;
static uint64_t *g_msizes;
static uint32_t *g_mstacks;
static double *g_mweights;
static uint64_t g_mcap, g_mcount;
static unsigned g_mshift; /* 64 - log2(g_mcap): map_slot() keeps the product's top bits */
/* Slot 0 of the map always holds this non-pointer, so that free(NULL) (whose slot is 0)
 * takes the slow path without a test of its own on the fast path. */
#define MAP_SENTINEL ((uintptr_t)1)
/* What hs_free tests: the map's filter while a session runs, else one word of set bits
 * (shift 63: bit 0 or 1), so that the test itself is the "are we running" test. Bit 0 of
 * a live filter is always set: free(NULL) (hash 0) takes the slow path. */
static const uint64_t g_closed[1] = {~(uint64_t)0};
static const uint64_t *g_fbits = g_closed;
static unsigned g_fshift = 63;

/* Drain buffers handed to the caller; only hs_read and hs_stop touch them. */
static uint64_t *g_out_new, *g_out_codes, *g_out_changed;
static int64_t *g_out_lines;
static double *g_out_est, *g_out_var;
static size_t g_out_new_cap, g_out_codes_cap, g_out_lines_cap, g_out_changed_cap, g_out_est_cap;
static size_t g_out_var_cap;

/* ---- small helpers -------------------------------------------------------------- */

static inline unsigned size_class(size_t size) {
    return size <= 1 ? 0u : 64u - (unsigned)__builtin_clzll((unsigned long long)(size - 1));
}

/* The same for 1 <= size <= 2**63 without a branch: 2**(k-1) < size <= 2**k exactly when
 * 2**k <= 2 size - 1 < 2**(k+1) (size 1: class 0). */
static inline unsigned size_class_fast(size_t size) {
    return 63u - (unsigned)__builtin_clzll((unsigned long long)(2 * size - 1));
}

/* May an allocation of size bytes take a fast path (1 <= size <= g_left)? */
static inline int fast_size(size_t size) { return LIKELY(size - 1 < (uint64_t)g_left); }

static uint64_t rng_next(void) { /* xorshift64* */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545F4914F6CDD1DULL;
}

/* A fresh g_left: the floor of a gap exponential with mean g_rate (Go's nextSample), so
 * that an allocation of n bytes, sampled when n > g_left, i.e. when n exceeds the gap, is
 * sampled with probability exactly 1 - exp(-n / rate). */
static int64_t draw_left(void) {
    if (g_rate == 0)
        return INT64_MAX;
    if (g_rate == 1)
        return 0;
    double u = (double)((rng_next() >> 11) + 1) * 0x1p-53; /* (0, 1] */
    double gap = -log(u) * (double)g_rate;
    if (gap >= 0x1p62)
        return ((int64_t)1 << 62) - 1;
    return (int64_t)gap;
}

/* 1 / P(an allocation of size bytes is sampled): Go's scale 1 / (1 - exp(-avg / rate))
 * for a single allocation. Summed per sample this is the Horvitz-Thompson estimate,
 * which stays unbiased when one stack mixes sizes or the rate changes (Go gets the same
 * by keying its buckets on the size). */
static double weight(uint64_t size) {
    if (g_rate <= 1)
        return 1.0;
    double p = -expm1(-(double)size / (double)g_rate);
    return p > 0.0 ? 1.0 / p : 1.0;
}


static inline uint64_t ptr_hash(uintptr_t p) { return (uint64_t)(p >> 4) * 0x9E3779B97F4A7C15ULL; }

static int grow(void **arr, size_t elem, uint32_t *cap, uint32_t need, uint32_t limit) {
    if (need <= *cap)
        return 1;
    uint64_t ncap = *cap ? *cap : 64;
    while (ncap < need)
        ncap *= 2;
    if (ncap > limit)
        ncap = limit;
    if (ncap < need)
        return 0;
    void *p = realloc(*arr, (size_t)ncap * elem);
    if (p == NULL)
        return 0;
    *arr = p;
    *cap = (uint32_t)ncap;
    return 1;
}

/* ---- pointer map ---------------------------------------------------------------- */

/* Home slot of a pointer: Fibonacci hashing, one multiply and one shift (the top bits of
 * the product depend on every bit of the pointer, alignment zeros included). */
static inline uint64_t map_slot(uintptr_t p) {
    return ((uint64_t)p * 0x9E3779B97F4A7C15ULL) >> g_mshift;
}

static inline uint64_t filter_bit(uintptr_t p, unsigned mshift) {
    return ((uint64_t)p * 0x9E3779B97F4A7C15ULL) >> (mshift - FILTER_LOG2);
}

static inline int filter_has(const uint64_t *bits, uint64_t f) { return (bits[f >> 6] >> (f & 63)) & 1; }

static int map_alloc(uint64_t cap) {
    uintptr_t *k = calloc(cap, sizeof *k);
    uint64_t *s = malloc(cap * sizeof *s);
    uint32_t *t = malloc(cap * sizeof *t);
    double *w = malloc(cap * sizeof *w);
    uint64_t *f = calloc(cap * FILTER_PER_SLOT / 64, sizeof *f);
    if (!k || !s || !t || !w || !f) {
        free(k);
        free(s);
        free(t);
        free(w);
        free(f);
        return 0;
    }
    f[0] = 1; /* free(NULL) */
    free(g_mfilter); /* the old keys stay for a rehash; the old filter is no longer needed */
    g_mfilter = f;
    g_mkeys = k;
    g_msizes = s;
    g_mstacks = t;
    g_mweights = w;
    g_mcap = cap;
    g_mshift = 64u - (unsigned)__builtin_ctzll(cap);
    k[0] = MAP_SENTINEL;
    if (g_fbits != g_closed) { /* growing while running: hs_free follows at once */
        g_fbits = f;
        g_fshift = g_mshift - FILTER_LOG2;
    }
    return 1;
}

static void map_put_raw(uintptr_t key, uint32_t stack, uint64_t size, double w) {
    uint64_t mask = g_mcap - 1, i = map_slot(key);
    while (g_mkeys[i] != 0 && g_mkeys[i] != key)
        i = (i + 1) & mask;
    if (g_mkeys[i] == 0)
        g_mcount++;
    g_mkeys[i] = key;
    uint64_t f = filter_bit(key, g_mshift);
    g_mfilter[f >> 6] |= (uint64_t)1 << (f & 63);
    g_msizes[i] = size;
    g_mstacks[i] = stack;
    g_mweights[i] = w;
}

/* Kept at most a quarter full so that most frees of unsampled blocks (the common case)
 * find an empty first slot: see might_be_sampled(). */
static int map_insert(void *ptr, uint32_t stack, uint64_t size, double w) {
    if ((g_mcount + 1) * 4 > g_mcap) {
        if (g_mcap >= HS_MAP_MAX)
            return 0;
        uintptr_t *ok = g_mkeys;
        uint64_t *os = g_msizes;
        uint32_t *ot = g_mstacks;
        double *ow = g_mweights;
        uint64_t ocap = g_mcap;
        if (!map_alloc(ocap * 2)) /* leaves the globals alone when it fails */
            return 0;
        g_mcount = 0;
        for (uint64_t i = 0; i < ocap; i++)
            if (ok[i] && ok[i] != MAP_SENTINEL)
                map_put_raw(ok[i], ot[i], os[i], ow[i]);
        free(ok);
        free(os);
        free(ot);
        free(ow);
    }
    map_put_raw((uintptr_t)ptr, stack, size, w);
    return 1;
}

/* Remove ptr; backward-shift deletion keeps probe chains intact without tombstones. */
static int map_remove(void *ptr, uint32_t *stack, uint64_t *size, double *w) {
    uintptr_t key = (uintptr_t)ptr;
    uint64_t mask = g_mcap - 1, i = map_slot(key);
    for (;;) {
        uintptr_t k = g_mkeys[i];
        if (k == 0)
            return 0;
        if (k == key)
            break;
        i = (i + 1) & mask;
    }
    *stack = g_mstacks[i];
    *size = g_msizes[i];
    *w = g_mweights[i];
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        uintptr_t k = g_mkeys[j];
        if (k == 0)
            break;
        if (k == MAP_SENTINEL)
            continue; /* never moves; the chains through it stay contiguous */
        uint64_t h = map_slot(k);
        /* k may move to the hole at i unless its home h lies cyclically in (i, j]. */
        int stays = (i <= j) ? (h > i && h <= j) : (h > i || h <= j);
        if (!stays) {
            g_mkeys[i] = k;
            g_msizes[i] = g_msizes[j];
            g_mstacks[i] = g_mstacks[j];
            g_mweights[i] = g_mweights[j];
            i = j;
        }
    }
    g_mkeys[i] = 0;
    g_mcount--;
    /* Clear the key's filter bit unless another live key shares it: such a key has the
     * same home slot, so it sits in the run of occupied slots that starts there. */
    uint64_t f = filter_bit(key, g_mshift);
    for (j = f >> FILTER_LOG2; g_mkeys[j] != 0; j = (j + 1) & mask)
        if (g_mkeys[j] != MAP_SENTINEL && filter_bit(g_mkeys[j], g_mshift) == f)
            return 1;
    if (f != 0) /* bit 0 stays: free(NULL) */
        g_mfilter[f >> 6] &= ~((uint64_t)1 << (f & 63));
    return 1;
}

/* ---- interned code objects and the line cache ----------------------------------- */

static inline uint32_t cset_slot(void *code, uint32_t cap) {
    return (uint32_t)(ptr_hash((uintptr_t)code) >> 32) & (cap - 1);
}

static hs_code *cset_find(void *code) {
    if (g_cset_cap == 0)
        return NULL;
    for (uint32_t i = cset_slot(code, g_cset_cap);; i = (i + 1) & (g_cset_cap - 1)) {
        if (g_cset[i].code == code)
            return &g_cset[i];
        if (g_cset[i].code == NULL)
            return NULL;
    }
}

static int cset_has(void *code) { return cset_find(code) != NULL; }

/* Best effort: a code object missing from the set only misses the cache (a code object
 * is in the set only while a stack holds a reference to it). */
static void cset_add(void *code) {
    hs_code *e = cset_find(code);
    if (e != NULL) {
        e->refs++;
        return;
    }
    if ((g_cset_count + 1) * 2 > g_cset_cap) {
        uint32_t ncap = g_cset_cap ? g_cset_cap * 2 : 256;
        hs_code *n = calloc(ncap, sizeof *n);
        if (n == NULL)
            return;
        for (uint32_t i = 0; i < g_cset_cap; i++) {
            if (g_cset[i].code != NULL) {
                uint32_t j = cset_slot(g_cset[i].code, ncap);
                while (n[j].code != NULL)
                    j = (j + 1) & (ncap - 1);
                n[j] = g_cset[i];
            }
        }
        free(g_cset);
        g_cset = n;
        g_cset_cap = ncap;
    }
    uint32_t i = cset_slot(code, g_cset_cap);
    while (g_cset[i].code != NULL)
        i = (i + 1) & (g_cset_cap - 1);
    g_cset[i].code = code;
    g_cset[i].refs = 1;
    g_cset_count++;
}

/* One reference fewer; 1 when the code object left the set (its address may be reused
 * once the reference is released: the line cache must forget it). Backward-shift
 * deletion, as the pointer map. */
static int cset_release(void *code) {
    hs_code *e = cset_find(code);
    if (e == NULL || --e->refs > 0)
        return 0;
    uint32_t mask = g_cset_cap - 1, i = (uint32_t)(e - g_cset), j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (g_cset[j].code == NULL)
            break;
        uint32_t h = cset_slot(g_cset[j].code, g_cset_cap);
        int stays = (i <= j) ? (h > i && h <= j) : (h > i || h <= j);
        if (!stays) {
            g_cset[i] = g_cset[j];
            i = j;
        }
    }
    g_cset[i].code = NULL;
    g_cset[i].refs = 0;
    g_cset_count--;
    return 1;
}

/* The line of instruction offset lasti (PyFrame_GetLasti's) in code, a code object of an
 * interned stack (g_lines_at_drain): PyFrame_GetLineNumber's answer for the frame. */
static int code_line(void *code, int32_t lasti) {
    uint64_t h = ptr_hash((uintptr_t)code) ^ ((uint64_t)(uint32_t)lasti * 0x9E3779B1u);
    hs_line *e = &g_lcache[(h >> 54) & (HS_LINE_CACHE - 1)];
    if (e->code == code && e->lasti == lasti)
        return e->line;
    int line = api.code_addr2line(code, lasti);
    if (cset_has(code)) {
        e->code = code;
        e->lasti = lasti;
        e->line = line;
    }
    return line;
}

/* ---- stack table ---------------------------------------------------------------- */

static inline void mark_dirty(uint32_t id) {
    hs_stack *s = &g_stacks[id];
    if (!s->dirty) {
        s->dirty = 1;
        s->touched = g_epoch;
        g_dirty[g_ndirty++] = id; /* g_dirty has g_cap_stacks slots */
    }
}

static uint64_t stack_hash(void *const *codes, const int32_t *lines, int n, unsigned flags,
                           uint32_t label, uint32_t native) {
    uint64_t h = hs_mix64((((uint64_t)label << 32) | ((uint64_t)n << 8) | flags) ^
                          ((uint64_t)native * 0x9E3779B97F4A7C15ULL));
    for (int i = 0; i < n; i++)
        h = hs_mix64(h ^ (uint64_t)(uintptr_t)codes[i]) + (uint64_t)(uint32_t)lines[i];
    return h | 1; /* never 0 */
}

static int index_rebuild(uint32_t cap) {
    uint32_t *idx = calloc(cap, sizeof *idx);
    if (idx == NULL)
        return 0;
    for (uint32_t id = 1; id < g_nstacks; id++) { /* stack 0 (overflow) is not indexed */
        if (!g_stacks[id].in_use)
            continue;
        uint32_t i = (uint32_t)g_stacks[id].hash & (cap - 1);
        while (idx[i])
            i = (i + 1) & (cap - 1);
        idx[i] = id + 1;
    }
    free(g_index);
    g_index = idx;
    g_index_cap = cap;
    return 1;
}

/* The id of the stack (codes, lines) leaf first, interned with a reference to each code
 * object; 0 (the overflow stack) when the tables are full. */
static uint32_t intern(void *const *codes, const int32_t *lines, int n, unsigned flags,
                       uint32_t label, uint32_t native) {
    uint64_t h = stack_hash(codes, lines, n, flags, label, native);
    uint32_t mask = g_index_cap - 1, i = (uint32_t)h & mask;
    for (uint32_t v; (v = g_index[i]) != 0; i = (i + 1) & mask) {
        hs_stack *s = &g_stacks[v - 1];
        if (s->hash == h && s->nframes == n && s->flags == flags && s->label == label &&
            s->native == native &&
            (n == 0 || (memcmp(s->codes, codes, (size_t)n * sizeof *codes) == 0 &&
                        memcmp(stack_lines(s), lines, (size_t)n * sizeof *lines) == 0)))
            return v - 1;
    }
    if (g_used_stacks >= g_max_stacks || (uint64_t)g_nframes + (uint64_t)n > g_max_frames_total)
        goto overflow;
    if (g_free_head == 0) {
        uint32_t cap = g_cap_stacks;
        if (!grow((void **)&g_stacks, sizeof *g_stacks, &g_cap_stacks, g_nstacks + 1,
                  g_max_stacks))
            goto overflow;
        if (g_cap_stacks != cap &&
            !grow((void **)&g_dirty, sizeof *g_dirty, &cap, g_cap_stacks, g_cap_stacks)) {
            g_cap_stacks = cap; /* keep the dirty list big enough for every stack */
            goto overflow;
        }
    }
    void **block = NULL;
    if (n > 0 && (block = malloc((size_t)n * (sizeof *codes + sizeof *lines))) == NULL)
        goto overflow;
    if ((uint64_t)(g_nstacks + 1) * 2 > g_index_cap) {
        if (!index_rebuild(g_index_cap * 2)) {
            free(block);
            goto overflow;
        }
        mask = g_index_cap - 1;
        i = (uint32_t)h & mask;
        while (g_index[i])
            i = (i + 1) & mask;
    }
    uint32_t id;
    if (g_free_head != 0) {
        id = g_free_head - 1;
        g_free_head = g_stacks[id].next_free;
    } else {
        id = g_nstacks++;
    }
    g_used_stacks++;
    hs_stack *s = &g_stacks[id];
    memset(s, 0, sizeof *s);
    s->hash = h;
    s->codes = block;
    s->nframes = (uint16_t)n;
    s->flags = (uint8_t)flags;
    s->label = label;
    s->native = native;
    s->in_use = 1;
    if (n > 0) {
        memcpy(block, codes, (size_t)n * sizeof *codes);
        memcpy(stack_lines(s), lines, (size_t)n * sizeof *lines);
    }
    for (int k = 0; k < n; k++) {
        api.incref(codes[k]);
        cset_add(codes[k]);
    }
    g_nframes += (uint32_t)n;
    g_index[i] = id + 1;
    return id;
overflow:
    g_overflow++;
    return 0;
}

/* ---- stack capture -------------------------------------------------------------- */

/* The frames of thread state ts through the public API (3.9+), leaf first, as capture
 * records them: borrowed code objects, lines or (WALK_LASTI) instruction offsets, and
 * frame keys: the frame objects, or (WALK_KEYS_IN_PLACE) their interpreter frames. */
#define WALK_LASTI 1u
#define WALK_KEYS_IN_PLACE 2u
static int api_walk(void *ts, void **codes, int32_t *lines, void **frames, int max,
                    int *truncated, unsigned how) {
    /* The frame API may allocate (3.11+ creates frame objects) and can clear or set an
     * error: keep the caller's pending exception, and keep 3.11 from collecting garbage
     * (running finalizers) inside somebody's malloc. */
    void *et = NULL, *ev = NULL, *etb = NULL;
    int had_error = api.err_occurred() != NULL;
    if (had_error)
        api.err_fetch(&et, &ev, &etb);
    int gc_was_enabled = api.gc_disable ? api.gc_disable() : 0;
    int n = 0;
    void *f = api.tstate_get_frame(ts);
    while (f != NULL && n < max) {
        void *code = api.frame_get_code(f);
        codes[n] = code;
        frames[n] = (how & WALK_KEYS_IN_PLACE) ? hs_walk_frame_of(f) : f;
        lines[n] = (how & WALK_LASTI) ? api.frame_get_lasti(f) : api.frame_get_line(f);
        n++;
        api.decref(code);
        void *back = api.frame_get_back(f);
        api.decref(f);
        f = back;
    }
    *truncated = f != NULL;
    if (f != NULL)
        api.decref(f);
    if (gc_was_enabled)
        api.gc_enable();
    if (had_error)
        api.err_restore(et, ev, etb);
    else if (api.err_occurred() != NULL)
        api.err_restore(NULL, NULL, NULL); /* e.g. MemoryError while making a frame */
    return n;
}

/* Tests only (hs_walk_check): every capture that reads frames in place also walks them
 * through the API and counts the captures whose frames differ. */
static int g_walk_check;
static uint64_t g_walk_checked, g_walk_differ;
static void **g_chk_codes, **g_chk_frames;
static int32_t *g_chk_lines;

static void walk_check(void *ts, int n, int truncated) {
    int max = g_max_frames, t;
    if (g_chk_lines == NULL) { /* once, for any session's max_frames */
        g_chk_codes = malloc(HS_MAX_FRAMES * sizeof *g_chk_codes);
        g_chk_frames = malloc(HS_MAX_FRAMES * sizeof *g_chk_frames);
        g_chk_lines = g_chk_codes && g_chk_frames ? malloc(HS_MAX_FRAMES * sizeof *g_chk_lines)
                                                  : NULL;
        if (g_chk_lines == NULL)
            return;
    }
    int m = api_walk(ts, g_chk_codes, g_chk_lines, g_chk_frames, max, &t,
                     WALK_LASTI | WALK_KEYS_IN_PLACE);
    int same = m == n && t == truncated;
    for (int k = 0; same && k < n; k++)
        same = g_chk_codes[k] == g_cap_codes[k] && g_chk_lines[k] == g_cap_lines[k] &&
               g_chk_frames[k] == hs_cap_frames[k];
    g_walk_checked++;
    g_walk_differ += !same;
}

/* Fill g_cap_codes/g_cap_lines leaf first; return the number of frames. Code pointers
 * are borrowed: the executing frames hold them until the hook returns. */
static int capture(unsigned *flags) {
    void *ts = api.tstate_unchecked();
    int n = 0, max = g_max_frames, truncated;
    if (ts == NULL)
        return 0;
    if (api.minor == 8) {
        if (*(void **)((char *)ts + api.off_ts_interp) != g_main_interp) {
            *flags |= HS_STACK_FOREIGN;
            return 0;
        }
        char *f = api.eval_get_frame();
        for (; f != NULL && n < max; f = *(char **)(f + api.off_f_back)) {
            g_cap_codes[n] = *(void **)(f + api.off_f_code);
            hs_cap_frames[n] = f;
            g_cap_lines[n] = api.frame_get_line(f);
            n++;
        }
        if (f != NULL)
            *flags |= HS_STACK_TRUNCATED;
        return n;
    }
    if (api.tstate_get_interp(ts) != g_main_interp) {
        *flags |= HS_STACK_FOREIGN;
        return 0;
    }
    n = -1;
    if (hs_walk_on) { /* 3.11+, checked by hs_walk_verify: frames read in place */
        n = hs_walk(ts, g_cap_codes, g_cap_lines, hs_cap_frames, max, &truncated);
        if (UNLIKELY(g_walk_check) && n >= 0)
            walk_check(ts, n, truncated);
    }
    if (n < 0) /* the public API: before 3.11, or something unexpected in place */
        n = api_walk(ts, g_cap_codes, g_cap_lines, hs_cap_frames, max, &truncated,
                     (g_lines_at_drain ? WALK_LASTI : 0) |
                         (hs_walk_on ? WALK_KEYS_IN_PLACE : 0));
    if (truncated)
        *flags |= HS_STACK_TRUNCATED;
    return n;
}

/* ---- the hooks ------------------------------------------------------------------ */

/* Called only in MODE_ACTIVE. While the capture runs, g_left is 0 (the gate: the capture's
 * own allocations, and any other thread's, take the slow path, where the mode decides);
 * the next gap is drawn first and put in place when the capture is over. */
static __attribute__((noinline)) void sample(void *ptr, size_t size, unsigned dom) {
    int64_t next = draw_left();
    if (g_rate == 0) {
        g_left = next;
        return;
    }
    g_sampled_count++;
    g_sampled_bytes += size;
    unsigned flags = 0;
    g_left = 0;
    g_mode |= MODE_CAPTURING;
    t_guard = 1;
    int n = capture(&flags);
    uint32_t id =
        intern(g_cap_codes, g_cap_lines, n, flags, hs_labels_of_sample(g_cap_codes, n), 0);
    t_guard = 0;
    g_mode &= ~MODE_CAPTURING;
    if (g_mode == MODE_ACTIVE)
        g_left = next;
    double w = weight(size), v = w * (w - 1.0), sz = (double)size;
    hs_stack *s = &g_stacks[id];
    s->alloc_count++;
    s->alloc_bytes += size;
    s->est[0] += w;
    s->est[1] += w * sz;
    s->var[0] += v;
    s->var[1] += v * sz * sz;
    if (map_insert(ptr, id | (dom << HS_MAP_DOM_SHIFT), size, w)) {
        s->live_count++;
        s->live_bytes += size;
        s->est[2] += w;
        s->est[3] += w * sz;
        s->var[2] += v;
        s->var[3] += v * sz * sz;
        g_live_samples++;
        g_live_bytes += size;
    } else {
        g_dropped++;
    }
    mark_dirty(id);
}

/* The fast paths count only while the thread that allocated last allocates again
 * (hs_same_thread); the slow paths first credit the last thread's run (heapspy_labels.h). */
static inline void count_alloc_same_thread(hs_dom *d, size_t size) {
    d->alloc_bytes += size;
    d->size_classes[size_class(size)]++;
}

/* count_alloc_same_thread for the fast paths' sizes (1 <= size <= g_left). */
static inline void count_alloc_fast(hs_dom *d, size_t size) {
    d->alloc_bytes += size;
    d->size_classes[size_class_fast(size)]++;
}

static inline void count_alloc(hs_dom *d, size_t size) {
    if (UNLIKELY(!hs_same_thread()))
        hs_thr_switch(g_dom[0].alloc_bytes + g_dom[1].alloc_bytes + g_dom[2].alloc_bytes);
    count_alloc_same_thread(d, size);
}

/* Go's test, after the allocation: sample when it reaches the countdown. g_left >= 0 when
 * active, so a zero-byte allocation is never sampled. Another thread's allocation made
 * while a capture runs is counted, not sampled. */
static inline void count_down(hs_dom *d, void *ptr, size_t size) {
    if (g_mode != MODE_ACTIVE)
        return;
    if (LIKELY(size <= (uint64_t)g_left))
        g_left -= (int64_t)size;
    else
        sample(ptr, size, (unsigned)(d - g_dom));
}

/* The filter, inline: a clear bit proves ptr is not sampled. Only while g_mode != 0 (the
 * map exists). */
static inline int might_be_sampled(void *ptr) {
    return filter_has(g_mfilter, filter_bit((uintptr_t)ptr, g_mshift));
}

static __attribute__((noinline)) void forget(void *ptr) {
    uint32_t id;
    uint64_t size;
    double w;
    if (map_remove(ptr, &id, &size, &w)) {
        id &= HS_MAP_STACK_MASK;
        hs_stack *s = &g_stacks[id];
        s->live_count--;
        s->live_bytes -= size;
        if (s->live_count == 0) { /* no rounding residue once nothing is live */
            s->est[2] = s->est[3] = s->var[2] = s->var[3] = 0.0;
        } else {
            double v = w * (w - 1.0), sz = (double)size;
            s->est[2] -= w;
            s->est[3] -= w * sz;
            s->var[2] -= v;
            s->var[3] -= v * sz * sz;
        }
        g_live_samples--;
        g_live_bytes -= size;
        mark_dirty(id);
    }
}

/* Account this allocation? Not when stopped, nor for a capture's own allocations. */
static inline int counting(void) {
    int mode = g_mode;
    return LIKELY(mode == MODE_ACTIVE) || (mode != 0 && !t_guard);
}

/* malloc and calloc have a fast path for the common case (active, no capture under way,
 * not the sampled allocation): count, then tail-call the previous allocator, with no
 * stack frame of our own. The request is counted before it is made, so the rare one
 * that fails (out of memory) is counted too. Everything else takes the slow path. */
static __attribute__((noinline)) void *malloc_slow(hs_dom *d, size_t size) {
    void *p = d->prev.malloc(d->prev.ctx, size);
    if (counting()) {
        count_alloc(d, size);
        if (p != NULL)
            count_down(d, p, size);
    }
    return p;
}

/* Built with -DHS_FORWARD_ONLY (benchmarks/hook_floor.py only), the four hooks just
 * forward: what installing any hook costs, apart from what ours then do. */
#ifdef HS_FORWARD_ONLY
#define FORWARD_ONLY(call) return call
#else
#define FORWARD_ONLY(call) (void)0
#endif

static void *hs_malloc(void *ctx, size_t size) {
    hs_dom *d = ctx;
    FORWARD_ONLY(d->prev.malloc(d->prev.ctx, size));
    if (fast_size(size) && LIKELY(hs_same_thread())) { /* MODE_ACTIVE */
        g_left -= (int64_t)size;
        count_alloc_fast(d, size);
        return d->prev.malloc(d->prev.ctx, size);
    }
    return malloc_slow(d, size);
}

static __attribute__((noinline)) void *calloc_slow(hs_dom *d, size_t nelem, size_t elsize) {
    size_t size;
    void *p = d->prev.calloc(d->prev.ctx, nelem, elsize);
    if (counting() && !__builtin_mul_overflow(nelem, elsize, &size)) {
        count_alloc(d, size);
        if (p != NULL)
            count_down(d, p, size);
    }
    return p;
}

static void *hs_calloc(void *ctx, size_t nelem, size_t elsize) {
    hs_dom *d = ctx;
    FORWARD_ONLY(d->prev.calloc(d->prev.ctx, nelem, elsize));
    size_t size;
    /* nelem * elsize overflowing goes to the slow path, which does not count it. */
    if (!__builtin_mul_overflow(nelem, elsize, &size) && fast_size(size) &&
        LIKELY(hs_same_thread())) {
        g_left -= (int64_t)size;
        count_alloc_fast(d, size);
        return d->prev.calloc(d->prev.ctx, nelem, elsize);
    }
    return calloc_slow(d, nelem, elsize);
}

/* What hs_free and hs_realloc test first: a clear bit of g_fbits proves that a session
 * runs and that ptr is not a sampled block (nor NULL). */
static inline int surely_unsampled(void *ptr) {
    uint64_t f = ((uint64_t)(uintptr_t)ptr * 0x9E3779B97F4A7C15ULL) >> g_fshift;
    return LIKELY(!((g_fbits[f >> 6] >> (f & 63)) & 1));
}

/* realloc is a free of the old block and a fresh sampling decision on the new size.
 * Sampled and unsampled blocks come from the same previous allocator, so all four
 * transitions (un)sampled -> (un)sampled are a plain realloc plus map bookkeeping. */
static __attribute__((noinline)) void *realloc_slow(hs_dom *d, void *ptr, size_t size) {
    void *p = d->prev.realloc(d->prev.ctx, ptr, size);
    if (UNLIKELY(p == NULL) || UNLIKELY(g_mode == 0))
        return p; /* failed: the old block and its entry stay as they were */
    if (ptr != NULL) {
        d->realloc_count++; /* and a free: see hs_dom */
        if (might_be_sampled(ptr))
            forget(ptr);
    }
    if (counting()) {
        count_alloc(d, size);
        count_down(d, p, size);
    }
    return p;
}

/* The common realloc (of NULL or of an unsampled block, not sampled, size not 0, active,
 * same thread) is counted before it is made, like malloc's, to keep it a tail call: if
 * it fails (out of memory) it is counted all the same. realloc(NULL) is common (a list
 * growing from empty), and NULL's filter bit is set (for free(NULL)): tested apart. */
static void *hs_realloc(void *ctx, void *ptr, size_t size) {
    hs_dom *d = ctx;
    FORWARD_ONLY(d->prev.realloc(d->prev.ctx, ptr, size));
    if (fast_size(size) && LIKELY(hs_same_thread()) && (ptr == NULL || surely_unsampled(ptr))) {
        g_left -= (int64_t)size;
        count_alloc_fast(d, size);
        d->realloc_count += ptr != NULL; /* and a free: see hs_dom */
        return d->prev.realloc(d->prev.ctx, ptr, size);
    }
    return realloc_slow(d, ptr, size);
}

/* Everything but the common free: stopped (the closed filter), free(NULL) (filter bit 0),
 * a sampled block, or an unsampled one whose filter bit another block set. */
static __attribute__((noinline)) void free_slow(hs_dom *d, void *ptr) {
    if (g_mode != 0 && ptr != NULL) {
        d->frees++; /* frees inside a capture too: they may be of sampled blocks */
        forget(ptr);
    }
    d->prev.free(d->prev.ctx, ptr);
}

/* One load decides: a clear filter bit proves the block is not sampled and that a
 * session runs (see g_fbits), so the free is counted and passed on. */
static void hs_free(void *ctx, void *ptr) {
    hs_dom *d = ctx;
#ifdef HS_FORWARD_ONLY
    d->prev.free(d->prev.ctx, ptr);
    return;
#endif
    if (!surely_unsampled(ptr)) {
        free_slow(d, ptr);
        return;
    }
    d->frees++;
    d->prev.free(d->prev.ctx, ptr);
}

/* ---- NumPy array data ---------------------------------------------------------- */

/* NumPy (>= 1.22) allocates array data through a PyDataMem_Handler, not through the PyMem
 * domains (numpy/ndarraytypes.h, version 1; its free takes the size). We hook the default
 * handler in place: every array made with it, in any thread or context, comes through
 * here, and each array keeps using the handler it was made with, so blocks allocated
 * before the hook are freed through it (pass-through) and blocks allocated while hooked
 * are freed by the original after the restore. NumPy calls these with the GIL held except
 * that its calloc releases the GIL around the libc call for big blocks: a thread can be
 * inside our calloc, without the GIL, while another stops us; g_np_prev therefore is never
 * cleared, and g_np_inflight tells the agent when unloading the library is safe. */
typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr, size_t size);
} np_allocator;

typedef struct {
    char name[127];
    uint8_t version;
    np_allocator allocator;
} np_handler;

static np_handler *g_np; /* the hooked handler; NULL: none */
static np_allocator g_np_prev;
static int g_np_inflight;

#define NP_ENTER() __atomic_add_fetch(&g_np_inflight, 1, __ATOMIC_ACQ_REL)
#define NP_LEAVE() __atomic_sub_fetch(&g_np_inflight, 1, __ATOMIC_ACQ_REL)

/* Account this NumPy call? As counting(), and only with the GIL (our tables need it). */
static int np_counting(void) { return counting() && api.gil_check() == 1; }

static void np_account(void *p, size_t size) {
    count_alloc(&g_dom[HS_DOM_NUMPY], size);
    if (p != NULL)
        count_down(&g_dom[HS_DOM_NUMPY], p, size);
}

static void *hs_np_malloc(void *ctx, size_t size) {
    NP_ENTER();
    void *p = g_np_prev.malloc(ctx, size);
    if (np_counting())
        np_account(p, size);
    NP_LEAVE();
    return p;
}

static void *hs_np_calloc(void *ctx, size_t nelem, size_t elsize) {
    NP_ENTER();
    size_t size;
    void *p = g_np_prev.calloc(ctx, nelem, elsize); /* may release and retake the GIL */
    if (np_counting() && !__builtin_mul_overflow(nelem, elsize, &size))
        np_account(p, size);
    NP_LEAVE();
    return p;
}

static void *hs_np_realloc(void *ctx, void *ptr, size_t size) {
    NP_ENTER();
    void *p = g_np_prev.realloc(ctx, ptr, size);
    if (p != NULL && np_counting()) {
        hs_dom *d = &g_dom[HS_DOM_NUMPY];
        if (ptr != NULL) {
            d->realloc_count++; /* and a free: see hs_dom */
            if (might_be_sampled(ptr))
                forget(ptr);
        }
        np_account(p, size);
    }
    NP_LEAVE();
    return p;
}

static void hs_np_free(void *ctx, void *ptr, size_t size) {
    NP_ENTER();
    if (ptr != NULL && g_mode != 0 && api.gil_check() == 1) {
        g_dom[HS_DOM_NUMPY].frees++;
        if (might_be_sampled(ptr))
            forget(ptr);
    }
    g_np_prev.free(ctx, ptr, size);
    NP_LEAVE();
}

static int np_is_ours(const np_allocator *a) {
    return a->malloc == hs_np_malloc && a->calloc == hs_np_calloc &&
           a->realloc == hs_np_realloc && a->free == hs_np_free;
}

/* Put NumPy's functions back if ours are still the installed ones; 1 if some of ours stay
 * (someone changed the handler since: restoring could clobber theirs). */
static int np_unhook(void) {
    np_handler *h = g_np;
    if (h == NULL)
        return 0;
    np_allocator *a = &h->allocator;
    if (np_is_ours(a)) {
        a->malloc = g_np_prev.malloc;
        a->calloc = g_np_prev.calloc;
        a->realloc = g_np_prev.realloc;
        a->free = g_np_prev.free;
    } else if (a->malloc == hs_np_malloc || a->calloc == hs_np_calloc ||
               a->realloc == hs_np_realloc || a->free == hs_np_free) {
        return 1; /* kept in g_np: a later hs_stop() looks again */
    }
    g_np = NULL;
    return 0;
}

static int is_ours(const py_allocator *a, hs_dom *d) {
    return a->ctx == d && a->malloc == hs_malloc && a->calloc == hs_calloc &&
           a->realloc == hs_realloc && a->free == hs_free;
}

/* ---- native allocations (native_hooks.c), folded into the same stack table --------- */

uint64_t hs__rate(void) { return __atomic_load_n(&g_rate, __ATOMIC_RELAXED); }

int hs__capture_stack(uint32_t *id, uint32_t native) {
    if (g_mode != MODE_ACTIVE || g_stacks == NULL)
        return 0;
    unsigned flags = 0;
    int64_t left = g_left;
    g_left = 0;
    g_mode |= MODE_CAPTURING;
    t_guard = 1;
    int n = capture(&flags);
    *id = intern(g_cap_codes, g_cap_lines, n, flags, hs_labels_of_sample(g_cap_codes, n), native);
    t_guard = 0;
    g_mode &= ~MODE_CAPTURING;
    if (g_mode == MODE_ACTIVE)
        g_left = left;
    return 1;
}

uint32_t hs__native_stack(uint32_t native) {
    return intern(NULL, NULL, 0, HS_STACK_NATIVE, 0, native);
}

void hs__stack_event(uint32_t id, uint64_t size, double w, int kind) {
    if (id >= g_nstacks)
        return;
    hs_stack *s = &g_stacks[id];
    double v = w * (w - 1.0), v2 = v * (double)size * (double)size; /* see sample() */
    if (kind == HS_EV_UNALLOC) {
        s->alloc_count--;
        s->alloc_bytes -= size;
        s->est[0] -= w;
        s->est[1] -= w * (double)size;
        s->var[0] -= v;
        s->var[1] -= v2;
    } else if (kind == HS_EV_ALLOC) {
        s->alloc_count++;
        s->alloc_bytes += size;
        s->est[0] += w;
        s->est[1] += w * (double)size;
        s->var[0] += v;
        s->var[1] += v2;
        s->live_count++;
        s->live_bytes += size;
        s->est[2] += w;
        s->est[3] += w * (double)size;
        s->var[2] += v;
        s->var[3] += v2;
    } else if (s->live_count > 0) {
        s->live_count--;
        s->live_bytes -= size;
        if (s->live_count == 0) {
            s->est[2] = s->est[3] = s->var[2] = s->var[3] = 0.0;
        } else {
            s->est[2] -= w;
            s->est[3] -= w * (double)size;
            s->var[2] -= v;
            s->var[3] -= v2;
        }
    }
    mark_dirty(id);
}

void *hs__dom_prev(int i) { return (i == 0 || i == 1) && g_dom[i].installed ? &g_dom[i].prev : NULL; }

/* ---- tables' lifetime ----------------------------------------------------------- */

static uint64_t shim_memory(void) {
    return (uint64_t)g_cap_stacks * (sizeof *g_stacks + sizeof *g_dirty) +
           (uint64_t)g_index_cap * sizeof *g_index +
           (uint64_t)g_nframes * (sizeof(void *) + sizeof(int32_t)) +
           (g_cap_codes ? (uint64_t)g_max_frames * (sizeof *g_cap_codes + sizeof *g_cap_lines) : 0) +
           g_mcap * (sizeof *g_mkeys + sizeof *g_msizes + sizeof *g_mstacks + sizeof *g_mweights +
                     FILTER_PER_SLOT / 8) +
           g_out_new_cap * 4 * sizeof(uint64_t) +
           g_out_codes_cap * sizeof *g_out_codes + g_out_lines_cap * sizeof *g_out_lines +
           g_out_changed_cap * 5 * sizeof(uint64_t) + g_out_est_cap * 4 * sizeof(double) +
           g_out_var_cap * 4 * sizeof(double) + g_out_evicted_cap * sizeof *g_out_evicted +
           (g_lcache ? HS_LINE_CACHE * sizeof *g_lcache : 0) + (uint64_t)g_cset_cap * sizeof *g_cset +
           hs_labels_memory();
}

static void free_out_buffers(void) {
    free(g_out_new);
    free(g_out_codes);
    free(g_out_lines);
    free(g_out_changed);
    free(g_out_est);
    free(g_out_var);
    free(g_out_evicted);
    g_out_new = g_out_codes = g_out_changed = NULL;
    g_out_lines = NULL;
    g_out_est = g_out_var = NULL;
    g_out_evicted = NULL;
    g_out_new_cap = g_out_codes_cap = g_out_lines_cap = g_out_changed_cap = g_out_est_cap = 0;
    g_out_var_cap = g_out_evicted_cap = 0;
}

/* Drop every table and the references to code objects. Detach first, decref last: a
 * code object's deallocation may run arbitrary code (weakref callbacks) that reenters. */
static void release_tables(void) {
    g_fbits = g_closed; /* before the filter is freed */
    g_fshift = 63;
    /* The stack records (and their frame blocks) are kept until every global is reset:
     * the code objects are released from them last. */
    hs_stack *stacks = g_stacks;
    uint32_t nstacks = g_nstacks;
    free(g_index);
    free(g_dirty);
    free(g_cap_codes);
    free(g_cap_lines);
    free(g_mkeys);
    free(g_msizes);
    free(g_mstacks);
    free(g_mweights);
    free(g_mfilter);
    free(g_lcache);
    free(g_cset);
    free_out_buffers();
    g_stacks = NULL;
    g_index = NULL;
    g_dirty = NULL;
    g_cap_codes = NULL;
    g_cap_lines = NULL;
    g_mkeys = NULL;
    g_msizes = NULL;
    g_mstacks = NULL;
    g_mweights = NULL;
    g_mfilter = NULL;
    g_lcache = NULL;
    g_cset = NULL;
    g_cset_cap = g_cset_count = 0;
    g_nstacks = g_cap_stacks = g_used_stacks = g_free_head = g_index_cap = 0;
    g_nframes = 0;
    g_ndirty = 0;
    g_epoch = 0;
    g_evicted = 0;
    g_mcap = g_mcount = 0;
    g_live_samples = g_live_bytes = 0;
    for (uint32_t id = 0; id < nstacks; id++) {
        hs_stack *s = &stacks[id];
        if (!s->in_use || s->codes == NULL)
            continue;
        for (uint32_t k = 0; k < s->nframes; k++)
            api.decref(s->codes[k]);
        free(s->codes);
    }
    free(stacks);
    hs_labels_stop(); /* decrefs its coroutines' code objects: last, as above */
}

static int alloc_tables(int max_frames, uint32_t max_stacks) {
    g_max_frames = max_frames;
    g_max_stacks = max_stacks;
    uint64_t fr = (uint64_t)max_stacks * HS_FRAMES_PER_STACK;
    g_max_frames_total = fr > UINT32_MAX / 2 ? UINT32_MAX / 2 : (uint32_t)fr;
    g_lines_at_drain = 0;
    if (api.frame_get_lasti != NULL && api.code_addr2line != NULL) {
        g_lcache = calloc(HS_LINE_CACHE, sizeof *g_lcache);
        g_lines_at_drain = g_lcache != NULL; /* else lines at capture */
    }
    g_cap_codes = malloc((size_t)max_frames * sizeof *g_cap_codes);
    g_cap_lines = malloc((size_t)max_frames * sizeof *g_cap_lines);
    uint32_t cap = 0;
    int ok = g_cap_codes && g_cap_lines && hs_labels_start(max_frames) == HS_OK &&
             map_alloc(HS_MAP_MIN) &&
             grow((void **)&g_stacks, sizeof *g_stacks, &g_cap_stacks, 1, max_stacks) &&
             grow((void **)&g_dirty, sizeof *g_dirty, &cap, g_cap_stacks, g_cap_stacks) &&
             index_rebuild(256);
    if (!ok) {
        release_tables();
        return HS_ERR_NOMEM;
    }
    /* Stack 0 collects samples whose stack did not fit. */
    memset(&g_stacks[0], 0, sizeof g_stacks[0]);
    g_stacks[0].flags = HS_STACK_OVERFLOW;
    g_stacks[0].in_use = 1;
    g_nstacks = g_used_stacks = 1;
    return HS_OK;
}

/* ---- exported API --------------------------------------------------------------- */

HS_EXPORT int hs_abi(void) { return HS_ABI; }

HS_EXPORT int hs_report_size(void) { return (int)sizeof(hs_report); }

HS_EXPORT int hs_state(void) { return g_state; }

HS_EXPORT const char *hs_strerror(int code) {
    switch (code) {
    case HS_OK: return "ok";
    case HS_ERR_RUNNING: return "sampling is already running";
    case HS_ERR_NOT_RUNNING: return "sampling is not running";
    case HS_ERR_FREE_THREADED:
        return "free-threaded CPython: allocator hooks would run without a GIL";
    case HS_ERR_SYMBOLS: return "a CPython C-API function could not be found in this process";
    case HS_ERR_VERSION: return "not CPython 3.8 or newer";
    case HS_ERR_SUBINTERP:
        return "several interpreters are running (one may have its own GIL)";
    case HS_ERR_NOMEM: return "out of memory for the shim's tables";
    case HS_ERR_HOOKS_LEFT:
        return "an earlier session's hooks are still chained below another allocator";
    case HS_ERR_ARG: return "invalid argument";
    case HS_ERR_HANDLER: return "not NumPy's version-1 default data allocator handler";
    case HS_ERR_LAYOUT: return "a type object's layout is not the one CPython 3.8-3.14 share";
    case HS_LEFT_INSTALLED:
        return "another allocator replaced the shim's hooks; they stay installed as "
               "pass-throughs and the library must stay loaded";
    default: return "unknown error";
    }
}

/* The check that turns frame_walk.c's walk on: both walks of the caller's stack (the
 * agent calls from a generator, through a C function calling back into Python, so that
 * a generator's frame and an entry frame are on it) must agree on every frame, with the
 * frame objects' f_frame on the structs read, and probe_code's _co_firsttraceable must
 * read as first (the agent's count of its instructions before RESUME). Only while no
 * session runs, so that a session keeps one kind of frame key throughout. */
#define VERIFY_FRAMES 256
HS_EXPORT int hs_walk_verify(void *probe_code, int first) {
    if (g_state == HS_STATE_RUNNING)
        return HS_ERR_RUNNING;
    int rc = resolve_api();
    if (rc != HS_OK)
        return rc;
    hs_walk_enable(0);
    if (api.free_threaded || api.minor < 11 || api.frame_get_lasti == NULL ||
        probe_code == NULL || first < 1 || !api.gil_check() ||
        !hs_walk_layout(api.minor, hs_sym("PyCode_Type")))
        return HS_OK;
    void *ts = api.tstate_unchecked();
    if (ts == NULL || hs_walk_first_traceable(probe_code) != first)
        return HS_OK;
    void *codes[VERIFY_FRAMES], *frames[VERIFY_FRAMES];
    int32_t lasti[VERIFY_FRAMES];
    int truncated;
    int n = hs_walk(ts, codes, lasti, frames, VERIFY_FRAMES, &truncated);
    if (n < 3 || truncated)
        return HS_OK;
    void *acodes[VERIFY_FRAMES], *aframes[VERIFY_FRAMES];
    int32_t alasti[VERIFY_FRAMES];
    int m = api_walk(ts, acodes, alasti, aframes, VERIFY_FRAMES, &truncated,
                     WALK_LASTI | WALK_KEYS_IN_PLACE);
    int same = m == n && !truncated;
    for (int k = 0; same && k < n; k++)
        same = acodes[k] == codes[k] && alasti[k] == lasti[k] && aframes[k] == frames[k];
    if (same)
        hs_walk_enable(1);
    return HS_OK;
}

/* Whether captures read frames in place (hs_walk_verify passed): 1 or 0. */
HS_EXPORT int hs_walk_state(void) { return hs_walk_on; }

/* Tests only: compare every in-place capture with the API's walk from now on (on != 0),
 * and say how many were compared and how many differed so far. */
HS_EXPORT void hs_walk_check(int on, uint64_t *checked, uint64_t *differ) {
    g_walk_check = on;
    *checked = g_walk_checked;
    *differ = g_walk_differ;
}

/* Install the hooks on MEM and OBJ in one call (the GIL is held throughout, so no thread
 * allocates between the two domains). rate: mean bytes between samples (0: no sampling,
 * totals only; 1: every allocation). seed 0 picks one. */
HS_EXPORT int hs_start(uint64_t rate, int max_frames, uint64_t max_stacks, uint64_t seed,
                       unsigned flags) {
    if (g_state == HS_STATE_RUNNING)
        return HS_ERR_RUNNING;
    if (max_frames < 1 || max_frames > HS_MAX_FRAMES || max_stacks < 2 ||
        max_stacks > HS_MAX_STACKS)
        return HS_ERR_ARG;
    int rc = resolve_api();
    if (rc != HS_OK)
        return rc;
    if ((flags & HS_FLAG_FREE_THREADED) || api.free_threaded)
        return HS_ERR_FREE_THREADED;
    if (api.minor >= 12 && api.interp_next(api.interp_head()) != NULL)
        return HS_ERR_SUBINTERP;
    py_allocator cur;
    for (int i = 0; i < 2; i++) {
        if (g_dom[i].installed) { /* left by an earlier session: reusable only on top */
            api.mem_get(g_dom[i].domain, &cur);
            if (!is_ours(&cur, &g_dom[i]))
                return HS_ERR_HOOKS_LEFT;
        }
    }
    rc = alloc_tables(max_frames, (uint32_t)max_stacks);
    if (rc != HS_OK)
        return rc;
    for (int i = 0; i < HS_NDOMAINS; i++) {
        hs_dom *d = &g_dom[i];
        d->alloc_bytes = d->frees = d->realloc_count = 0;
        memset(d->size_classes, 0, sizeof d->size_classes);
    }
    g_sampled_count = g_sampled_bytes = g_dropped = g_overflow = 0;
    if (seed == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        seed = hs_mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^
                     ((uint64_t)getpid() << 16) ^ (uint64_t)(uintptr_t)&seed);
    }
    g_rng = seed ? seed : 0x9E3779B97F4A7C15ULL;
    g_rate = rate;
    g_main_interp = api.interp_main();
    for (int i = 0; i < 2; i++) {
        hs_dom *d = &g_dom[i];
        if (d->installed)
            continue;
        api.mem_get(d->domain, &d->prev);
        py_allocator ours = {d, hs_malloc, hs_calloc, hs_realloc, hs_free};
        api.mem_set(d->domain, &ours);
        d->installed = 1;
    }
    g_mode = MODE_ACTIVE;
    g_left = draw_left(); /* opens the fast paths: closed until now */
    g_fshift = g_mshift - FILTER_LOG2;
    g_fbits = g_mfilter;
    g_state = HS_STATE_RUNNING;
    return HS_OK;
}

/* Hook NumPy's default data handler (the caller found it through NumPy's C-API table and
 * holds the GIL). Each pointer is one aligned store and no other thread runs NumPy code
 * meanwhile (GIL), so no call sees a half-written handler. */
HS_EXPORT int hs_numpy_hook(void *handler) {
    if (g_state != HS_STATE_RUNNING)
        return HS_ERR_NOT_RUNNING;
    if (g_np != NULL)
        return HS_ERR_RUNNING;
    np_handler *h = handler;
    if (h == NULL || h->version != 1 || strncmp(h->name, "default_allocator", 127) != 0 ||
        h->allocator.malloc == NULL || h->allocator.calloc == NULL ||
        h->allocator.realloc == NULL || h->allocator.free == NULL || np_is_ours(&h->allocator))
        return HS_ERR_HANDLER;
    if (__atomic_load_n(&g_np_inflight, __ATOMIC_ACQUIRE) != 0)
        return HS_ERR_RUNNING; /* a thread is still inside an earlier session's hook */
    g_np_prev = h->allocator;
    h->allocator.malloc = hs_np_malloc;
    h->allocator.calloc = hs_np_calloc;
    h->allocator.realloc = hs_np_realloc;
    h->allocator.free = hs_np_free;
    g_np = h;
    return HS_OK;
}

HS_EXPORT int hs_numpy_inflight(void) { return __atomic_load_n(&g_np_inflight, __ATOMIC_ACQUIRE); }

/* CPython prints pymalloc's statistics only while pymalloc itself is the installed object
 * allocator, which our hook is not. The caller holds the GIL (ctypes.PyDLL), so no other
 * thread allocates from the OBJ domain: our hook is swapped for the allocator it chains to
 * for the length of the call (which allocates nothing from that domain) and put back. */
HS_EXPORT int hs_pymalloc_stats(void *out) {
    int (*stats)(void *) = (int (*)(void *))hs_sym("_PyObject_DebugMallocStats");
    if (stats == NULL || out == NULL)
        return 0;
    hs_dom *d = &g_dom[1];
    py_allocator cur;
    int swapped = 0;
    if (d->installed && api.mem_get != NULL && api.mem_set != NULL) {
        api.mem_get(d->domain, &cur);
        if (is_ours(&cur, d)) {
            api.mem_set(d->domain, &d->prev);
            swapped = 1;
        }
    }
    int rc = stats(out);
    if (swapped)
        api.mem_set(d->domain, &cur);
    return rc;
}

/* Benchmarks only (benchmarks/session_cost.py): take the hooks out (parked = 1) and put
 * them back (0) without touching the tables, so that one session can be switched off and
 * on many times. Frees made while parked are not seen: their entries stay in the map. */
static int g_parked;

HS_EXPORT int hs_park(int parked) {
    if (g_state != HS_STATE_RUNNING || !parked == !g_parked)
        return HS_ERR_NOT_RUNNING;
    py_allocator cur;
    for (int i = 0; i < 2 && parked; i++) {
        api.mem_get(g_dom[i].domain, &cur);
        if (!g_dom[i].installed || !is_ours(&cur, &g_dom[i]))
            return HS_ERR_HOOKS_LEFT; /* someone else's hook is on top: leave it all */
    }
    for (int i = 0; i < 2; i++) {
        hs_dom *d = &g_dom[i];
        if (parked) {
            api.mem_set(d->domain, &d->prev);
        } else {
            api.mem_get(d->domain, &d->prev);
            py_allocator ours = {d, hs_malloc, hs_calloc, hs_realloc, hs_free};
            api.mem_set(d->domain, &ours);
        }
        d->installed = !parked;
    }
    g_parked = parked;
    return HS_OK;
}

HS_EXPORT int hs_set_rate(uint64_t rate) {
    if (g_state != HS_STATE_RUNNING)
        return HS_ERR_NOT_RUNNING;
    g_rate = rate;
    if (g_mode == MODE_ACTIVE) /* else a capture is under way: it sets the gate after */
        g_left = draw_left();
    hs__native_rate_changed();
    return HS_OK;
}

/* Take the hooks out where they are still the installed ones; where someone replaced
 * them (tracemalloc.stop() restoring what it saved, or another hook on top of ours),
 * restoring our saved allocator could point at freed state, so leave them in place as
 * pass-throughs. Either way release every table and code-object reference. Calling it
 * again later retries the domains that were left. */
HS_EXPORT int hs_stop(void) {
    if (g_state == HS_STATE_IDLE)
        return HS_ERR_NOT_RUNNING;
    hs__native_on_stop(); /* first: the MEM/OBJ hooks chain through it */
    g_mode = 0;
    g_left = 0; /* closes the fast paths */
    g_fbits = g_closed;
    g_fshift = 63;
    int left = np_unhook();
    py_allocator cur;
    for (int i = 0; i < 2; i++) {
        hs_dom *d = &g_dom[i];
        if (!d->installed)
            continue;
        api.mem_get(d->domain, &cur);
        if (is_ours(&cur, d)) {
            api.mem_set(d->domain, &d->prev);
            d->installed = 0;
        } else {
            left = 1;
        }
    }
    g_state = left ? HS_STATE_LEFT : HS_STATE_IDLE;
    g_parked = 0;
    release_tables();
    return left ? HS_LEFT_INSTALLED : HS_OK;
}


/* Totals always; with drain=1 also the stacks interned and the stacks whose counters
 * changed since the previous drain (work proportional to what changed). */
HS_EXPORT int hs_read(hs_report *out, int drain) {
    if (out == NULL)
        return HS_ERR_ARG;
    memset(out, 0, sizeof *out);
    if (drain && g_state == HS_STATE_RUNNING)
        hs__native_merge();
    out->abi = HS_ABI;
    out->state = (uint64_t)g_state;
    out->rate = g_rate;
    out->max_frames = (uint64_t)g_max_frames;
    for (int i = 0; i < HS_NDOMAINS; i++) {
        hs_dom *d = &g_dom[i];
        uint64_t count = 0;
        for (int k = 0; k < HS_NCLASSES; k++)
            count += d->size_classes[k];
        out->alloc_count[i] = count;
        out->alloc_bytes[i] = d->alloc_bytes;
        out->free_count[i] = d->frees + d->realloc_count;
        out->realloc_count[i] = d->realloc_count;
        memcpy(out->size_classes[i], d->size_classes, sizeof d->size_classes);
    }
    out->sampled_count = g_sampled_count;
    out->sampled_bytes = g_sampled_bytes;
    out->live_samples = g_live_samples;
    out->live_sampled_bytes = g_live_bytes;
    out->dropped_samples = g_dropped;
    out->overflow_samples = g_overflow;
    out->stacks = g_used_stacks;
    out->frames = g_nframes;
    out->evicted_stacks = g_evicted;
    out->map_entries = g_mcount;
    out->numpy_hooked = g_np != NULL;
    int rc = hs_labels_read(out, drain && g_state == HS_STATE_RUNNING,
                            g_dom[0].alloc_bytes + g_dom[1].alloc_bytes + g_dom[2].alloc_bytes);
    if (rc != HS_OK)
        return rc;
    if (!drain || g_state != HS_STATE_RUNNING) {
        out->shim_memory = shim_memory();
        return HS_OK;
    }
    /* New stacks are the dirty ones no drain has handed out yet (a stack is dirty from
     * the sample that interns it). */
    uint32_t nnew = 0, nf = 0;
    for (uint32_t k = 0; k < g_ndirty; k++) {
        hs_stack *s = &g_stacks[g_dirty[k]];
        if (!s->reported) {
            nnew++;
            nf += s->nframes;
        }
    }
    if (!hs_reserve((void **)&g_out_new, &g_out_new_cap, nnew, 4 * sizeof(uint64_t)) ||
        !hs_reserve((void **)&g_out_codes, &g_out_codes_cap, nf, sizeof *g_out_codes) ||
        !hs_reserve((void **)&g_out_lines, &g_out_lines_cap, nf, sizeof *g_out_lines) ||
        !hs_reserve((void **)&g_out_changed, &g_out_changed_cap, g_ndirty, 5 * sizeof(uint64_t)) ||
        !hs_reserve((void **)&g_out_est, &g_out_est_cap, g_ndirty, 4 * sizeof(double)) ||
        !hs_reserve((void **)&g_out_var, &g_out_var_cap, g_ndirty, 4 * sizeof(double)))
        return HS_ERR_NOMEM;
    uint32_t knew = 0, f = 0;
    for (uint32_t k = 0; k < g_ndirty; k++) {
        uint32_t id = g_dirty[k];
        hs_stack *s = &g_stacks[id];
        if (!s->reported) {
            g_out_new[4 * knew] = id;
            g_out_new[4 * knew + 1] = s->nframes;
            g_out_new[4 * knew + 2] = s->flags | ((uint64_t)s->native << 32);
            g_out_new[4 * knew + 3] = s->label;
            knew++;
            const int32_t *lines = stack_lines(s); /* or offsets: g_lines_at_drain */
            for (uint32_t j = 0; j < s->nframes; j++, f++) {
                g_out_codes[f] = (uint64_t)(uintptr_t)s->codes[j];
                g_out_lines[f] = g_lines_at_drain ? code_line(s->codes[j], lines[j]) : lines[j];
            }
            s->reported = 1;
        }
        uint64_t *r = &g_out_changed[5 * k];
        r[0] = id;
        r[1] = s->alloc_count;
        r[2] = s->alloc_bytes;
        r[3] = s->live_count;
        r[4] = s->live_bytes;
        memcpy(&g_out_est[4 * k], s->est, sizeof s->est);
        memcpy(&g_out_var[4 * k], s->var, sizeof s->var);
        s->dirty = 0;
    }
    out->n_new = nnew;
    out->new_stacks = (uint64_t)(uintptr_t)g_out_new;
    out->n_new_frames = nf;
    out->new_codes = (uint64_t)(uintptr_t)g_out_codes;
    out->new_lines = (uint64_t)(uintptr_t)g_out_lines;
    out->n_changed = g_ndirty;
    out->changed = (uint64_t)(uintptr_t)g_out_changed;
    out->changed_est = (uint64_t)(uintptr_t)g_out_est;
    out->changed_var = (uint64_t)(uintptr_t)g_out_var;
    g_ndirty = 0;
    g_epoch++;
    out->shim_memory = shim_memory();
    return HS_OK;
}

/* ---- live sampled blocks -------------------------------------------------------- */

/* Calls fn for every live sampled block, in map order, until it returns nonzero (which is
 * returned). fn must not allocate through the hooked domains nor release the GIL: the map
 * could grow under the walk. */
int hs_live_foreach(int (*fn)(void *arg, const hs_live_block *b), void *arg) {
    if (g_state != HS_STATE_RUNNING || g_mkeys == NULL)
        return 0;
    hs_live_block b;
    for (uint64_t i = 0; i < g_mcap; i++) {
        uintptr_t k = g_mkeys[i];
        if (k == 0 || k == MAP_SENTINEL)
            continue;
        b.addr = (uint64_t)k;
        b.size = g_msizes[i];
        b.stack = g_mstacks[i] & HS_MAP_STACK_MASK;
        b.domain = g_mstacks[i] >> HS_MAP_DOM_SHIFT;
        b.weight = g_mweights[i];
        int rc = fn(arg, &b);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* The live sampled block that starts at addr: 1 and *out filled, else 0. */
int hs_live_find(uint64_t addr, hs_live_block *out) {
    if (g_state != HS_STATE_RUNNING || g_mkeys == NULL || addr == 0 || addr == MAP_SENTINEL)
        return 0;
    uint64_t mask = g_mcap - 1, i = map_slot((uintptr_t)addr);
    for (uintptr_t k; (k = g_mkeys[i]) != 0; i = (i + 1) & mask) {
        if (k == (uintptr_t)addr) {
            out->addr = addr;
            out->size = g_msizes[i];
            out->stack = g_mstacks[i] & HS_MAP_STACK_MASK;
            out->domain = g_mstacks[i] >> HS_MAP_DOM_SHIFT;
            out->weight = g_mweights[i];
            return 1;
        }
    }
    return 0;
}

/* Copy up to max live sampled blocks into out, resuming at *cursor (0 to begin; it is a
 * position in the pointer map, advanced past what was copied). Returns the number copied:
 * 0 once every block was seen. A sample taken or freed between two calls may be missed
 * or seen twice; one call under the GIL is a consistent snapshot of what it returns. */
HS_EXPORT int64_t hs_live_blocks(hs_live_block *out, uint64_t max, uint64_t *cursor) {
    if (out == NULL || cursor == NULL)
        return -HS_ERR_ARG;
    if (g_state != HS_STATE_RUNNING || g_mkeys == NULL)
        return 0;
    uint64_t i = *cursor, n = 0;
    for (; i < g_mcap && n < max; i++) {
        uintptr_t k = g_mkeys[i];
        if (k == 0 || k == MAP_SENTINEL)
            continue;
        hs_live_block *b = &out[n++];
        b->addr = (uint64_t)k;
        b->size = g_msizes[i];
        b->stack = g_mstacks[i] & HS_MAP_STACK_MASK;
        b->domain = g_mstacks[i] >> HS_MAP_DOM_SHIFT;
        b->weight = g_mweights[i];
    }
    *cursor = i;
    return (int64_t)n;
}

/* Evict the stacks that nothing needs any more: not the overflow stack, handed out by a
 * drain, unchanged since (so the caller has their final counters), nothing live, and
 * unchanged for at least min_idle further drains (a stack that allocates again soon
 * would be interned and sent again). Their slots are reused, their frame blocks freed
 * and their references to code objects released, so that the tables follow what is live
 * rather than everything ever seen. Called with the GIL held (ctypes.PyDLL), never from
 * a hook: releasing a code object may run arbitrary code (its deallocation, weakref
 * callbacks), which may allocate through our hooks; the tables are consistent before the
 * first release. The ids are left in a buffer valid until the next hs_evict or hs_stop;
 * the caller must forget them before a drain hands out a stack under one of them again. */
static int evictable(const hs_stack *s, uint64_t min_idle) {
    return s->in_use && s->reported && !s->dirty && s->live_count == 0 &&
           !(s->flags & HS_STACK_NATIVE) && (uint64_t)(g_epoch - s->touched) > min_idle;
}

HS_EXPORT int hs_evict(uint64_t min_idle, uint64_t *n_out, uint64_t *ids_out) {
    if (n_out == NULL || ids_out == NULL)
        return HS_ERR_ARG;
    *n_out = 0;
    *ids_out = 0;
    if (g_state != HS_STATE_RUNNING)
        return HS_ERR_NOT_RUNNING;
    if (g_evicting)
        return HS_ERR_RUNNING;
    /* Native samples reach the table as events: fold them in first, so that a stack one
     * of them took since the drain is dirty (native samples taken without the GIL all go
     * to the no-stack stack, whose id native_hooks.c keeps: never evicted). */
    hs__native_merge();
    uint32_t n = 0;
    uint64_t frames = 0;
    for (uint32_t id = 1; id < g_nstacks; id++) {
        if (evictable(&g_stacks[id], min_idle)) {
            hs_stack *s = &g_stacks[id];
            n++;
            frames += s->nframes;
        }
    }
    if (n == 0)
        return HS_OK;
    void **release = frames ? malloc((size_t)frames * sizeof *release) : NULL;
    if ((frames && release == NULL) ||
        !hs_reserve((void **)&g_out_evicted, &g_out_evicted_cap, n, sizeof *g_out_evicted)) {
        free(release);
        return HS_ERR_NOMEM;
    }
    uint32_t k = 0;
    size_t r = 0;
    int forgot_code = 0;
    for (uint32_t id = 1; id < g_nstacks && k < n; id++) {
        hs_stack *s = &g_stacks[id];
        if (!evictable(s, min_idle))
            continue;
        for (uint32_t j = 0; j < s->nframes; j++) {
            forgot_code |= cset_release(s->codes[j]);
            release[r++] = s->codes[j];
        }
        free(s->codes);
        g_nframes -= s->nframes;
        memset(s, 0, sizeof *s);
        s->next_free = g_free_head;
        g_free_head = id + 1;
        g_used_stacks--;
        g_out_evicted[k++] = id;
    }
    g_evicted += k;
    /* A released code object's address may be reused by another: forget its lines. */
    if (forgot_code && g_lcache != NULL)
        memset(g_lcache, 0, HS_LINE_CACHE * sizeof *g_lcache);
    if (!index_rebuild(g_index_cap)) {
        /* Keep the old index, whose entries may name free slots: fix it in place. */
        for (uint32_t i = 0; i < g_index_cap; i++)
            if (g_index[i] && !g_stacks[g_index[i] - 1].in_use)
                g_index[i] = 0; /* breaks probe chains: only duplicates result, never errors */
    }
    *n_out = k;
    *ids_out = (uint64_t)(uintptr_t)g_out_evicted;
    g_evicting = 1;
    for (size_t i = 0; i < r; i++)
        api.decref(release[i]);
    g_evicting = 0;
    free(release);
    return HS_OK;
}
