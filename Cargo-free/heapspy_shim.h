/*
 * heapspy_shim.h: the C side of the shim's ABI (mirrored by agent/shim.py).
 *
 * The shim is plain C without Python.h: one build serves every CPython 3.8-3.14.
 * Every exported function must be called with the GIL held (ctypes.PyDLL).
 * Bump HS_ABI whenever anything in this file changes.
 */
#ifndef HEAPSPY_SHIM_H
#define HEAPSPY_SHIM_H

#include <stdint.h>

#define HS_ABI 14

/* Size classes: class k counts allocations with 2**(k-1) < size <= 2**k; class 0 holds
 * sizes 0 and 1, class 64 sizes above 2**63. */
#define HS_NCLASSES 65

/* Index of a domain in the per-domain arrays of hs_report. */
#define HS_DOM_MEM 0
#define HS_DOM_OBJ 1
#define HS_DOM_NUMPY 2 /* NumPy array data through its default PyDataMem handler */
#define HS_NDOMAINS 3

/* Return codes. */
#define HS_OK 0
#define HS_ERR_RUNNING 1       /* hs_start: already started */
#define HS_ERR_NOT_RUNNING 2   /* nothing to stop / no session */
#define HS_ERR_FREE_THREADED 3 /* free-threaded build: hooks would run without a GIL */
#define HS_ERR_SYMBOLS 4       /* a C-API function could not be found in the process */
#define HS_ERR_VERSION 5       /* not CPython 3.8 or newer */
#define HS_ERR_SUBINTERP 6     /* 3.12+ with several interpreters (one may have its own GIL) */
#define HS_ERR_NOMEM 7         /* the shim's own tables could not be allocated */
#define HS_ERR_HOOKS_LEFT 8    /* an earlier session's hooks are still chained below others */
#define HS_ERR_ARG 9           /* invalid argument */
#define HS_LEFT_INSTALLED 10   /* hs_stop: someone replaced our hooks; they stay installed as
                                  pass-throughs and the library must stay loaded */
#define HS_ERR_HANDLER 11      /* hs_numpy_hook: not a version-1 default NumPy handler */
#define HS_ERR_LAYOUT 12       /* hs_types_set: a type's flags are not where 3.8-3.14 keep them */

/* hs_start flags. */
#define HS_FLAG_FREE_THREADED 1u /* the caller knows the build is free-threaded */

/* Flags of a stack in hs_report.new_stacks. */
#define HS_STACK_TRUNCATED 1u /* deeper than max_frames: the root-most frames are missing */
#define HS_STACK_OVERFLOW 2u  /* stack 0: samples whose stack did not fit in the tables */
#define HS_STACK_FOREIGN 4u   /* allocated in another interpreter (no frames captured) */

/* State values. */
#define HS_STATE_IDLE 0
#define HS_STATE_RUNNING 1
#define HS_STATE_LEFT 2 /* stopped, but hooks left installed as pass-throughs */

