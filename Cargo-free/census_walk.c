/*
 * census_walk.c: the heap census's walk, in C (bound by agent/heapspy_agent/census_walk.py;
 * the roots, their order and the results stay in agent/heapspy_agent/census.py).
 *
 * Why C: the same walk in Python costs ~20 us an object (205 s for 10 M); here it is a few
 * hundred ns. Like heapspy_shim.c it never includes Python.h: the C-API functions it calls
 * are found with dlsym() in the running process, and the only layouts it reads are an
 * object's first two words (reference count, type), a variable-size object's ob_size and
 * the PyTypeObject fields up to tp_is_gc, identical in 3.8-3.14 (checked below); on 3.14
 * only, the gc's links before each object and its lists' heads, checked before use (see
 * cw_gc_begin).
 *
 * What it does, per object reached from a root: test-and-set its bit in the visited set
 * (a two-level bitmap: one bit per 16 bytes of address space, a 512-byte leaf per 64 KiB
 * region touched, leaves found through an open-addressing table), size it the way
 * sys.getsizeof does (the type's C __sizeof__, resolved once per type by the agent, which
 * never picks a Python one; or object.__sizeof__'s formula, basic size + item size x
 * ob_size, computed here; plus the gc header the agent says getsizeof adds) and count it
 * under its retention path (a node: parent path + type name, interned in a table). An
 * object with referents is pushed on a stack, holding a reference, and opened later:
 * exact lists and tuples by index, exact dicts with PyDict_Next (keys too: a dict's
 * tp_traverse leaves out the keys of an all-str dict), anything else through its
 * tp_traverse, called directly.
 *
 * Slices: cw_run works until a deadline, then returns with the stack as it is; the agent
 * releases the GIL (it sleeps) and calls again. Everything on the stack is held by a
 * reference, so nothing the walk will open can be freed meanwhile; a container is resumed
 * at its index (PyDict_Next's position, a list index: if it changed meanwhile the census
 * is an estimate, never a crash), other objects by skipping the referents already seen.
 * Objects the target dropped while the walk held them (their count is 1: ours) are not
 * released by the walk, whose thread must run none of the target's code (a finalizer):
 * they are handed to the main thread with Py_AddPendingCall, where the target would have
 * freed them itself.
 *
 * No code of the target runs: tp_traverse and the C __sizeof__ of builtins and extension
 * types are C; the agent's own callbacks (type names, sizers, "is this class the agent's")
 * run only between traversals, never inside one, since they may allocate and collect.
 * Every exported function is called with the GIL held (ctypes.PyDLL).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hs_common.h"

#define CW_EXPORT __attribute__((visibility("default")))
#define CW_ABI 3 /* 2: cw_gc_begin/cw_gc_step; 3: cw_targets, cw_target_paths (retainers) */

/* ---- what we need from CPython, declared by hand ---------------------------------- */

typedef struct cw_type cw_type;
typedef struct {
    intptr_t refcnt; /* 3.12+: the low 32 bits are the count (immortal: huge) */
    cw_type *type;
} cw_object;
typedef struct {
    cw_object base;
    intptr_t size;
} cw_varobject;
typedef int (*cw_visitproc)(cw_object *, void *);
typedef int (*cw_traverseproc)(cw_object *, cw_visitproc, void *);
typedef int (*cw_inquiry)(cw_object *);

/* PyTypeObject up to tp_is_gc: the same fields at the same offsets in 3.8-3.14 (3.8's
 * tp_print slot became tp_vectorcall_offset, same size). */
struct cw_type {
    cw_varobject base;
    const char *tp_name;
    intptr_t tp_basicsize, tp_itemsize;
    void *tp_slots[15]; /* tp_dealloc .. tp_as_buffer */
    unsigned long tp_flags;
    const char *tp_doc;
    cw_traverseproc tp_traverse;
    void *tp_clear, *tp_richcompare;
    intptr_t tp_weaklistoffset;
    void *tp_iter, *tp_iternext, *tp_methods, *tp_members, *tp_getset;
    cw_type *tp_base;
    cw_object *tp_dict;
    void *tp_descr_get, *tp_descr_set;
    intptr_t tp_dictoffset;
    void *tp_init, *tp_alloc, *tp_new, *tp_free;
    cw_inquiry tp_is_gc;
};
_Static_assert(offsetof(struct cw_type, tp_flags) == 168, "PyTypeObject.tp_flags");
_Static_assert(offsetof(struct cw_type, tp_traverse) == 184, "PyTypeObject.tp_traverse");
_Static_assert(offsetof(struct cw_type, tp_is_gc) == 328, "PyTypeObject.tp_is_gc");

#define TPFLAGS_HAVE_GC (1UL << 14)
#define TPFLAGS_DICT_SUBCLASS (1UL << 29)
#define TPFLAGS_TYPE_SUBCLASS (1UL << 31)

static struct {
    int resolved, usable;
    void (*incref)(cw_object *);
    void (*decref)(cw_object *);
    intptr_t (*list_size)(cw_object *);
    cw_object *(*list_get)(cw_object *, intptr_t);
    intptr_t (*tuple_size)(cw_object *);
    cw_object *(*tuple_get)(cw_object *, intptr_t);
    int (*dict_next)(cw_object *, intptr_t *, cw_object **, cw_object **);
    int (*list_append)(cw_object *, cw_object *);
    cw_object *(*vectorcall)(cw_object *, cw_object *const *, size_t, cw_object *); /* 3.9+ */
    cw_object *(*call_objargs)(cw_object *, ...);
    intptr_t (*long_as_ssize)(cw_object *);
    long long (*long_as_longlong)(cw_object *);
    void (*err_clear)(void);
    void *(*err_occurred)(void);
    int (*add_pending)(int (*)(void *), void *);
    int (*is_true)(cw_object *);
    /* 3.12+: every object the gc tracks, without building a list */
    void (*gc_visit_objects)(int (*)(cw_object *, void *), void *);
    cw_object *(*list_new)(intptr_t);
    void *(*interp_get)(void);  /* PyInterpreterState_Get */
    void *(*interp_main)(void); /* PyInterpreterState_Main */
    const uint8_t *runtime;     /* _PyRuntime: _Py_DebugOffsets first (3.14) */
    cw_object *(*get_iter)(cw_object *);
    cw_object *(*iter_next)(cw_object *);
    cw_type *list_type, *tuple_type, *dict_type, *set_type, *frozenset_type;
    cw_object *none;
} py;

#define RESOLVE(field, name) (*(void **)(&py.field) = hs_sym(name))

