/*
 * frame_walk.c: the running thread's Python frames read in place (see frame_walk.h).
 *
 * What PyThreadState_GetFrame and PyFrame_GetBack do, minus making frame objects:
 * start at the thread's current frame, follow `previous`, and skip the frames they
 * skip (_PyFrame_IsIncomplete of that version): frames owned by the C stack or the
 * interpreter (3.12+ entry and trampoline frames), and frames not yet at their first
 * traceable instruction (pushed, still making cells or the generator). A frame's
 * instruction offset is PyFrame_GetLasti's: the instruction pointer's distance from the
 * code's first instruction, in bytes, or -1 before it.
 */
#include "frame_walk.h"

#include <stddef.h>

typedef struct {
    int64_t ts_frame;   /* PyThreadState -> cframe (3.11, 3.12) or current_frame (3.13+) */
    int64_t cframe_cur; /* _PyCFrame -> current_frame; -1: ts_frame leads to the frame */
    int64_t code;       /* _PyInterpreterFrame: f_code / f_executable */
    int64_t previous;
    int64_t instr;      /* prev_instr (3.11, 3.12) or instr_ptr (3.13+) */
    int64_t owner;      /* a char */
    int64_t co_code;    /* PyCodeObject: co_code_adaptive, the first instruction */
    int64_t co_first;   /* _co_firsttraceable (int) */
    uintptr_t tag_mask; /* 3.14's f_executable is a stack reference: its low bit a tag */
    int owner_skip;     /* owners from here up are not frames of code (3.12+) */
} walk_layout;

/* Offsets measured with offsetof() against each version's headers (Include/internal/
 * pycore_frame.h, pycore_interpframe_structs.h, cpython/pystate.h, cpython/code.h) in
 * default builds: 3.11.7, 3.12.1, 3.13.0, Debian's 3.14.10. Owners: THREAD 0, GENERATOR
 * 1, FRAME_OBJECT 2, then CSTACK 3 (3.12, 3.13), or INTERPRETER 3 and CSTACK 4 (3.14). */
static const walk_layout LAYOUTS[] = {
    /* 3.11 */ {56, 8, 32, 48, 56, 69, 184, 168, ~(uintptr_t)0, 256},
    /* 3.12 */ {56, 0, 0, 8, 56, 70, 192, 176, ~(uintptr_t)0, 3},
    /* 3.13 */ {72, -1, 0, 8, 56, 70, 200, 184, ~(uintptr_t)0, 3},
    /* 3.14 */ {72, -1, 0, 8, 56, 74, 208, 192, ~(uintptr_t)1, 3},
};
#define FIRST_MINOR 11
#define OWNED_BY_GENERATOR 1
/* PyFrameObject: PyObject_HEAD (16), f_back, then f_frame, in 3.11-3.14. */
#define F_FRAME 24
/* Far more frames than any recursion limit lets a stack hold: a chain this long is not
 * one (memory that changed under us), and the walk gives up. */
#define MAX_CHAIN (1 << 20)

static walk_layout g_layout;
static const void *g_code_type;
int hs_walk_on;

#define WORD(p, off) (*(char *const *)((const char *)(p) + (off)))

int hs_walk_layout(int minor, void *code_type) {
    hs_walk_on = 0;
    int i = minor - FIRST_MINOR;
    if (i < 0 || i >= (int)(sizeof LAYOUTS / sizeof LAYOUTS[0]) || code_type == NULL)
        return 0;
    g_layout = LAYOUTS[i];
    g_code_type = code_type;
    return 1;
}

/* Built with -DHS_NO_WALK (benchmarks only: shim_overhead.py --base), never on. */
void hs_walk_enable(int on) {
#ifdef HS_NO_WALK
    on = 0;
#endif
    hs_walk_on = on && g_code_type != NULL;
}

int hs_walk(void *ts, void **codes, int32_t *lasti, void **frames, int max, int *truncated) {
    const walk_layout *L = &g_layout;
    const char *f = WORD(ts, L->ts_frame);
    if (L->cframe_cur >= 0 && f != NULL)
        f = WORD(f, L->cframe_cur);
    int n = 0;
    *truncated = 0;
    for (int steps = 0; f != NULL; f = WORD(f, L->previous)) {
        if (++steps > MAX_CHAIN)
            return -1;
        int owner = (unsigned char)f[L->owner];
        if (owner >= L->owner_skip)
            continue;
        const char *code = (const char *)((uintptr_t)WORD(f, L->code) & L->tag_mask);
        if (code == NULL || WORD(code, 8) != g_code_type) /* ob_type */
            return -1;
        const char *first = code + L->co_code, *ip = WORD(f, L->instr);
        ptrdiff_t traceable = *(const int32_t *)(code + L->co_first);
        if (owner != OWNED_BY_GENERATOR && ip < first + 2 * traceable)
            continue; /* incomplete */
        if (n == max) {
            *truncated = 1;
            break;
        }
        ptrdiff_t units = (ip - first) / 2;
        codes[n] = (void *)code;
        lasti[n] = units < 0 ? -1 : (int32_t)(units * 2);
        frames[n] = (void *)f;
        n++;
    }
    return n;
}

void *hs_walk_frame_of(void *frame_object) { return WORD(frame_object, F_FRAME); }

void *hs_walk_frame_key(void *frame_object) {
    if (!hs_walk_on || frame_object == NULL)
        return frame_object;
    return hs_walk_frame_of(frame_object);
}

int32_t hs_walk_first_traceable(void *code) {
    return g_code_type == NULL ? -1 : *(const int32_t *)((const char *)code + g_layout.co_first);
}
