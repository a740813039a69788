/*
 * heapspy_labels.c: label sets of samples and exact allocated bytes per thread (see
 * heapspy_labels.h for what and why).
 *
 * Everything here runs with the GIL held: from the hooks (hs_thr_switch on a thread
 * change, hs_labels_of_sample inside a sample's capture window) or from the agent's calls
 * (hs_set_anchors, hs_set_tasks, hs_read). Nothing here runs Python code or reads a
 * Python object: a code or frame pointer is only compared, and code objects are only
 * increfed and decrefed (at stop).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "heapspy_labels.h"
#include "frame_walk.h"
#include "hs_common.h"

#define HS_EXPORT __attribute__((visibility("default")))
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

typedef struct {
    uint64_t hash;
    void *code;    /* the task's coroutine code (a reference held), or NULL */
    uint32_t tid;  /* native thread id */
    uint32_t task; /* the agent's name slot of the task, 0: none known */
    void *name;    /* the task's name object read at sample time (a reference held), or NULL */
} hs_labelset;

typedef struct {
    uint32_t tid;
    uint64_t bytes;
} hs_thread_acct;

typedef struct {
    uintptr_t frame; /* 0: empty */
    uintptr_t code;
    uint32_t slot;
} hs_task;

void *hs_thr_cur;
void **hs_cap_frames;

static int g_on;
static void (*p_incref)(void *);
static void (*p_decref)(void *);
static __thread uint32_t t_tid;

/* Label sets: records, open-addressing index (id + 1, 0 = empty), drained mark. */
static hs_labelset *g_sets;
static uint32_t g_nsets, g_sets_drained;
static uint32_t *g_sindex;
#define SINDEX_CAP (2 * HS_MAX_LABELS)

/* Thread accounts: account 0 collects the threads beyond the table. */
static hs_thread_acct *g_accts;
static uint32_t g_naccts;
static uint16_t *g_aindex; /* account + 1 */
#define AINDEX_CAP (2 * HS_MAX_THREADS)
static hs_thread_acct *g_acct_cur;
static uint64_t g_thr_base;

static void *g_anchors[HS_MAX_ANCHORS];
static int g_nanchors;

static hs_task *g_tasks;
static uint64_t g_tasks_cap; /* power of two, or 0 */

/* The task probe (hs_set_task_probe): how to go from an anchor frame to the running C
 * Task's name at sample time. 0 in g_probe.handle_type: off. */
static struct {
    int64_t f_frame;   /* PyFrameObject -> its interpreter frame (3.11+), -1: locals inline */
    int64_t local0;    /* the first local (self) from there */
    void *handle_type; /* asyncio.events.Handle */
    int64_t callback;  /* Handle._callback */
    void *task_type;   /* _asyncio.Task */
    int64_t name;      /* TaskObj.task_name */
    void *str_type, *int_type;
    int64_t ascii_data; /* a compact ASCII str's characters, -1: unknown */
} g_probe;
static void *g_wrapper_type; /* _asyncio's TaskStepMethWrapper, once recognised */
/* The task's wakeup callback (hs_set_wakeup_probe): Handle._callback of the steps after
 * a real await. NULL type: off. */
static struct {
    void *type;      /* its exact type */
    int64_t task;    /* the task in it */
    int64_t ml_off;  /* a builtin function's m_ml, or -1: the type says enough */
    void *ml;        /* task_wakeup's PyMethodDef */
} g_wakeup;
static uint32_t g_named, g_named_default; /* label sets holding a name, a default one */

/* Drain buffers. */
static uint64_t *g_out_sets, *g_out_codes, *g_out_threads;
static uint32_t g_out_sets_cap, g_out_codes_cap, g_out_threads_cap;


static uint32_t current_tid(void) {
    if (UNLIKELY(t_tid == 0))
        t_tid = (uint32_t)syscall(SYS_gettid);
    return t_tid;
}

/* ---- exact bytes per thread ------------------------------------------------------ */

static hs_thread_acct *account(uint32_t tid) {
    uint32_t i = (uint32_t)(hs_mix64(tid) & (AINDEX_CAP - 1));
    for (uint16_t v; (v = g_aindex[i]) != 0; i = (i + 1) & (AINDEX_CAP - 1))
        if (g_accts[v - 1].tid == tid)
            return &g_accts[v - 1];
    if (g_naccts >= HS_MAX_THREADS)
        return &g_accts[0];
    hs_thread_acct *a = &g_accts[g_naccts++];
    a->tid = tid;
    a->bytes = 0;
    g_aindex[i] = (uint16_t)g_naccts;
    return a;
}