static int resolve(void) {
    if (py.resolved)
        return py.usable;
    py.resolved = 1;
    /* Not usable: free-threaded builds (counts are not one word) and Py_TRACE_REFS builds
     * (two more words at the head of every object). The pure-Python walk serves them. */
    if (hs_sym("_Py_DecRefShared") != NULL || hs_sym("_Py_MergeZeroLocalRefcount") != NULL ||
        hs_sym("_Py_PrintReferences") != NULL)
        return 0;
    int ok = 1;
    ok &= RESOLVE(incref, "Py_IncRef") != NULL;
    ok &= RESOLVE(decref, "Py_DecRef") != NULL;
    ok &= RESOLVE(list_size, "PyList_Size") != NULL;
    ok &= RESOLVE(list_get, "PyList_GetItem") != NULL;
    ok &= RESOLVE(tuple_size, "PyTuple_Size") != NULL;
    ok &= RESOLVE(tuple_get, "PyTuple_GetItem") != NULL;
    ok &= RESOLVE(dict_next, "PyDict_Next") != NULL;
    ok &= RESOLVE(list_append, "PyList_Append") != NULL;
    RESOLVE(vectorcall, "PyObject_Vectorcall");
    ok &= RESOLVE(call_objargs, "PyObject_CallFunctionObjArgs") != NULL;
    ok &= RESOLVE(long_as_ssize, "PyLong_AsSsize_t") != NULL;
    ok &= RESOLVE(long_as_longlong, "PyLong_AsLongLong") != NULL;
    ok &= RESOLVE(err_clear, "PyErr_Clear") != NULL;
    ok &= RESOLVE(err_occurred, "PyErr_Occurred") != NULL;
    ok &= RESOLVE(add_pending, "Py_AddPendingCall") != NULL;
    ok &= RESOLVE(is_true, "PyObject_IsTrue") != NULL;
    RESOLVE(gc_visit_objects, "PyUnstable_GC_VisitObjects");
    RESOLVE(list_new, "PyList_New");
    RESOLVE(interp_get, "PyInterpreterState_Get");
    RESOLVE(interp_main, "PyInterpreterState_Main");
    RESOLVE(runtime, "_PyRuntime");
    ok &= RESOLVE(list_type, "PyList_Type") != NULL;
    ok &= RESOLVE(tuple_type, "PyTuple_Type") != NULL;
    ok &= RESOLVE(dict_type, "PyDict_Type") != NULL;
    ok &= RESOLVE(set_type, "PySet_Type") != NULL;
    ok &= RESOLVE(frozenset_type, "PyFrozenSet_Type") != NULL;
    ok &= RESOLVE(get_iter, "PyObject_GetIter") != NULL;
    ok &= RESOLVE(iter_next, "PyIter_Next") != NULL;
    ok &= RESOLVE(none, "_Py_NoneStruct") != NULL;
    py.usable = ok;
    return ok;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}


/* ---- state ------------------------------------------------------------------------ */

#define REGION_SHIFT 16                             /* 64 KiB of address space per leaf */
#define LEAF_BYTES ((1u << REGION_SHIFT) >> 7)      /* 1 bit per 16 bytes: 512 bytes */
#define LEAVES_PER_SLAB 32 /* 16 KiB */
#define CHUNK 4096        /* referents opened per turn of a big container before its
                             children run: bounds the stack */
#define TICK 256          /* objects between two looks at the clock */
#define MODE_COUNT 0
#define MODE_EXCLUDE 1    /* the agent's own objects: marked, not counted */

/* Type flags the walk keeps. */
#define TI_MODULE 1u
#define TI_TRAVERSE 2u   /* has referents: HAVE_GC and a tp_traverse */
#define TI_IS_GC 4u      /* tp_is_gc decides per object (types) */
#define TI_CLASS 8u      /* instances are classes */
#define TI_LIST 16u      /* exactly list */
#define TI_TUPLE 32u     /* exactly tuple */
#define TI_DICT 64u      /* a dict or a subclass */
#define TI_DICT_EXACT 128u
#define TI_SET_EXACT 256u /* exactly set or frozenset */

typedef struct {
    cw_type *tp; /* a reference is held: the address cannot be reused for another type */
    cw_object *method; /* C __sizeof__ (held), or NULL: object.__sizeof__'s formula */
    int64_t extra;     /* what getsizeof adds: gc header, pre-header */
    int32_t name;
    uint32_t flags;
} cw_tinfo;

typedef struct {
    cw_object *obj;  /* held */
    cw_object *iter; /* an exact set's iterator (held), or NULL */
    int64_t pos;     /* next index / dict position / referents already seen */
    int32_t path;    /* the path its referents are counted under (-1: excluded) */
    uint8_t done;
    uint8_t phase;   /* a dict subclass: 0 its items (PyDict_Next), 1 the rest */
} cw_entry;

typedef struct {
    cw_object *obj; /* held */
    int32_t path;
    uint8_t mode;
} cw_later;

typedef struct {
    /* visited set */
    uint64_t *region_keys; /* region + 1; 0: empty */
    uint8_t **region_leaves;
    size_t region_cap, regions;
    uint8_t **slabs;
    size_t nslabs, slab_used;
    uint64_t last_region;
    uint8_t *last_leaf;
    /* boundaries: modules, their dicts, classes that are roots of their own */
    uint64_t *bound;
    size_t bound_cap, nbound;
    /* types */
    cw_tinfo *types;
    size_t types_cap, ntypes;
    /* retention paths */
    int32_t *node_parent, *node_name;
    uint8_t *node_depth;
    uint64_t *node_count, *node_bytes;
    size_t nodes, nodes_cap, max_nodes;
    int32_t *node_index;
    size_t index_cap;
    uint64_t folded;
    /* walk */
    cw_entry *stack;
    size_t sp, stack_cap, stack_max;
    cw_later *later; /* reached, not yet sized: the agent must be asked about them */
    size_t nlater, later_pos, later_cap;
    cw_object **orphans;
    size_t norphans, orphans_cap;
    uint64_t orphans_sent; /* objects handed to the main thread to free, in all */
    cw_object *classify, *agent_class; /* the agent's callbacks, held */
    int max_depth;
    int32_t other_name; /* paths beyond max_nodes fold into (other, type) */
    int32_t unknown_name;
    uint64_t objects, bytes;
    uint64_t deadline, tick;
    int over;
    int nomem;
    size_t max_bytes;
    cw_object *gc_out; /* cw_gc_unmarked's list */
    /* the sliced pass over the gc's lists (cw_gc_begin/cw_gc_step, 3.14) */
    uintptr_t gc_heads[4];
    const int *gc_collecting;
    cw_object *gc_cursor; /* the next object to look at (held), or NULL: a list's start */
    int gc_list;          /* the list under way, 0-3; 4: done */
    uint64_t gc_collections;
    int gc_restarts;
    uint64_t *gc_seen; /* addresses appended to gc_out: appended once across restarts */
    size_t gc_seen_cap, gc_nseen;
    /* a tp_traverse under way */
    int32_t cur_path;
    uint8_t cur_mode;
    int64_t cur_skip, cur_seen;
    size_t cur_taken;
    /* retainers: objects whose path is wanted (cw_targets); open addressing, 0 empty */
    uint64_t *target_addr;
    int32_t *target_path; /* the path it was counted under; -2: not reached */
    size_t targets_cap, ntargets;
} cw_census;

static size_t memory(const cw_census *c) {
    return c->nslabs * (size_t)LEAVES_PER_SLAB * LEAF_BYTES +
           c->region_cap * (sizeof(uint64_t) + sizeof(uint8_t *)) + c->bound_cap * 8 +
           c->types_cap * sizeof(cw_tinfo) +
           c->nodes_cap * (4 + 4 + 1 + 8 + 8) + c->index_cap * 4 +
           c->stack_cap * sizeof(cw_entry) + c->later_cap * sizeof(cw_later) +
           c->orphans_cap * sizeof(void *) + c->gc_seen_cap * 8 + c->targets_cap * (8 + 4);
}


