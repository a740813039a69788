/*
 * native_hooks.h: native allocations (the RAW domain and the C allocator calls of the
 * target's extension modules and shared libraries), beside the MEM/OBJ hooks of
 * heapspy_shim.c. Exported functions are mirrored by agent/heapspy_agent/shim.py; they are
 * called with the GIL held, like every hs_* function. Bump HS_NATIVE_ABI whenever the
 * exported part of this file changes (HS_ABI covers heapspy_shim.h only).
 */
#ifndef HEAPSPY_NATIVE_HOOKS_H
#define HEAPSPY_NATIVE_HOOKS_H

#include <stddef.h>
#include <stdint.h>

#define HS_NATIVE_ABI 2

/* Native domains, indexes of the arrays of hs_native_report. */
#define HS_NDOM_RAW 0    /* direct PyMem_RawMalloc & co (not what pymalloc forwards) */
#define HS_NDOM_MALLOC 1 /* malloc & co called by redirected libraries */
#define HS_NDOM_MMAP 2   /* anonymous mmap/munmap called by redirected libraries */
#define HS_NNDOMAINS 3

/* hs_native_start flags. */
#define HS_NATIVE_RAW 1u /* hook the RAW domain */
#define HS_NATIVE_GOT 2u /* redirect the allocator entries of loaded libraries */
#define HS_NATIVE_FRAMES 4u /* record each native sample's native call stack too */

/* Return addresses kept per native sample (native_frames.c), leaf first. */
#define HS_NATIVE_MAX_FRAMES 32

/* Return codes beyond heapspy_shim.h's. */
#define HS_ERR_NATIVE_ARCH 20 /* GOT rewriting is implemented for x86_64 only */

/* Flag of a stack (hs_report.new_stacks): native samples taken where no Python stack
 * could be read (a thread without the GIL, or inside one of our own captures). */
#define HS_STACK_NATIVE 8u

typedef struct {
    uint64_t abi;
    uint64_t active;                      /* bit 0 RAW hooked, bit 1 GOT entries redirected */
    uint64_t alloc_count[HS_NNDOMAINS];
    uint64_t alloc_bytes[HS_NNDOMAINS];
    uint64_t free_count[HS_NNDOMAINS];
    uint64_t realloc_count[HS_NNDOMAINS];
    uint64_t sampled_count;               /* native samples taken (cumulative) */
    uint64_t sampled_bytes;
    uint64_t live_samples;                /* native sampled blocks not yet freed */
    uint64_t live_sampled_bytes;
    uint64_t nogil_samples;               /* samples without a Python stack */
    uint64_t dropped_samples;             /* pointer map or event buffer full */
    uint64_t libraries;                   /* libraries with redirected entries now */
    uint64_t entries;                     /* GOT entries redirected now */
    uint64_t threads;                     /* threads that allocated natively this session */
    uint64_t shim_memory;                 /* bytes the native tables hold */
} hs_native_report;

int hs_native_abi(void);
int hs_native_report_size(void);
/* Start after hs_start (sampling must be running). Returns HS_OK or an error; `flags` says
 * what to hook. What was redirected and skipped: hs_native_libraries. */
int hs_native_start(unsigned flags);
/* Redirect libraries loaded since the last scan (dlopen, a late import). */
int hs_native_rescan(void);
/* Restore every entry still ours; hs_stop calls it too. 1: some entry was changed by
 * someone else since (left alone: the library must stay loaded). */
int hs_native_stop(void);
int hs_native_read(hs_native_report *out);
/* Lines "R<TAB>path<TAB>entries" (redirected) and "S<TAB>path<TAB>why" (skipped), plus
 * "N<TAB><TAB>note" for process-wide notes, NUL-terminated in buf; returns the length
 * needed (excluding the NUL). */
size_t hs_native_libraries(char *buf, size_t len);
/* The return addresses of native frames set `id` (the high half of a stack's flags in
 * hs_report.new_stacks), leaf first: the one that called the allocator, then its callers
 * as far as frame pointers lead. Copies at most max into out; returns how many the set
 * has (0: no such set). */
int hs_native_frames(uint32_t id, uint64_t *out, int max);
/* 1 once native hooks were ever installed: the library must never be unloaded (a thread
 * may be inside a hook, or another tool may chain to one). */
int hs_native_pinned(void);
/* How what pymalloc forwards to RAW is kept out of RAW's counts: 0 RAW not hooked, 1 by
 * the RAW hooks' return addresses (pymalloc's call sites, learnt at the start; reallocs
 * marked), 2 by marking every MEM/OBJ call that may forward (the costlier fallback: 3.8,
 * whose _PyObject_Free tail-calls PyMem_RawFree; a RAW hook installed over ours).
 * Diagnostic, for tests and benchmarks: the agent does not bind it (no ABI change). */
int hs_native_raw_mode(void);

/* ---- internal: between heapspy_shim.c and native_hooks.c (hidden) ---------------- */
/* heapspy_shim.c provides: */
uint64_t hs__rate(void);
/* Capture and intern the calling thread's Python stack (GIL held): 1 and *id, or 0 when
 * no capture may run now (stopped, or a capture is already under way). */
int hs__capture_stack(uint32_t *id, uint32_t native);
/* Intern the stack of native samples without a Python stack (with these native frames:
 * 0 none). Such stacks are never evicted. */
uint32_t hs__native_stack(uint32_t native);
/* Apply a sampled event to a stack (GIL held). */
#define HS_EV_FREE 0    /* a live sampled block freed */
#define HS_EV_ALLOC 1   /* a sample taken: an allocation and a live block */
#define HS_EV_UNALLOC 2 /* an allocation taken back (moved to another stack) */
void hs__stack_event(uint32_t id, uint64_t size, double w, int kind);
/* The allocator the MEM (0) or OBJ (1) hook chains to; NULL if not installed. */
void *hs__dom_prev(int i);
/* native_hooks.c provides (called by heapspy_shim.c with the GIL held): */
void hs__native_merge(void);
void hs__native_on_stop(void);
void hs__native_rate_changed(void);

#endif