void hs_thr_switch(uint64_t total) {
    if (!g_on)
        return;
    if (g_acct_cur != NULL)
        g_acct_cur->bytes += total - g_thr_base;
    g_thr_base = total;
    hs_thr_cur = __builtin_thread_pointer();
    g_acct_cur = account(current_tid());
}

/* ---- label sets ----------------------------------------------------------------- */

static int is_anchor(void *code) {
    for (int i = 0; i < g_nanchors; i++)
        if (g_anchors[i] == code)
            return 1;
    return 0;
}

static uint32_t task_slot(void *frame, void *code) {
    if (g_tasks_cap == 0)
        return 0;
    uint64_t mask = g_tasks_cap - 1, i = hs_mix64((uintptr_t)frame) & mask;
    for (; g_tasks[i].frame != 0; i = (i + 1) & mask)
        if (g_tasks[i].frame == (uintptr_t)frame)
            return g_tasks[i].code == (uintptr_t)code ? g_tasks[i].slot : 0;
    return 0;
}

/* Objects are read as CPython lays them out: ob_type at 8, a type's tp_name at 24,
 * tp_basicsize at 32 and tp_base at 256 (3.8-3.14, default builds; task_probe checks
 * tp_base's on the C Task class); the low two bits of a 3.14 stack reference are tags. */
#define OB_TYPE(o) (*(void **)((char *)(o) + 8))
#define FIELD(o, off) (*(void **)((char *)(o) + (off)))
#define UNTAG(p) ((void *)((uintptr_t)(p) & ~(uintptr_t)3))
#define TP_BASE 256
#define MAX_BASES 64

/* Whether `type` is the C Task class or derives from it: its tp_base chain (the classes
 * whose C layout it extends, not its MRO) reaches it, so an instance has the C Task's
 * fields where the Task's are. A Python subclass of asyncio.Task is one (a custom task
 * factory's); asyncio's Python Task (_PyTask) is not. No Python code runs: types are
 * only read. */
static int is_task_type(void *type) {
    for (int depth = 0; type != NULL && depth < MAX_BASES; depth++) {
        if (type == g_probe.task_type)
            return 1;
        type = FIELD(type, TP_BASE);
    }
    return 0;
}

static int is_step_wrapper(void *type) {
    if (type == g_wrapper_type)
        return 1;
    const char *name = FIELD(type, 24);
    if (name == NULL || *(int64_t *)((char *)type + 32) != 32)
        return 0;
    if (strncmp(name, "_asyncio.", 9) == 0)
        name += 9;
    if (strcmp(name, "TaskStepMethWrapper") != 0)
        return 0;
    g_wrapper_type = type;
    return 1;
}

/* The name object of the C Task that Handle._run (the anchor frame `frame`) is stepping:
 * frame's self -> Handle._callback, a TaskStepMethWrapper (a first step, or one after a
 * bare yield) -> its task (at 16), or the task's wakeup callback (a step after a real
 * await: 3.8/3.9's TaskWakeupMethWrapper, 3.10+'s builtin task_wakeup method bound to the
 * task, told from other builtins by its PyMethodDef) -> its task -> the task's name (a str, or 3.13+'s int for a default name not asked for yet). Each object
 * is typechecked before its fields are read; NULL when anything does not fit (a Python
 * Task, a plain callback: the interval's table names those). A subclass of the C Task
 * is read as the Task: its stored name, whatever its get_name() would say. */
static void *task_name_of(void *frame) {
    if (g_probe.handle_type == NULL || frame == NULL)
        return NULL;
    char *locals = frame; /* an interpreter frame already while frame_walk.c's walk is on */
    if (g_probe.f_frame >= 0 && !hs_walk_on && (locals = FIELD(frame, g_probe.f_frame)) == NULL)
        return NULL;
    void *self = UNTAG(FIELD(locals, g_probe.local0));
    if (self == NULL || OB_TYPE(self) != g_probe.handle_type)
        return NULL;
    void *cb = FIELD(self, g_probe.callback), *task;
    if (cb == NULL)
        return NULL;
    if (is_step_wrapper(OB_TYPE(cb)))
        task = FIELD(cb, 16);
    else if (g_wakeup.type != NULL && OB_TYPE(cb) == g_wakeup.type &&
             (g_wakeup.ml_off < 0 || FIELD(cb, g_wakeup.ml_off) == g_wakeup.ml))
        task = FIELD(cb, g_wakeup.task);
    else
        return NULL;
    if (task == NULL || !is_task_type(OB_TYPE(task)))
        return NULL;
    return FIELD(task, g_probe.name);
}