/* ---- visited set -------------------------------------------------------------------- */

static int regions_grow(cw_census *c) {
    size_t ncap = c->region_cap ? c->region_cap * 2 : 1024;
    uint64_t *keys = calloc(ncap, sizeof(uint64_t));
    uint8_t **leaves = calloc(ncap, sizeof(uint8_t *));
    if (keys == NULL || leaves == NULL) {
        free(keys);
        free(leaves);
        return 0;
    }
    for (size_t i = 0; i < c->region_cap; i++) {
        if (c->region_keys[i] == 0)
            continue;
        size_t j = hs_mix64(c->region_keys[i]) & (ncap - 1);
        while (keys[j] != 0)
            j = (j + 1) & (ncap - 1);
        keys[j] = c->region_keys[i];
        leaves[j] = c->region_leaves[i];
    }
    free(c->region_keys);
    free(c->region_leaves);
    c->region_keys = keys;
    c->region_leaves = leaves;
    c->region_cap = ncap;
    return 1;
}

static uint8_t *leaf_new(cw_census *c) {
    if (c->nslabs == 0 || c->slab_used == LEAVES_PER_SLAB) {
        uint8_t **slabs = realloc(c->slabs, (c->nslabs + 1) * sizeof(void *));
        if (slabs == NULL)
            return NULL;
        c->slabs = slabs;
        uint8_t *slab = calloc(LEAVES_PER_SLAB, LEAF_BYTES);
        if (slab == NULL)
            return NULL;
        c->slabs[c->nslabs++] = slab;
        c->slab_used = 0;
    }
    return c->slabs[c->nslabs - 1] + (size_t)LEAF_BYTES * c->slab_used++;
}

/* The leaf of `region`, made when `make`; NULL when absent (or out of memory). */
static uint8_t *leaf_of(cw_census *c, uint64_t region, int make) {
    if (region == c->last_region && c->last_leaf != NULL)
        return c->last_leaf;
    uint64_t key = region + 1;
    if (c->region_cap) {
        size_t j = hs_mix64(key) & (c->region_cap - 1);
        while (c->region_keys[j] != 0) {
            if (c->region_keys[j] == key) {
                c->last_region = region;
                return c->last_leaf = c->region_leaves[j];
            }
            j = (j + 1) & (c->region_cap - 1);
        }
    }
    if (!make)
        return NULL;
    if (c->max_bytes && memory(c) + LEAF_BYTES * LEAVES_PER_SLAB > c->max_bytes) {
        c->nomem = 1;
        return NULL;
    }
    if ((c->regions + 1) * 2 > c->region_cap && !regions_grow(c)) {
        c->nomem = 1;
        return NULL;
    }
    uint8_t *leaf = leaf_new(c);
    if (leaf == NULL) {
        c->nomem = 1;
        return NULL;
    }
    size_t j = hs_mix64(key) & (c->region_cap - 1);
    while (c->region_keys[j] != 0)
        j = (j + 1) & (c->region_cap - 1);
    c->region_keys[j] = key;
    c->region_leaves[j] = leaf;
    c->regions++;
    c->last_region = region;
    return c->last_leaf = leaf;
}

/* 1: newly marked; 0: marked before (or no memory left for the mark: never walked twice) */
static inline int mark(cw_census *c, uint64_t addr) {
    uint8_t *leaf = leaf_of(c, addr >> REGION_SHIFT, 1);
    if (leaf == NULL)
        return 0;
    uint64_t bit = (addr & ((1u << REGION_SHIFT) - 1)) >> 4;
    uint8_t m = (uint8_t)(1u << (bit & 7));
    if (leaf[bit >> 3] & m)
        return 0;
    leaf[bit >> 3] |= m;
    return 1;
}

static inline int marked(cw_census *c, uint64_t addr) {
    uint8_t *leaf = leaf_of(c, addr >> REGION_SHIFT, 0);
    if (leaf == NULL)
        return 0;
    uint64_t bit = (addr & ((1u << REGION_SHIFT) - 1)) >> 4;
    return (leaf[bit >> 3] >> (bit & 7)) & 1;
}

/* ---- boundaries ------------------------------------------------------------------- */

static int bound_has(const cw_census *c, uint64_t addr) {
    if (c->nbound == 0)
        return 0;
    size_t j = hs_mix64(addr) & (c->bound_cap - 1);
    while (c->bound[j] != 0) {
        if (c->bound[j] == addr)
            return 1;
        j = (j + 1) & (c->bound_cap - 1);
    }
    return 0;
}

static int bound_add(cw_census *c, uint64_t addr) {
    if (addr == 0 || bound_has(c, addr))
        return 1;
    if ((c->nbound + 1) * 2 > c->bound_cap) {
        size_t ncap = c->bound_cap ? c->bound_cap * 2 : 1024;
        uint64_t *b = calloc(ncap, 8);
        if (b == NULL)
            return 0;
        for (size_t i = 0; i < c->bound_cap; i++) {
            if (c->bound[i] == 0)
                continue;
            size_t j = hs_mix64(c->bound[i]) & (ncap - 1);
            while (b[j] != 0)
                j = (j + 1) & (ncap - 1);
            b[j] = c->bound[i];
        }
        free(c->bound);
        c->bound = b;
        c->bound_cap = ncap;
    }
    size_t j = hs_mix64(addr) & (c->bound_cap - 1);
    while (c->bound[j] != 0)
        j = (j + 1) & (c->bound_cap - 1);
    c->bound[j] = addr;
    c->nbound++;
    return 1;
}

/* ---- retention paths -------------------------------------------------------------- */

static int index_put(cw_census *c, int32_t node) {
    uint64_t key = ((uint64_t)(uint32_t)c->node_parent[node] << 32) | (uint32_t)c->node_name[node];
    size_t j = hs_mix64(key) & (c->index_cap - 1);
    while (c->node_index[j] >= 0)
        j = (j + 1) & (c->index_cap - 1);
    c->node_index[j] = node;
    return 1;
}