/*
 * Filled by hs_read(). All counters are since the last hs_start(). Domain totals are at
 * requested sizes; a realloc counts as a free (ptr != NULL) plus an allocation of the new
 * size. A failed malloc or calloc is counted, and so is a failed realloc of an unsampled
 * block on the fast path (all are counted before they are made, to keep the common path
 * a tail call); a failed realloc of a sampled block counts nothing and keeps its entry.
 * The address fields point into buffers owned by the shim, valid until the next
 * hs_read(drain=1) or hs_stop().
 *
 *   new_stacks:  n_new records of 4 uint64: (stack id, number of frames, flags, label set
 *                id). Flags: HS_STACK_* in the low 32 bits, the id of the stack's native
 *                frames (native_hooks.h, hs_native_frames; 0: none) in the high 32 bits.
 *                Stack 0 is the overflow stack. An id stays valid until hs_evict()
 *                hands it back; a later drain may then hand out another stack under the
 *                same id. Their frames are consecutive in new_codes/new_lines. A stack is
 *                interned with the label set of its samples: the same frames under two
 *                label sets are two stacks (heapspy_labels.h). From 3.11 the frames are
 *                told apart by instruction, not line, so two stacks may show the same
 *                lines (two allocations on one line); their lines are found when a drain
 *                first hands them out.
 *   new_codes:   n_new_frames code objects (PyObject *), leaf frame first (leaf -> root).
 *                The shim holds a reference to each until the stack is evicted or
 *                hs_stop(): take your own before the next hs_evict().
 *   new_lines:   n_new_frames int64 line numbers, parallel to new_codes (-1: unknown).
 *   changed:     n_changed records of 5 uint64, current absolute values (not deltas) of each
 *                stack whose counters changed since the last drain: (stack id, alloc_count,
 *                alloc_bytes, live_count, live_bytes). Raw sampled values, not upscaled.
 *   changed_est: n_changed records of 4 doubles, parallel to changed: the same four values
 *                upscaled. Each sample of n bytes weighs 1 / (1 - exp(-n / rate)), Go's
 *                scale for one allocation, with the rate in force when it was taken.
 *   changed_var: n_changed records of 4 doubles, parallel to changed: the variance of each
 *                estimate, summed over its samples: a sample of weight w and n bytes adds
 *                w (w - 1) to the counts' and w (w - 1) n^2 to the bytes' (the unbiased
 *                Horvitz-Thompson estimate of its variance), at its own rate.
 *   new_labels:  n_new_labels records of 4 uint64, the label sets interned since the last
 *                drain: (label set id, native thread id, task slot, task name). Set 0 is
 *                the empty set (stack 0, and samples once the label table is full); task
 *                slot 0: none, else what the agent registered with hs_set_tasks; task
 *                name: the name object (PyObject *: a str, or an int for 3.13+'s default
 *                name) read at sample time, or 0; the shim holds a reference until hs_stop().
 *   new_label_codes: n_new_labels code objects (PyObject *) of the task's coroutine, or
 *                NULL outside a task; the shim holds a reference until hs_stop().
 *   threads:     n_threads records of 2 uint64: (native thread id, exact bytes allocated by
 *                that thread since start, all domains, as alloc_bytes); thread id 0 collects
 *                the threads beyond HS_MAX_THREADS.
 */
typedef struct {
    uint64_t abi;
    uint64_t state;
    uint64_t rate;
    uint64_t max_frames;
    uint64_t alloc_count[HS_NDOMAINS];
    uint64_t alloc_bytes[HS_NDOMAINS];
    uint64_t free_count[HS_NDOMAINS];
    uint64_t realloc_count[HS_NDOMAINS];
    uint64_t size_classes[HS_NDOMAINS][HS_NCLASSES];
    uint64_t sampled_count;      /* samples taken (cumulative) */
    uint64_t sampled_bytes;      /* their requested bytes (cumulative) */
    uint64_t live_samples;       /* sampled blocks not yet freed */
    uint64_t live_sampled_bytes; /* their bytes */
    uint64_t dropped_samples;    /* samples not tracked for frees: pointer map full */
    uint64_t overflow_samples;   /* samples attributed to stack 0: stack table full */
    uint64_t stacks;             /* stacks in the table now (evicted ones left) */
    uint64_t frames;             /* frames stored for them */
    uint64_t map_entries;        /* == live_samples */
    uint64_t shim_memory;        /* bytes of libc memory the shim holds */
    uint64_t numpy_hooked;       /* 1 while NumPy's default data handler goes through us */
    uint64_t n_new;
    uint64_t new_stacks;
    uint64_t n_new_frames;
    uint64_t new_codes;
    uint64_t new_lines;
    uint64_t n_changed;
    uint64_t changed;
    uint64_t changed_est;
    uint64_t labels;       /* label sets interned */
    uint64_t n_new_labels;
    uint64_t new_labels;
    uint64_t new_label_codes;
    uint64_t n_threads;
    uint64_t threads;
    uint64_t changed_var;
    uint64_t evicted_stacks; /* stacks evicted so far (hs_evict) */
} hs_report;

int hs_abi(void);
int hs_report_size(void); /* sizeof(hs_report): the binding checks its mirror against it */
int hs_start(uint64_t rate, int max_frames, uint64_t max_stacks, uint64_t seed, unsigned flags);
int hs_set_rate(uint64_t rate);
int hs_stop(void);
int hs_state(void);
/* 3.11+: read the caller's frames in place at each sample (frame_walk.h) once this check
 * passes: called from Python, with probe_code a code object whose first `first` (>= 1)
 * code units come before its RESUME. Always HS_OK unless a session runs (HS_ERR_RUNNING)
 * or the C-API is missing; hs_walk_state() then says whether the walk is on (1) or the
 * public frame API stays in use (0). */