/* asyncio's default name: 3.13+'s int, or a compact ASCII str "Task-<digits>". */
static int is_default_name(void *name) {
    void *type = OB_TYPE(name);
    if (type == g_probe.int_type)
        return 1;
    if (type != g_probe.str_type || g_probe.ascii_data < 0)
        return 0;
    /* PyASCIIObject: length at 16, state at 32 (kind 1, compact, ascii: 0x64 in 0x7c) */
    if ((*(uint32_t *)((char *)name + 32) & 0x7c) != 0x64)
        return 0;
    int64_t len = *(int64_t *)((char *)name + 16);
    const char *c = (const char *)name + g_probe.ascii_data;
    if (len < 6 || len > 25 || memcmp(c, "Task-", 5) != 0)
        return 0;
    for (int64_t k = 5; k < len; k++)
        if (c[k] < '0' || c[k] > '9')
            return 0;
    return 1;
}

static uint64_t set_hash(uint32_t tid, void *coro, uint32_t task, void *name) {
    return hs_mix64(hs_mix64((uintptr_t)coro ^ ((uint64_t)tid << 32)) ^ task ^
                    ((uint64_t)(uintptr_t)name << 7)) | 1;
}

/* The label set's id, or UINT32_MAX when it is new and `add` is 0 or the table is full. */
static uint32_t find_or_add(uint32_t tid, void *coro, uint32_t task, void *name, int add) {
    uint64_t h = set_hash(tid, coro, task, name);
    uint32_t i = (uint32_t)h & (SINDEX_CAP - 1);
    for (uint32_t v; (v = g_sindex[i]) != 0; i = (i + 1) & (SINDEX_CAP - 1)) {
        hs_labelset *s = &g_sets[v - 1];
        if (s->hash == h && s->code == coro && s->tid == tid && s->task == task &&
            s->name == name)
            return v - 1;
    }
    if (!add || g_nsets >= HS_MAX_LABELS)
        return UINT32_MAX;
    uint32_t id = g_nsets++;
    hs_labelset *s = &g_sets[id];
    s->hash = h;
    s->code = coro;
    s->tid = tid;
    s->task = task;
    s->name = name;
    if (coro != NULL)
        p_incref(coro);
    if (name != NULL) {
        p_incref(name);
        g_named++;
    }
    g_sindex[i] = id + 1;
    return id;
}

uint32_t hs_labels_of_sample(void *const *codes, int n) {
    if (!g_on)
        return 0;
    void *coro = NULL, *name = NULL;
    uint32_t task = 0, tid = current_tid(), id = UINT32_MAX;
    /* leaf first: the innermost task's coroutine is the frame right above an anchor */
    for (int i = 0; g_nanchors && i + 1 < n; i++) {
        if (!is_anchor(codes[i + 1]))
            continue;
        coro = codes[i];
        /* the name as it is now: a task that ends before the next interval keeps it */
        name = task_name_of(hs_cap_frames[i + 1]);
        if (name != NULL && (id = find_or_add(tid, coro, 0, name, 0)) == UINT32_MAX) {
            /* a new named set: default names (one per task) get at most half the room,
             * so that they cannot crowd out the names a service gives its tasks */
            int dflt = is_default_name(name);
            if (g_named < HS_MAX_NAMED &&
                (!dflt || g_named_default < HS_MAX_NAMED / 2)) {
                id = find_or_add(tid, coro, 0, name, 1);
                if (id != UINT32_MAX && dflt)
                    g_named_default++;
            }
        }
        if (name == NULL || id == UINT32_MAX)
            task = task_slot(hs_cap_frames[i], coro);
        break;
    }
    if (id == UINT32_MAX)
        id = find_or_add(tid, coro, task, NULL, 1);
    if (id == UINT32_MAX && task != 0) /* full: keep thread and coro */
        id = find_or_add(tid, coro, 0, NULL, 1);
    return id == UINT32_MAX ? 0 : id;
}

/* ---- lifetime ------------------------------------------------------------------- */

