/*
 * frame_walk.h: the running thread's Python frames read in place (3.11-3.14), for the
 * shim's capture (frame_walk.c).
 *
 * From 3.11 CPython keeps frames as plain structs (_PyInterpreterFrame) on a per-thread
 * stack, and makes a frame object only when one is asked for. The public way to walk
 * them (PyThreadState_GetFrame, PyFrame_GetBack) makes one for every frame it passes
 * that has none yet: most of what a sample cost in the shim, and allocations of ours in
 * somebody's malloc. Here the same walk reads the structs: no allocation, no reference
 * counts, no Python code, no error state touched.
 *
 * The layout comes from each minor version's headers (default, GIL builds) and is used
 * only once hs_walk_verify (heapspy_shim.c) has compared, on a live stack of the agent's
 * making, every frame this walk finds with what the public API says: the same code
 * objects, the same instruction offsets, and each frame object's f_frame pointing at the
 * struct read here. Any difference, and the shim keeps the public API.
 */
#ifndef HEAPSPY_FRAME_WALK_H
#define HEAPSPY_FRAME_WALK_H

#include <stdint.h>

/* Select the layout of CPython 3.minor; 0 when there is none for it (before 3.11, or a
 * minor version this file does not know). Leaves the walk off. */
int hs_walk_layout(int minor, void *code_type);

/* Turn the walk on (after a successful check) or off. */
void hs_walk_enable(int on);

/* Whether the capture uses the walk, so that hs_cap_frames holds interpreter frames. */
extern __attribute__((visibility("hidden"))) int hs_walk_on;

/* The frames of the thread whose PyThreadState is ts, leaf first, as PyThreadState_GetFrame
 * and PyFrame_GetBack would give them: at most max code objects (borrowed), their
 * PyFrame_GetLasti offsets and their interpreter frames; *truncated is set when a further
 * frame exists. -1 when something does not look as expected (an executable that is not
 * a code object, a chain far too long): the caller then uses the public API. */
int hs_walk(void *ts, void **codes, int32_t *lasti, void **frames, int max, int *truncated);

/* A frame object's interpreter frame (its f_frame, 3.11+). */
void *hs_walk_frame_of(void *frame_object);

/* The key hs_cap_frames uses for a frame object: its interpreter frame while the walk is
 * on, the frame object itself otherwise. */
void *hs_walk_frame_key(void *frame_object);

/* _co_firsttraceable of a code object, for hs_walk_verify's check of that offset. */
int32_t hs_walk_first_traceable(void *code);

#endif