int hs_walk_verify(void *probe_code, int first);
int hs_walk_state(void);
/* Tests only: from now on (on != 0) each in-place capture is also walked through the API;
 * *checked and *differ say how many captures were compared and how many differed. */
void hs_walk_check(int on, uint64_t *checked, uint64_t *differ);
int hs_read(hs_report *out, int drain);
/* Evict stacks with nothing live, already drained and unchanged for more than min_idle
 * drains; *n_out ids (uint32) at address *ids_out, valid until the next call or hs_stop. */
int hs_evict(uint64_t min_idle, uint64_t *n_out, uint64_t *ids_out);
const char *hs_strerror(int code);
/* NumPy array data (>= 1.22): hook the default PyDataMem_Handler, found by the caller
 * through NumPy's C-API table, in place; hs_stop() restores it. hs_numpy_inflight() is the
 * number of threads inside a NumPy hook: its calloc releases the GIL inside the call, so
 * the library must not be unloaded until this is 0. */
int hs_numpy_hook(void *handler);
int hs_numpy_inflight(void);
/* pymalloc's account of its arenas (CPython's _PyObject_DebugMallocStats) written to `out`,
 * a FILE*; its return value (0: pymalloc not in use). Call with the GIL held. */
int hs_pymalloc_stats(void *out);
/* Labels (heapspy_labels.c). The code objects of the frames right below a task's
 * coroutine (asyncio's Handle._run, a Python Task's step): at most HS_MAX_ANCHORS (8), the
 * caller keeps them alive. Then the coroutine frames of the tasks alive now, each with
 * its code object and the slot (>= 1) its name has on the agent's side: replaces the
 * previous table. Both only while running (HS_ERR_NOT_RUNNING otherwise); hs_stop forgets
 * them. */
int hs_set_anchors(void *const *codes, int n);
int hs_set_tasks(uint64_t n, const uint64_t *frames, const uint64_t *codes, const uint32_t *slots);
/* How to read the running C Task's name at sample time (heapspy_labels.h): the offset of
 * a frame object's interpreter frame (-1: locals inline, before 3.11), of the first local
 * from there, asyncio.events.Handle and the offset of its _callback, _asyncio.Task and
 * the offset of its name; str, int and the offset of a compact ASCII str's characters
 * (-1: unknown), to tell asyncio's default names. The caller keeps the types alive.
 * NULL types: off. */
int hs_set_task_probe(int64_t f_frame, int64_t local0, void *handle_type, int64_t callback,
                      void *task_type, int64_t name, void *str_type, void *int_type,
                      int64_t ascii_data);
/* How to find the task in a task's wakeup callback (Handle._callback of its steps after a
 * real await): the callback's exact type, the offset of the task in it and, for a type
 * that is not the task's own (3.10+'s builtin function), the offset of the word that must
 * equal `ml` (its method definition), else -1. The caller keeps the type alive. NULL
 * type: off. Needs hs_set_task_probe's. */
int hs_set_wakeup_probe(void *type, int64_t task, int64_t ml_off, void *ml);

/* One live sampled block: what the pointer map knows of it. */
typedef struct {
    uint64_t addr;   /* the pointer the hooked allocator returned (an object's block start) */
    uint64_t size;   /* requested bytes */
    uint32_t stack;  /* stack id (as in hs_report) */
    uint32_t domain; /* HS_DOM_MEM, HS_DOM_OBJ or HS_DOM_NUMPY */
    double weight;   /* 1 / P(sampled) at the rate in force when it was taken */
} hs_live_block;

/* Copy up to max live sampled blocks into out, from *cursor (0 to begin); returns how
 * many were copied (0: done), -HS_ERR_ARG for NULL arguments. See heapspy_shim.c. */
int64_t hs_live_blocks(hs_live_block *out, uint64_t max, uint64_t *cursor);

/* Not exported, for the other C files of the shim (GIL held, the shim running): */
/* Call fn on every live sampled block until it returns nonzero; fn must not allocate
 * through the hooked domains nor release the GIL. */
int hs_live_foreach(int (*fn)(void *arg, const hs_live_block *b), void *arg);
/* 1 and *out filled when addr is the start of a live sampled block, else 0. */
int hs_live_find(uint64_t addr, hs_live_block *out);
/* Benchmarks only: hooks out (1) or back in (0), tables kept; HS_ERR_NOT_RUNNING when not
 * running or already so, HS_ERR_HOOKS_LEFT when another hook is on top of ours. */
int hs_park(int parked);

#endif