static void release(void) {
    for (uint32_t i = 0; g_sets && i < g_nsets; i++) {
        if (g_sets[i].code != NULL)
            p_decref(g_sets[i].code);
        if (g_sets[i].name != NULL)
            p_decref(g_sets[i].name);
    }
    free(g_sets);
    free(g_sindex);
    free(g_accts);
    free(g_aindex);
    free(g_tasks);
    free(hs_cap_frames);
    free(g_out_sets);
    free(g_out_codes);
    free(g_out_threads);
    g_sets = NULL;
    g_sindex = NULL;
    g_accts = NULL;
    g_aindex = NULL;
    g_tasks = NULL;
    hs_cap_frames = NULL;
    g_out_sets = g_out_codes = g_out_threads = NULL;
    g_out_sets_cap = g_out_codes_cap = g_out_threads_cap = 0;
    g_tasks_cap = 0;
    g_nsets = g_sets_drained = g_naccts = 0;
    g_nanchors = 0;
    memset(&g_probe, 0, sizeof g_probe);
    g_wrapper_type = NULL;
    memset(&g_wakeup, 0, sizeof g_wakeup);
    g_named = g_named_default = 0;
    g_acct_cur = NULL;
    hs_thr_cur = NULL;
    g_thr_base = 0;
}

int hs_labels_start(int max_frames) {
    *(void **)(&p_incref) = hs_sym("Py_IncRef");
    *(void **)(&p_decref) = hs_sym("Py_DecRef");
    if (p_incref == NULL || p_decref == NULL)
        return HS_ERR_SYMBOLS;
    g_sets = malloc(HS_MAX_LABELS * sizeof *g_sets);
    g_sindex = calloc(SINDEX_CAP, sizeof *g_sindex);
    g_accts = malloc(HS_MAX_THREADS * sizeof *g_accts);
    g_aindex = calloc(AINDEX_CAP, sizeof *g_aindex);
    hs_cap_frames = calloc((size_t)max_frames, sizeof *hs_cap_frames);
    if (!g_sets || !g_sindex || !g_accts || !g_aindex || !hs_cap_frames) {
        release();
        return HS_ERR_NOMEM;
    }
    memset(&g_sets[0], 0, sizeof g_sets[0]); /* set 0: no labels */
    g_nsets = 1;
    g_accts[0].tid = 0; /* account 0: threads beyond the table */
    g_accts[0].bytes = 0;
    g_naccts = 1;
    g_thr_base = 0;
    hs_thr_cur = NULL; /* the first allocation switches */
    g_acct_cur = NULL;
    g_on = 1;
    return HS_OK;
}

void hs_labels_stop(void) {
    g_on = 0;
    release();
}

uint64_t hs_labels_memory(void) {
    if (!g_on)
        return 0;
    return HS_MAX_LABELS * sizeof *g_sets + SINDEX_CAP * sizeof *g_sindex +
           HS_MAX_THREADS * sizeof *g_accts + AINDEX_CAP * sizeof *g_aindex +
           g_tasks_cap * sizeof *g_tasks +
           (uint64_t)(4 * g_out_sets_cap + g_out_codes_cap) * sizeof(uint64_t) +
           (uint64_t)g_out_threads_cap * 2 * sizeof(uint64_t);
}

/* ---- the agent's side ----------------------------------------------------------- */

HS_EXPORT int hs_set_anchors(void *const *codes, int n) {
    if (!g_on)
        return HS_ERR_NOT_RUNNING;
    if (n < 0 || n > HS_MAX_ANCHORS || (n > 0 && codes == NULL))
        return HS_ERR_ARG;
    for (int i = 0; i < n; i++)
        g_anchors[i] = codes[i];
    g_nanchors = n;
    return HS_OK;
}

HS_EXPORT int hs_set_tasks(uint64_t n, const uint64_t *frames, const uint64_t *codes,
                           const uint32_t *slots) {
    if (!g_on)
        return HS_ERR_NOT_RUNNING;
    if (n > (1u << 24) || (n > 0 && (frames == NULL || codes == NULL || slots == NULL)))
        return HS_ERR_ARG;
    uint64_t cap = 0;
    hs_task *t = NULL;
    if (n > 0) {
        cap = 16;
        while (cap < 2 * n)
            cap *= 2;
        t = calloc(cap, sizeof *t);
        if (t == NULL)
            return HS_ERR_NOMEM;
        for (uint64_t k = 0; k < n; k++) {
            if (frames[k] == 0 || slots[k] == 0)
                continue;
            /* keyed as captures record frames: the frame objects the caller holds, or
             * their interpreter frames while the walk reads those (frame_walk.h) */
            uint64_t key = (uintptr_t)hs_walk_frame_key((void *)(uintptr_t)frames[k]);
            uint64_t i = hs_mix64(key) & (cap - 1);
            while (t[i].frame != 0 && t[i].frame != key)
                i = (i + 1) & (cap - 1);
            t[i].frame = key;
            t[i].code = codes[k];
            t[i].slot = slots[k];
        }
    }
    free(g_tasks);
    g_tasks = t;
    g_tasks_cap = cap;
    return HS_OK;
}