static int32_t node_find(cw_census *c, int32_t parent, int32_t name, int make) {
    uint64_t key = ((uint64_t)(uint32_t)parent << 32) | (uint32_t)name;
    if (c->index_cap) {
        size_t j = hs_mix64(key) & (c->index_cap - 1);
        int32_t n;
        while ((n = c->node_index[j]) >= 0) {
            if (c->node_parent[n] == parent && c->node_name[n] == name)
                return n;
            j = (j + 1) & (c->index_cap - 1);
        }
    }
    if (!make)
        return -1;
    if ((c->nodes + 1) * 4 > c->index_cap * 3) { /* at most three quarters full */
        size_t ncap = c->index_cap ? c->index_cap * 2 : 4096;
        int32_t *idx = malloc(ncap * sizeof(int32_t));
        if (idx == NULL)
            return -1;
        memset(idx, 0xff, ncap * sizeof(int32_t));
        free(c->node_index);
        c->node_index = idx;
        c->index_cap = ncap;
        for (size_t i = 0; i < c->nodes; i++)
            index_put(c, (int32_t)i);
    }
    if (c->nodes == c->nodes_cap) {
        size_t ncap = c->nodes_cap ? c->nodes_cap + c->nodes_cap / 2 : 1024; /* x1.5 */
        int32_t *p = realloc(c->node_parent, ncap * 4);
        if (p != NULL)
            c->node_parent = p;
        int32_t *nm = realloc(c->node_name, ncap * 4);
        if (nm != NULL)
            c->node_name = nm;
        uint8_t *d = realloc(c->node_depth, ncap);
        if (d != NULL)
            c->node_depth = d;
        uint64_t *cnt = realloc(c->node_count, ncap * 8);
        if (cnt != NULL)
            c->node_count = cnt;
        uint64_t *b = realloc(c->node_bytes, ncap * 8);
        if (b != NULL)
            c->node_bytes = b;
        if (p == NULL || nm == NULL || d == NULL || cnt == NULL || b == NULL)
            return -1;
        c->nodes_cap = ncap;
    }
    int32_t n = (int32_t)c->nodes++;
    c->node_parent[n] = parent;
    c->node_name[n] = name;
    c->node_depth[n] = parent < 0 ? 1 : (uint8_t)(c->node_depth[parent] + 1);
    c->node_count[n] = 0;
    c->node_bytes[n] = 0;
    index_put(c, n);
    return n;
}

/* The leaf (path + type name) an object of type name `name` is counted under. */
static int32_t leaf_node(cw_census *c, int32_t path, int32_t name) {
    int32_t n = node_find(c, path, name, c->nodes < c->max_nodes);
    if (n >= 0)
        return n;
    c->folded++;
    int32_t other = node_find(c, -1, c->other_name, 1);
    return other < 0 ? -1 : node_find(c, other, name, 1);
}

/* ---- references ------------------------------------------------------------------ */

static inline uint32_t refcount(const cw_object *o) { return (uint32_t)o->refcnt; }

/* Drop the walk's reference, unless it is the last one: freeing the object could run
 * the target's code (a finalizer, a weakref callback) in this thread. */
static void release(cw_census *c, cw_object *o) {
    if (refcount(o) == 1) {
        if (hs_reserve((void **)&c->orphans, &c->orphans_cap, c->norphans + 1, sizeof(void *))) {
            c->orphans[c->norphans++] = o;
            return;
        }
        return; /* no memory to remember it: leaked rather than freed here */
    }
    py.decref(o);
}

typedef struct {
    size_t n;
    cw_object *objs[];
} cw_orphans;

/* Pending calls of ours not run yet: the library must stay mapped while any is queued. */
static int g_pending;

static int free_orphans(void *arg) {
    cw_orphans *o = arg;
    g_pending--;
    for (size_t i = 0; i < o->n; i++)
        py.decref(o->objs[i]);
    free(o);
    return 0;
}

/* Hand the orphans to the main thread (Py_AddPendingCall): it frees them where the
 * target would have. If the queue is full they stay for the next call. */
static void send_orphans(cw_census *c) {
    if (c->norphans == 0)
        return;
    cw_orphans *o = malloc(sizeof(cw_orphans) + c->norphans * sizeof(cw_object *));
    if (o == NULL)
        return;
    o->n = c->norphans;
    memcpy(o->objs, c->orphans, c->norphans * sizeof(cw_object *));
    g_pending++;
    if (py.add_pending(free_orphans, o) != 0) {
        g_pending--;
        free(o);
        return;
    }
    c->orphans_sent += c->norphans;
    c->norphans = 0;
}

/* ---- types ------------------------------------------------------------------------ */

static cw_tinfo *type_find(cw_census *c, cw_type *tp) {
    if (c->ntypes == 0)
        return NULL;
    size_t j = hs_mix64((uint64_t)(uintptr_t)tp) & (c->types_cap - 1);
    while (c->types[j].tp != NULL) {
        if (c->types[j].tp == tp)
            return &c->types[j];
        j = (j + 1) & (c->types_cap - 1);
    }
    return NULL;
}

static cw_tinfo *type_insert(cw_census *c, const cw_tinfo *info) {
    if ((c->ntypes + 1) * 2 > c->types_cap) {
        size_t ncap = c->types_cap ? c->types_cap * 2 : 256;
        cw_tinfo *t = calloc(ncap, sizeof(cw_tinfo));
        if (t == NULL)
            return NULL;
        for (size_t i = 0; i < c->types_cap; i++) {
            if (c->types[i].tp == NULL)
                continue;
            size_t j = hs_mix64((uint64_t)(uintptr_t)c->types[i].tp) & (ncap - 1);
            while (t[j].tp != NULL)
                j = (j + 1) & (ncap - 1);
            t[j] = c->types[i];
        }
        free(c->types);
        c->types = t;
        c->types_cap = ncap;
    }
    size_t j = hs_mix64((uint64_t)(uintptr_t)info->tp) & (c->types_cap - 1);
    while (c->types[j].tp != NULL)
        j = (j + 1) & (c->types_cap - 1);
    c->types[j] = *info;
    c->ntypes++;
    return &c->types[j];
}

static cw_object *call1(cw_object *func, cw_object *arg) {
    if (py.vectorcall != NULL) {
        cw_object *args[1] = {arg};
        return py.vectorcall(func, args, 1, NULL);
    }
    return py.call_objargs(func, arg, NULL);
}

/* Ask the agent about a type met for the first time: classify(type) returns
 * (name id, C __sizeof__ or None, bytes getsizeof adds, is a module type). */
static cw_tinfo *type_learn(cw_census *c, cw_type *tp) {
    cw_tinfo info = {.tp = tp, .method = NULL, .extra = 0, .name = c->unknown_name};
    cw_object *r = call1(c->classify, (cw_object *)tp);
    if (r != NULL && py.tuple_size(r) == 4) {
        info.name = (int32_t)py.long_as_longlong(py.tuple_get(r, 0));
        cw_object *m = py.tuple_get(r, 1);
        if (m != NULL && m != py.none) {
            py.incref(m);
            info.method = m;
        }
        info.extra = (int64_t)py.long_as_longlong(py.tuple_get(r, 2));
        cw_object *mod = py.tuple_get(r, 3);
        if (mod != NULL && py.is_true(mod) == 1)
            info.flags |= TI_MODULE;
    }
    if (py.err_occurred())
        py.err_clear();
    if (r != NULL)
        py.decref(r);
    unsigned long f = tp->tp_flags;
    if ((f & TPFLAGS_HAVE_GC) && tp->tp_traverse != NULL)
        info.flags |= TI_TRAVERSE;
    if (tp->tp_is_gc != NULL)
        info.flags |= TI_IS_GC;
    if (f & TPFLAGS_TYPE_SUBCLASS)
        info.flags |= TI_CLASS;
    if (f & TPFLAGS_DICT_SUBCLASS)
        info.flags |= TI_DICT;
    if (tp == py.list_type)
        info.flags |= TI_LIST;
    if (tp == py.tuple_type)
        info.flags |= TI_TUPLE;
    if (tp == py.dict_type)
        info.flags |= TI_DICT_EXACT;
    if (tp == py.set_type || tp == py.frozenset_type)
        info.flags |= TI_SET_EXACT;
    py.incref((cw_object *)tp);
    cw_tinfo *t = type_insert(c, &info);
    if (t == NULL) {
        c->nomem = 1;
        py.decref((cw_object *)tp);
        if (info.method)
            py.decref(info.method);
    }
    return t;
}

