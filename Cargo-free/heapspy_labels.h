/*
 * heapspy_labels.h: who allocated, for heapspy_shim.c (heapspy_labels.c).
 *
 * Two things, both read without ever running Python code or looking into a Python
 * container from inside a hook:
 *
 *  - Label sets: every sampled stack is interned together with the label set of the
 *    sample that made it (native thread id, the code of the asyncio task's coroutine, and
 *    the task's name slot), so every per-stack counter splits per label set by itself.
 *    The coroutine is found on the frames already captured: the frame right above an
 *    "anchor" (asyncio's Handle._run or a Python Task's step method, whose code objects
 *    the agent hands over). The task's name is read at sample time, so that a task that
 *    ends before the next interval keeps it: for asyncio's C Task, the anchor frame's
 *    self (a Handle) -> its callback (a TaskStepMethWrapper) -> the task -> its name
 *    object, each typechecked, at offsets the agent measured (hs_set_task_probe); the
 *    label set holds a reference to that object. Other tasks (a Python Task, a subclass)
 *    get a name slot from a table of coroutine frames the agent registers at each
 *    interval (hs_set_tasks). Rendering names is the agent's business.
 *
 *  - Exact allocated bytes per thread: count_alloc() compares the thread pointer (one
 *    register read) with the thread that allocated last; only on a change does
 *    hs_thr_switch() credit the bytes allocated since the previous change to the thread
 *    that made them. Under the GIL, allocations come in runs per thread, so the common
 *    path gains one compare and no memory write.
 */
#ifndef HEAPSPY_LABELS_H
#define HEAPSPY_LABELS_H

#include <stdint.h>

#include "heapspy_shim.h"

#define HS_MAX_LABELS (1u << 14)  /* label sets per session; then samples get set 0 */
#define HS_MAX_THREADS 4096       /* thread accounts per session; then account 0 */
#define HS_MAX_ANCHORS 8
#define HS_MAX_NAMED 8192         /* label sets holding a task's name (half at most with
                                   * a default one); then the interval table's */

/* The thread that allocated last (its thread pointer); NULL after start. */
extern __attribute__((visibility("hidden"))) void *hs_thr_cur;

/* Is the running thread the one that allocated last? One register read, one compare. */
static inline int hs_same_thread(void) { return __builtin_thread_pointer() == hs_thr_cur; }

/* Frame pointers of the capture under way, parallel to its codes (borrowed addresses):
 * frame objects, or interpreter frames from 3.11 while frame_walk.c reads those. */
extern __attribute__((visibility("hidden"))) void **hs_cap_frames;

/* A thread change: credit `total` (all domains' allocated bytes so far) minus the
 * previous change's to the previous thread. */
void hs_thr_switch(uint64_t total);

/* Allocate or release the tables (with the stack tables, under the GIL). */
int hs_labels_start(int max_frames);
void hs_labels_stop(void);

/* The label set of the sample whose frames (leaf first) were just captured; 0 when the
 * table is full. May take a reference to a code object (held until hs_labels_stop). */
uint32_t hs_labels_of_sample(void *const *codes, int n);

/* Fill the label and thread fields of a report (drain: also the new label sets). */
int hs_labels_read(hs_report *out, int drain, uint64_t total);

uint64_t hs_labels_memory(void);

#endif