HS_EXPORT int hs_set_task_probe(int64_t f_frame, int64_t local0, void *handle_type,
                                int64_t callback, void *task_type, int64_t name,
                                void *str_type, void *int_type, int64_t ascii_data) {
    if (!g_on)
        return HS_ERR_NOT_RUNNING;
#define BAD_OFF(o) ((o) < 0 || (o) > 4096 || ((o) & 7) != 0)
    if ((f_frame != -1 && BAD_OFF(f_frame)) || BAD_OFF(local0) || BAD_OFF(callback) ||
        BAD_OFF(name) || callback < 16 || name < 16 ||
        (handle_type == NULL) != (task_type == NULL) ||
        (ascii_data != -1 && (BAD_OFF(ascii_data) || ascii_data < 40)))
        return HS_ERR_ARG;
#undef BAD_OFF
    g_probe.handle_type = NULL; /* off while it changes */
    g_probe.f_frame = f_frame;
    g_probe.local0 = local0;
    g_probe.callback = callback;
    g_probe.task_type = task_type;
    g_probe.name = name;
    g_probe.str_type = str_type;
    g_probe.int_type = int_type;
    g_probe.ascii_data = ascii_data;
    g_probe.handle_type = handle_type;
    return HS_OK;
}

HS_EXPORT int hs_set_wakeup_probe(void *type, int64_t task, int64_t ml_off, void *ml) {
    if (!g_on)
        return HS_ERR_NOT_RUNNING;
    if (task < 16 || task > 4096 || (task & 7) != 0 ||
        (ml_off != -1 && (ml_off < 16 || ml_off > 4096 || (ml_off & 7) != 0 || ml == NULL)))
        return HS_ERR_ARG;
    g_wakeup.type = NULL; /* off while it changes */
    g_wakeup.task = task;
    g_wakeup.ml_off = ml_off;
    g_wakeup.ml = ml;
    g_wakeup.type = type;
    return HS_OK;
}

static int reserve(uint64_t **buf, uint32_t *cap, uint32_t need, size_t elem) {
    if (need <= *cap)
        return 1;
    uint32_t ncap = *cap ? *cap : 64;
    while (ncap < need)
        ncap *= 2;
    void *p = realloc(*buf, (size_t)ncap * elem);
    if (p == NULL)
        return 0;
    *buf = p;
    *cap = ncap;
    return 1;
}

int hs_labels_read(hs_report *out, int drain, uint64_t total) {
    if (!g_on)
        return HS_OK;
    out->labels = g_nsets;
    /* the caller's thread takes over: what ran before it is credited where it belongs */
    hs_thr_switch(total);
    if (!reserve(&g_out_threads, &g_out_threads_cap, g_naccts, 2 * sizeof(uint64_t)))
        return HS_ERR_NOMEM;
    for (uint32_t k = 0; k < g_naccts; k++) {
        g_out_threads[2 * k] = g_accts[k].tid;
        g_out_threads[2 * k + 1] = g_accts[k].bytes;
    }
    out->n_threads = g_naccts;
    out->threads = (uint64_t)(uintptr_t)g_out_threads;
    if (!drain)
        return HS_OK;
    uint32_t first = g_sets_drained, nnew = g_nsets - first;
    if (!reserve(&g_out_sets, &g_out_sets_cap, nnew, 4 * sizeof(uint64_t)) ||
        !reserve(&g_out_codes, &g_out_codes_cap, nnew, sizeof(uint64_t)))
        return HS_ERR_NOMEM;
    for (uint32_t k = 0; k < nnew; k++) {
        hs_labelset *s = &g_sets[first + k];
        g_out_sets[4 * k] = first + k;
        g_out_sets[4 * k + 1] = s->tid;
        g_out_sets[4 * k + 2] = s->task;
        g_out_sets[4 * k + 3] = (uint64_t)(uintptr_t)s->name;
        g_out_codes[k] = (uint64_t)(uintptr_t)s->code;
    }
    out->n_new_labels = nnew;
    out->new_labels = (uint64_t)(uintptr_t)g_out_sets;
    out->new_label_codes = (uint64_t)(uintptr_t)g_out_codes;
    g_sets_drained = g_nsets;
    return HS_OK;
}