static int64_t size_of(const cw_tinfo *t, cw_object *o) {
    cw_type *tp = o->type;
    int64_t size = tp->tp_basicsize;
    if (tp->tp_itemsize > 0)
        size += ((cw_varobject *)o)->size * tp->tp_itemsize;
    if (t->method != NULL) {
        cw_object *r = call1(t->method, o);
        if (r != NULL) {
            intptr_t s = py.long_as_ssize(r);
            py.decref(r);
            if (s == -1 && py.err_occurred())
                py.err_clear();
            else
                size = s;
        } else {
            py.err_clear();
        }
    }
    return size + t->extra;
}

/* ---- the walk --------------------------------------------------------------------- */

static int push(cw_census *c, cw_object *o, int32_t path) {
    if (!hs_reserve((void **)&c->stack, &c->stack_cap, c->sp + 1, sizeof(cw_entry))) {
        c->nomem = 1;
        return 0;
    }
    py.incref(o);
    c->stack[c->sp++] = (cw_entry){.obj = o, .iter = NULL, .pos = 0, .path = path};
    if (c->sp > c->stack_max)
        c->stack_max = c->sp;
    return 1;
}

static int later(cw_census *c, cw_object *o, int32_t path, uint8_t mode) {
    if (!hs_reserve((void **)&c->later, &c->later_cap, c->nlater + 1, sizeof(cw_later))) {
        c->nomem = 1;
        return 0;
    }
    py.incref(o);
    c->later[c->nlater++] = (cw_later){.obj = o, .path = path, .mode = mode};
    return 1;
}

static inline int has_referents(const cw_tinfo *t, cw_object *o) {
    if (!(t->flags & TI_TRAVERSE))
        return 0;
    return !(t->flags & TI_IS_GC) || o->type->tp_is_gc(o);
}

static size_t target_slot(const cw_census *c, uint64_t addr) {
    size_t mask = c->targets_cap - 1, i = (size_t)hs_mix64(addr) & mask;
    while (c->target_addr[i] != 0 && c->target_addr[i] != addr)
        i = (i + 1) & mask;
    return i;
}

/* A target reached: the path of the containers that hold it (its root first). */
static inline void target_hit(cw_census *c, uint64_t addr, int32_t path) {
    size_t i = target_slot(c, addr);
    if (c->target_addr[i] == addr && c->target_path[i] == -2)
        c->target_path[i] = path;
}

/* Count `o` (marked already, type known) under `path` and push it if it has referents. */
static void take(cw_census *c, cw_object *o, const cw_tinfo *t, int32_t path) {
    if (c->ntargets)
        target_hit(c, (uint64_t)(uintptr_t)o, path);
    int64_t size = size_of(t, o);
    int32_t leaf = leaf_node(c, path, t->name);
    if (leaf >= 0) {
        c->node_count[leaf]++;
        c->node_bytes[leaf] += (uint64_t)size;
    }
    c->objects++;
    c->bytes += (uint64_t)size;
    if (t->flags & TI_MODULE)
        return; /* a module outside sys.modules: its globals are not ours */
    if (has_referents(t, o)) {
        int32_t child = (leaf >= 0 && c->node_depth[path] <= c->max_depth) ? leaf : path;
        push(c, o, child);
    }
}

/* One referent reached: skipped (0), or taken now or kept for after the traversal (1). */
static inline int reach(cw_census *c, cw_object *o, int32_t path, uint8_t mode, int inside) {
    if (o == NULL)
        return 0;
    uint64_t addr = (uint64_t)(uintptr_t)o;
    if (c->nbound && bound_has(c, addr))
        return 0;
    if (!mark(c, addr))
        return 0;
    cw_tinfo *t = inside ? NULL : type_find(c, o->type);
    if (t == NULL || mode == MODE_EXCLUDE) {
        later(c, o, path, mode);
        return 1;
    }
    take(c, o, t, path);
    return 1;
}

static inline void tick(cw_census *c) {
    if ((++c->tick & (TICK - 1)) == 0 && now_ns() >= c->deadline)
        c->over = 1;
}

/* After a traversal: the referents kept for later, with the agent asked what it must be
 * asked (new types; whether a class is the agent's). Resumable: stops at the deadline. */
static void run_later(cw_census *c) {
    while (c->later_pos < c->nlater) {
        cw_later l = c->later[c->later_pos++];
        cw_tinfo *t = type_find(c, l.obj->type);
        if (t == NULL)
            t = type_learn(c, l.obj->type);
        if (t != NULL) {
            if (l.mode == MODE_EXCLUDE) {
                int enter = !(t->flags & TI_MODULE) && has_referents(t, l.obj);
                if (enter && (t->flags & TI_CLASS)) {
                    cw_object *r = call1(c->agent_class, l.obj);
                    enter = r != NULL && py.is_true(r) == 1;
                    if (r != NULL)
                        py.decref(r);
                    if (py.err_occurred())
                        py.err_clear();
                }
                if (enter)
                    push(c, l.obj, -1);
            } else {
                take(c, l.obj, t, l.path);
            }
        }
        release(c, l.obj);
        tick(c);
        if (c->over)
            break;
    }
    if (c->later_pos == c->nlater)
        c->nlater = c->later_pos = 0;
}

static int visit(cw_object *o, void *arg) {
    cw_census *c = arg;
    if (c->cur_seen++ < c->cur_skip)
        return 0;
    /* inside a tp_traverse: nothing that could allocate, everything kept for later; a
     * turn ends after CHUNK new objects (what was seen before costs a look, no more) */
    if (reach(c, o, c->cur_path, c->cur_mode, 1) && (++c->cur_taken >= CHUNK || c->nomem))
        return 1;
    return 0;
}

/* Open the top entry for one turn. */
static void open_top(cw_census *c) {
    size_t top = c->sp - 1; /* entries pushed meanwhile go above it */
    cw_entry *e = &c->stack[top];
    cw_object *o = e->obj;
    int32_t path = e->path;
    uint8_t mode = path < 0 ? MODE_EXCLUDE : MODE_COUNT;
    cw_tinfo *t = type_find(c, o->type);
    uint32_t flags = t != NULL ? t->flags : 0;
    int64_t pos = e->pos;
    if (flags & (TI_LIST | TI_TUPLE)) {
        int list = (flags & TI_LIST) != 0;
        intptr_t n = list ? py.list_size(o) : py.tuple_size(o);
        int64_t stop = pos + CHUNK;
        for (; pos < n && pos < stop && !c->over; pos++) {
            reach(c, list ? py.list_get(o, pos) : py.tuple_get(o, pos), path, mode, 0);
            tick(c);
        }
        if (py.err_occurred())
            py.err_clear();
        c->stack[top].pos = pos;
        if (pos >= n)
            c->stack[top].done = 1;
        return;
    }
    if (flags & TI_SET_EXACT) { /* its iterator: set_traverse cannot be resumed cheaply */
        cw_object *it = e->iter;
        if (it == NULL) {
            it = py.get_iter(o);
            if (it == NULL) {
                py.err_clear();
                c->stack[top].done = 1;
                return;
            }
            c->stack[top].iter = it;
        }
        int more = 1;
        for (int i = 0; i < CHUNK && !c->over; i++) {
            cw_object *item = py.iter_next(it);
            if (item == NULL) { /* the end, or the set changed size: an estimate */
                more = 0;
                break;
            }
            reach(c, item, path, mode, 0);
            release(c, item);
            tick(c);
        }
        if (py.err_occurred())
            py.err_clear();
        if (!more)
            c->stack[top].done = 1;
        return;
    }
    if ((flags & TI_DICT) && e->phase == 0) { /* a dict's items: keys too, a chunk a turn */
        intptr_t p = (intptr_t)pos;
        cw_object *k, *v;
        int more = 1;
        for (int i = 0; i < CHUNK / 2 && !c->over; i++) {
            if (!(more = py.dict_next(o, &p, &k, &v)))
                break;
            reach(c, k, path, mode, 0);
            reach(c, v, path, mode, 0);
            tick(c);
        }
        c->stack[top].pos = (int64_t)p;
        if (!more) {
            if (flags & TI_DICT_EXACT) {
                c->stack[top].done = 1;
            } else { /* a subclass: then the rest of it (its __dict__, slots...) */
                c->stack[top].phase = 1;
                c->stack[top].pos = 0;
            }
        }
        return;
    }
    /* anything else: its own tp_traverse, resumed by skipping what it visited before */
    c->cur_path = path;
    c->cur_mode = mode;
    c->cur_skip = pos;
    c->cur_seen = 0;
    c->cur_taken = 0;
    int rc = o->type->tp_traverse(o, visit, c);
    c->stack[top].pos = c->cur_seen;
    c->tick += c->cur_taken;
    if (rc == 0)
        c->stack[top].done = 1;
    if (now_ns() >= c->deadline)
        c->over = 1;
}

/* ---- exported --------------------------------------------------------------------- */

CW_EXPORT int cw_abi(void) { return CW_ABI; }

CW_EXPORT int cw_usable(void) { return resolve(); }

/* Orphans handed to the main thread and not freed yet: no dlclose while this is not 0. */
CW_EXPORT int cw_pending(void) { return g_pending; }

CW_EXPORT void *cw_new(cw_object *classify, cw_object *agent_class, int max_depth,
                       uint64_t max_nodes, uint64_t max_bytes, int32_t other_name,
                       int32_t unknown_name) {
    if (!resolve())
        return NULL;
    cw_census *c = calloc(1, sizeof(cw_census));
    if (c == NULL)
        return NULL;
    py.incref(classify);
    py.incref(agent_class);
    c->classify = classify;
    c->agent_class = agent_class;
    c->max_depth = max_depth;
    c->max_nodes = max_nodes;
    c->max_bytes = max_bytes;
    c->other_name = other_name;
    c->unknown_name = unknown_name;
    c->last_region = UINT64_MAX;
    return c;
}

static void gc_end(cw_census *c);

/* Let go of every reference the walk holds (the results stay readable). */
CW_EXPORT void cw_stop(void *handle) {
    cw_census *c = handle;
    while (c->sp > 0) {
        cw_entry *e = &c->stack[--c->sp];
        if (e->iter != NULL)
            py.decref(e->iter);
        release(c, e->obj);
    }
    for (size_t i = c->later_pos; i < c->nlater; i++)
        release(c, c->later[i].obj);
    c->nlater = c->later_pos = 0;
    gc_end(c);
    send_orphans(c);
}

CW_EXPORT void cw_free(void *handle) {
    cw_census *c = handle;
    if (c == NULL)
        return;
    cw_stop(c);
    for (size_t i = 0; i < c->types_cap; i++) {
        if (c->types[i].tp == NULL)
            continue;
        if (c->types[i].method != NULL)
            release(c, c->types[i].method);
        release(c, (cw_object *)c->types[i].tp);
    }
    release(c, c->classify);
    release(c, c->agent_class);
    send_orphans(c); /* if the queue was full, they are leaked: never freed here */
    for (size_t i = 0; i < c->nslabs; i++)
        free(c->slabs[i]);
    free(c->slabs);
    free(c->region_keys);
    free(c->region_leaves);
    free(c->bound);
    free(c->types);
    free(c->node_parent);
    free(c->node_name);
    free(c->node_depth);
    free(c->node_count);
    free(c->node_bytes);
    free(c->node_index);
    free(c->stack);
    free(c->later);
    free(c->orphans);
    free(c->gc_seen);
    free(c->target_addr);
    free(c->target_path);
    free(c);
}

CW_EXPORT int cw_boundary(void *handle, uint64_t addr) { return bound_add(handle, addr); }

CW_EXPORT int cw_mark(void *handle, uint64_t addr) { return mark(handle, addr); }

CW_EXPORT int cw_marked(void *handle, uint64_t addr) { return marked(handle, addr); }

CW_EXPORT int32_t cw_node(void *handle, int32_t parent, int32_t name) {
    return node_find(handle, parent, name, 1);
}

/* Count objects the agent sized itself (a class, a module, a module's dict). */
CW_EXPORT void cw_add(void *handle, int32_t node, uint64_t objects, uint64_t bytes) {
    cw_census *c = handle;
    if (node >= 0 && (size_t)node < c->nodes) {
        c->node_count[node] += objects;
        c->node_bytes[node] += bytes;
    }
    c->objects += objects;
    c->bytes += bytes;
}

/* A root object: counted under `path` (a root node), then walked by cw_run; path -1: the
 * agent's own object, marked with all it reaches, not counted. */
CW_EXPORT void cw_visit(void *handle, cw_object *o, int32_t path) {
    cw_census *c = handle;
    reach(c, o, path, path < 0 ? MODE_EXCLUDE : MODE_COUNT, 1);
}

/* Walk the referents of `o` (counted already) under `path`. */
CW_EXPORT int cw_push(void *handle, cw_object *o, int32_t path) {
    cw_census *c = handle;
    cw_tinfo *t = type_find(c, o->type);
    if (t == NULL)
        t = type_learn(c, o->type);
    if (t == NULL || !has_referents(t, o))
        return 0;
    return push(c, o, path);
}

/* Walk for at most budget_ns: 1 when nothing is left, 0 when the time is up, -1 when
 * the bookkeeping limit was reached (the census so far stands, marked partial). */
CW_EXPORT int cw_run(void *handle, uint64_t budget_ns) {
    cw_census *c = handle;
    c->deadline = now_ns() + budget_ns;
    c->over = 0;
    c->tick = 0;
    for (;;) {
        if (c->nomem)
            return -1;
        if (c->later_pos < c->nlater) {
            run_later(c);
            if (c->over)
                break;
            continue;
        }
        if (c->sp == 0)
            break;
        cw_entry *e = &c->stack[c->sp - 1];
        if (e->done) {
            cw_object *o = e->obj, *it = e->iter;
            c->sp--;
            if (it != NULL)
                py.decref(it); /* ours; it lets go of the set, which we still hold */
            release(c, o);
            continue;
        }
        open_top(c);
        if (c->over)
            break;
    }
    send_orphans(c);
    if (c->nomem)
        return -1;
    return c->sp == 0 && c->later_pos >= c->nlater ? 1 : 0;
}

/* From items[start:] of a list, append the objects not marked to `out`, until the
 * deadline; the index reached. */
CW_EXPORT int64_t cw_unmarked(void *handle, cw_object *items, int64_t start, cw_object *out,
                              uint64_t budget_ns) {
    cw_census *c = handle;
    uint64_t deadline = now_ns() + budget_ns;
    intptr_t n = py.list_size(items);
    int64_t i = start;
    for (; i < n; i++) {
        cw_object *o = py.list_get(items, i);
        if (o != NULL && !marked(c, (uint64_t)(uintptr_t)o) && py.list_append(out, o) < 0)
            break;
        if ((i & 4095) == 4095 && now_ns() >= deadline) {
            i++;
            break;
        }
    }
    if (py.err_occurred())
        py.err_clear();
    return i;
}

static int gc_visit(cw_object *o, void *arg) {
    cw_census *c = arg;
    if (!marked(c, (uint64_t)(uintptr_t)o) && py.list_append(c->gc_out, o) < 0) {
        py.err_clear();
        c->nomem = 1;
        return 0;
    }
    return 1;
}

/* 3.12-3.13 (and 3.14 where cw_gc_begin refuses): append the objects the gc tracks and
 * the walk has not marked to `out`: 1, or -1
 * where the interpreter has no PyUnstable_GC_VisitObjects (the agent lists them with
 * gc.get_objects instead) or memory ran out. One pass, in one pause: the gc's lists have
 * no cursor a later call could resume from (skipping what an earlier call saw costs as
 * much as seeing it: measured 25-45 ms a call at 2.5 M tracked objects). It costs ~20 ns
 * a tracked object, and builds no list of them all as gc.get_objects does. */
CW_EXPORT int cw_gc_unmarked(void *handle, cw_object *out) {
    cw_census *c = handle;
    if (py.gc_visit_objects == NULL)
        return -1;
    c->gc_out = out;
    py.gc_visit_objects(gc_visit, c);
    c->gc_out = NULL;
    return c->nomem ? -1 : 1;
}

/* ---- the gc's lists, a slice at a time (3.14) ------------------------------------
 *
 * 3.14 keeps every dict tracked, so the pass above costs one pause of ~20 ns per tracked
 * object (50 ms at 2.5 M dicts). Here the same pass walks the gc's four lists itself and
 * stops at a deadline, holding a reference to the object where it stopped (a cursor that
 * cannot be freed meanwhile), then resumes from it. What it relies on, checked before use
 * and only on 3.14, where each check below was made against the interpreter's sources:
 * - an object's gc links are the two words before it (next, prev; flags in the low two
 *   bits), as in every default build since 3.8;
 * - the lists' heads are 24 bytes apart (young, old[0], old[1], permanent: PyGC_Head,
 *   threshold, count), inside the interpreter's gc state, which _Py_DebugOffsets (the
 *   table CPython publishes for out-of-process tools) locates, with its `collecting` flag.
 *   A freshly made list's `next` is the young head; each head's threshold must be what
 *   gc.get_threshold() says and its links must agree both ways. Any mismatch: no slicing.
 * Between slices the target runs. Objects freed, tracked or untracked elsewhere in the
 * lists do not matter (the cursor is held; a tuple, which a collection may untrack, is
 * never made the cursor); a collection moves objects between lists, so the pass starts
 * again after one (the agent keeps automatic collections off while the pass runs; the
 * objects appended before are not appended twice), at most CW_GC_RESTARTS times. A node
 * that is any of the heads ends the list under way: a cursor that gc.freeze() moved
 * cannot lead the walk into a head taken for an object. */

#define CW_GC_RESTARTS 3

static inline uintptr_t gc_next(uintptr_t node) {
    return ((const uintptr_t *)node)[0] & ~(uintptr_t)3;
}

static inline uintptr_t gc_prev(uintptr_t node) {
    return ((const uintptr_t *)node)[1] & ~(uintptr_t)3;
}

static int seen_add(cw_census *c, uint64_t addr) {
    if ((c->gc_nseen + 1) * 2 > c->gc_seen_cap) {
        size_t ncap = c->gc_seen_cap ? c->gc_seen_cap * 2 : 1024;
        uint64_t *b = calloc(ncap, 8);
        if (b == NULL)
            return -1;
        for (size_t i = 0; i < c->gc_seen_cap; i++) {
            if (c->gc_seen[i] == 0)
                continue;
            size_t j = hs_mix64(c->gc_seen[i]) & (ncap - 1);
            while (b[j] != 0)
                j = (j + 1) & (ncap - 1);
            b[j] = c->gc_seen[i];
        }
        free(c->gc_seen);
        c->gc_seen = b;
        c->gc_seen_cap = ncap;
    }
    size_t j = hs_mix64(addr) & (c->gc_seen_cap - 1);
    while (c->gc_seen[j] != 0) {
        if (c->gc_seen[j] == addr)
            return 0;
        j = (j + 1) & (c->gc_seen_cap - 1);
    }
    c->gc_seen[j] = addr;
    c->gc_nseen++;
    return 1;
}

static void gc_cursor_set(cw_census *c, cw_object *o) {
    cw_object *old = c->gc_cursor;
    if (o != NULL)
        py.incref(o);
    c->gc_cursor = o;
    if (old != NULL)
        release(c, old);
}

/* The gc state's heads, found and checked as said above: 1, or 0 (not this build). */
static int gc_find_heads(cw_census *c, const int thresholds[3]) {
    const uint8_t *rt = py.runtime;
    if (rt == NULL || py.list_new == NULL || py.interp_get == NULL || py.interp_main == NULL)
        return 0;
    uint64_t version, free_threaded, off_gc, gc_size, off_collecting;
    memcpy(&version, rt + 8, 8);
    memcpy(&free_threaded, rt + 16, 8);
    /* 3.14's table, frozen at 3.14.0b1: interpreter_state.gc at 88, gc.size at 648,
     * gc.collecting at 656 (the positions heapspy/inject/pep768.py reads from, too) */
    if (memcmp(rt, "xdebugpy", 8) != 0 || (version >> 16) != 0x030E || version < 0x030E00B1 ||
        free_threaded != 0)
        return 0;
    memcpy(&off_gc, rt + 88, 8);
    memcpy(&gc_size, rt + 648, 8);
    memcpy(&off_collecting, rt + 656, 8);
    uintptr_t interp = (uintptr_t)py.interp_main();
    if (interp == 0 || py.interp_get() != (void *)interp || gc_size < 4 * 24 ||
        gc_size > 65536 || off_collecting + sizeof(int) > gc_size)
        return 0;
    uintptr_t gcstate = interp + off_gc, end = gcstate + gc_size;
    cw_object *fresh = py.list_new(0); /* tracked last: its next is the young head */
    if (fresh == NULL) {
        py.err_clear();
        return 0;
    }
    uintptr_t young = ((const uintptr_t *)fresh)[-2] & ~(uintptr_t)3;
    py.decref(fresh);
    if (young < gcstate || young + 4 * 24 > end || (young & 7) != 0)
        return 0;
    for (int k = 0; k < 4; k++) {
        uintptr_t h = young + 24 * (uintptr_t)k;
        if (k < 3) {
            int threshold;
            memcpy(&threshold, (const void *)(h + 16), sizeof threshold);
            if (threshold != thresholds[k])
                return 0;
        }
        uintptr_t n = gc_next(h), p = gc_prev(h);
        if ((n == h) != (p == h) || n == 0 || p == 0)
            return 0;
        if (n != h && (gc_prev(n) != h || gc_next(p) != h))
            return 0;
        c->gc_heads[k] = h;
    }
    c->gc_collecting = (const int *)(gcstate + off_collecting);
    return 1;
}

/* Prepare the sliced pass: append (by cw_gc_step) the tracked objects not marked to
 * `out`. 1: ready; 0: not here (another interpreter, or its layout did not check out:
 * cw_gc_unmarked or gc.get_objects serve instead). `thresholds`: gc.get_threshold(). */
CW_EXPORT int cw_gc_begin(void *handle, cw_object *out, int t0, int t1, int t2,
                          uint64_t collections) {
    cw_census *c = handle;
    const int thresholds[3] = {t0, t1, t2};
    if (c->gc_out != NULL || !gc_find_heads(c, thresholds) || *c->gc_collecting)
        return 0;
    py.incref(out);
    c->gc_out = out;
    c->gc_list = 0;
    c->gc_restarts = 0;
    c->gc_collections = collections;
    return 1;
}

static void gc_end(cw_census *c) {
    gc_cursor_set(c, NULL);
    c->gc_list = 4;
    if (c->gc_out != NULL) {
        release(c, c->gc_out);
        c->gc_out = NULL;
    }
}

/* One slice of the pass, until the deadline: 1 when it is complete, 0 when there is
 * more (or a collection is under way: later), -1 when it gave up (memory; the lists
 * changed under it CW_GC_RESTARTS times): what was appended stands. `collections`: the
 * collections the gc has made so far (gc.get_stats()), to see one between two slices. */
CW_EXPORT int cw_gc_step(void *handle, uint64_t budget_ns, uint64_t collections) {
    cw_census *c = handle;
    if (c->gc_out == NULL)
        return c->gc_list >= 4 ? 1 : -1;
    if (*c->gc_collecting)
        return 0; /* a finalizer let this thread in mid-collection: the lists are not whole */
    uint64_t deadline = now_ns() + budget_ns;
    uintptr_t node;
    int restart = collections != c->gc_collections;
    c->gc_collections = collections;
    if (!restart && c->gc_cursor != NULL) {
        node = (uintptr_t)c->gc_cursor - 16;
        restart = ((const uintptr_t *)node)[0] == 0; /* untracked meanwhile */
    } else {
        node = gc_next(c->gc_heads[c->gc_list]);
    }
    if (restart) {
        if (++c->gc_restarts > CW_GC_RESTARTS) {
            gc_end(c);
            return -1;
        }
        gc_cursor_set(c, NULL);
        c->gc_list = 0;
        node = gc_next(c->gc_heads[0]);
    }
    const uintptr_t *heads = c->gc_heads;
    uint64_t n = 0;
    for (;;) {
        if (node == heads[0] || node == heads[1] || node == heads[2] || node == heads[3]) {
            if (++c->gc_list == 4) {
                gc_end(c);
                return 1;
            }
            node = gc_next(heads[c->gc_list]);
            continue;
        }
        cw_object *o = (cw_object *)(node + 16);
        if ((++n & 1023) == 0 && o->type != py.tuple_type && now_ns() >= deadline) {
            gc_cursor_set(c, o);
            return 0;
        }
        uint64_t addr = (uint64_t)(uintptr_t)o;
        if (!marked(c, addr) && o != c->gc_out) {
            int fresh = seen_add(c, addr);
            if (fresh < 0 || (fresh && py.list_append(c->gc_out, o) < 0)) {
                py.err_clear();
                gc_end(c);
                return -1;
            }
        }
        node = gc_next(node);
    }
}

/* objects, bytes, paths, bookkeeping bytes, paths folded, deepest stack, objects the
 * target dropped while the walk held them (handed to the main thread to free) */
CW_EXPORT void cw_stats(void *handle, uint64_t *out) {
    cw_census *c = handle;
    out[0] = c->objects;
    out[1] = c->bytes;
    out[2] = c->nodes;
    out[3] = memory(c);
    out[4] = c->folded;
    out[5] = c->stack_max;
    out[6] = c->orphans_sent + c->norphans;
}

/* The paths: parent node (-1: a root), name id, objects, bytes, as arrays of cw_nodes(). */
CW_EXPORT uint64_t cw_nodes(void *handle, int32_t **parent, int32_t **name, uint64_t **count,
                            uint64_t **bytes) {
    cw_census *c = handle;
    *parent = c->node_parent;
    *name = c->node_name;
    *count = c->node_count;
    *bytes = c->node_bytes;
    return c->nodes;
}

/* Retainers: the objects (addresses) whose path the walk should note when it counts them,
 * before the walk starts. 0, or -1 when out of memory (then there are none). */
CW_EXPORT int cw_targets(void *handle, const uint64_t *addrs, uint64_t n) {
    cw_census *c = handle;
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    free(c->target_addr);
    free(c->target_path);
    c->ntargets = 0;
    c->target_addr = calloc(cap, sizeof *c->target_addr);
    c->target_path = malloc(cap * sizeof *c->target_path);
    if (c->target_addr == NULL || c->target_path == NULL) {
        free(c->target_addr);
        free(c->target_path);
        c->target_addr = NULL;
        c->target_path = NULL;
        c->targets_cap = 0;
        return -1;
    }
    c->targets_cap = cap;
    for (uint64_t k = 0; k < n; k++) {
        if (addrs[k] == 0)
            continue;
        size_t i = target_slot(c, addrs[k]);
        if (c->target_addr[i] == 0) {
            c->target_addr[i] = addrs[k];
            c->target_path[i] = -2;
            c->ntargets++;
        }
    }
    return 0;
}

/* For each of addrs, the path node it was counted under: -2 not reached, -3 not a
 * target. */
CW_EXPORT void cw_target_paths(void *handle, const uint64_t *addrs, int32_t *out, uint64_t n) {
    cw_census *c = handle;
    for (uint64_t k = 0; k < n; k++) {
        out[k] = -3;
        if (c->ntargets && addrs[k] != 0) {
            size_t i = target_slot(c, addrs[k]);
            if (c->target_addr[i] == addrs[k])
                out[k] = c->target_path[i];
        }
    }
}
