/*
 * object_layout.c: the object <-> allocation-block mapping and a safe type check for the
 * blocks the shim sampled, so that a dump can say what type each live sample is.
 *
 * Where an object sits in its block (Objects/object.c, Modules/gcmodule.c, gc.c of each
 * version): a non-GC object starts at the block (PyObject_Malloc); a GC object follows its
 * PyGC_Head (two words in 3.8-3.14's default builds); from 3.11 a type whose instances
 * have a managed dict (Py_TPFLAGS_MANAGED_DICT, 1 << 4) puts two more words before the GC
 * header, and from 3.12 so does a managed weakref list (Py_TPFLAGS_MANAGED_WEAKREF, 1 << 3):
 * CPython's _PyType_PreHeaderSize(). The debug allocators (PYTHONMALLOC=debug) sit below
 * the shim's hooks, so the pointers the shim sees are already the callers' pointers.
 *
 * Safety: a sampled block is live memory of at least its requested size, so reading words
 * inside it is safe; what those words mean is not known. A candidate object position is
 * accepted only when the word at its ob_type is the address of a type object in the set
 * the agent built from types it holds (their flags and sizes copied here when the set is
 * made, so classifying never dereferences a type at all), the type's pre-header equals the
 * candidate's offset, and the type's smallest instance fits in what is left of the block.
 * A block that is not an object (dict keys, list item arrays, str data of old versions,
 * NumPy data) can still, by chance, hold a type's address at a candidate position: it would
 * be counted as that type. Such words are rare at these offsets (a refcount precedes
 * ob_type), and no memory is read outside the block either way.
 *
 * Not objects: MEM-domain blocks (list item arrays, buffers) and NumPy array data get no
 * type; knowing their owner would take a walk of the heap, not a lookup.
 */
#include "object_layout.h"

#include <stdlib.h>
#include <string.h>

#include "heapspy_shim.h"

#define HS_EXPORT __attribute__((visibility("default")))

#define TPFLAGS_HAVE_GC (1ull << 14)
#define TPFLAGS_MANAGED_DICT (1ull << 4)    /* 3.11+ */
#define TPFLAGS_MANAGED_WEAKREF (1ull << 3) /* 3.12+ */
#define WORD ((uint64_t)sizeof(void *))
#define GC_HEAD (2 * WORD)
/* tp_flags after ob_type in PyTypeObject: ob_size, tp_name, tp_basicsize, tp_itemsize,
 * tp_dealloc, tp_vectorcall_offset, tp_getattr, tp_setattr, tp_as_async, tp_repr,
 * tp_as_number, tp_as_sequence, tp_as_mapping, tp_hash, tp_call, tp_str, tp_getattro,
 * tp_setattro, tp_as_buffer: 19 words (Include/cpython/object.h, 3.8-3.14). */
#define TP_FLAGS_AFTER_OB_TYPE (20 * WORD)

typedef struct {
    uint64_t addr; /* 0: empty slot */
    uint64_t min_size;
    uint32_t index;
    uint32_t pre; /* hs_preheader() of its flags */
} type_entry;

static int g_minor;
static uint64_t g_ob_type_off;
static type_entry *g_types;
static uint64_t g_types_cap; /* power of two, at most half full */

static hs_typed_row *g_rows;
static uint64_t g_rows_cap, g_nrows;
static uint64_t *g_row_index; /* (row + 1) per slot, 0 = empty */
static uint64_t g_row_index_cap;

static inline uint64_t addr_slot(uint64_t a, uint64_t cap) {
    return ((a >> 4) * 0x9E3779B97F4A7C15ULL >> 20) & (cap - 1);
}

HS_EXPORT int hs_layout_init(int minor, uint64_t ob_type_off) {
    if (minor < 8 || (ob_type_off != WORD && ob_type_off != 3 * WORD))
        return HS_ERR_ARG;
    g_minor = minor;
    g_ob_type_off = ob_type_off;
    return HS_OK;
}

HS_EXPORT uint64_t hs_preheader(uint64_t tp_flags) {
    uint64_t pre = (tp_flags & TPFLAGS_HAVE_GC) ? GC_HEAD : 0;
    uint64_t managed = g_minor >= 12   ? (TPFLAGS_MANAGED_DICT | TPFLAGS_MANAGED_WEAKREF)
                       : g_minor == 11 ? TPFLAGS_MANAGED_DICT
                                       : 0;
    if (tp_flags & managed)
        pre += 2 * WORD;
    return pre;
}

HS_EXPORT void hs_types_clear(void) {
    free(g_types);
    g_types = NULL;
    g_types_cap = 0;
    free(g_rows);
    free(g_row_index);
    g_rows = NULL;
    g_row_index = NULL;
    g_rows_cap = g_row_index_cap = g_nrows = 0;
}

HS_EXPORT int hs_types_set(const uint64_t *types, const uint64_t *flags, const uint64_t *min_sizes,
                 uint64_t n) {
    if (g_ob_type_off == 0 || (n && (types == NULL || flags == NULL || min_sizes == NULL)) ||
        n > (1u << 26))
        return HS_ERR_ARG;
    uint64_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    type_entry *t = calloc(cap, sizeof *t);
    if (t == NULL)
        return HS_ERR_NOMEM;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t a = types[i];
        if (a == 0 || (a & (WORD - 1))) {
            free(t);
            return HS_ERR_ARG;
        }
        /* The caller's word that this is a live type object it holds: check the layout
         * against what Python says its flags are. */
        uint64_t tp_flags = (uint64_t) * (const unsigned long *)(a + g_ob_type_off + TP_FLAGS_AFTER_OB_TYPE);
        if (tp_flags != flags[i]) {
            free(t);
            return HS_ERR_LAYOUT;
        }
        uint64_t j = addr_slot(a, cap);
        while (t[j].addr != 0 && t[j].addr != a)
            j = (j + 1) & (cap - 1);
        t[j].addr = a;
        t[j].min_size = min_sizes[i];
        t[j].index = (uint32_t)i;
        t[j].pre = (uint32_t)hs_preheader(tp_flags);
    }
    hs_types_clear();
    g_types = t;
    g_types_cap = cap;
    return HS_OK;
}

static inline const type_entry *find_type(uint64_t a) {
    if (a == 0 || (a & (WORD - 1)))
        return NULL;
    for (uint64_t j = addr_slot(a, g_types_cap);; j = (j + 1) & (g_types_cap - 1)) {
        if (g_types[j].addr == a)
            return &g_types[j];
        if (g_types[j].addr == 0)
            return NULL;
    }
}

HS_EXPORT int64_t hs_block_type(uint64_t block, uint64_t size, uint32_t domain, uint64_t *object) {
    if (domain != HS_DOM_OBJ || g_types == NULL || block == 0)
        return -1;
    /* Candidate positions: at the block, after a GC header, after GC header + pre-header. */
    for (uint64_t off = 0; off <= 4 * WORD; off += 2 * WORD) {
        if (off + g_ob_type_off + WORD > size)
            break;
        uint64_t tp = *(const uint64_t *)(block + off + g_ob_type_off);
        const type_entry *e = find_type(tp);
        if (e != NULL && e->pre == off && off + e->min_size <= size) {
            if (object != NULL)
                *object = block + off;
            return e->index;
        }
    }
    return -1;
}

HS_EXPORT uint64_t hs_object_block(uint64_t object) {
    if (g_ob_type_off == 0 || object == 0)
        return 0;
    uint64_t tp = *(const uint64_t *)(object + g_ob_type_off);
    uint64_t tp_flags = (uint64_t) * (const unsigned long *)(tp + g_ob_type_off + TP_FLAGS_AFTER_OB_TYPE);
    return object - hs_preheader(tp_flags);
}

/* ---- classification of every live sample, summed per (stack, type) -------------- */

static int rows_index_rebuild(uint64_t cap) {
    uint64_t *idx = calloc(cap, sizeof *idx);
    if (idx == NULL)
        return 0;
    for (uint64_t r = 0; r < g_nrows; r++) {
        uint64_t key = ((uint64_t)g_rows[r].stack << 32) | (uint32_t)g_rows[r].type;
        uint64_t j = addr_slot(key << 4, cap);
        while (idx[j])
            j = (j + 1) & (cap - 1);
        idx[j] = r + 1;
    }
    free(g_row_index);
    g_row_index = idx;
    g_row_index_cap = cap;
    return 1;
}

static int add_row(const hs_live_block *b) {
    int32_t type = (int32_t)hs_block_type(b->addr, b->size, b->domain, NULL);
    uint64_t key = ((uint64_t)b->stack << 32) | (uint32_t)type;
    uint64_t j = addr_slot(key << 4, g_row_index_cap);
    hs_typed_row *row = NULL;
    for (uint64_t v; (v = g_row_index[j]) != 0; j = (j + 1) & (g_row_index_cap - 1)) {
        if (g_rows[v - 1].stack == b->stack && g_rows[v - 1].type == type) {
            row = &g_rows[v - 1];
            break;
        }
    }
    if (row == NULL) {
        if (g_nrows == g_rows_cap) {
            uint64_t ncap = g_rows_cap ? 2 * g_rows_cap : 256;
            hs_typed_row *r = realloc(g_rows, ncap * sizeof *r);
            if (r == NULL)
                return HS_ERR_NOMEM;
            g_rows = r;
            g_rows_cap = ncap;
        }
        if ((g_nrows + 1) * 2 > g_row_index_cap) {
            if (!rows_index_rebuild(g_row_index_cap * 2))
                return HS_ERR_NOMEM;
            j = addr_slot(key << 4, g_row_index_cap);
            while (g_row_index[j])
                j = (j + 1) & (g_row_index_cap - 1);
        }
        row = &g_rows[g_nrows];
        memset(row, 0, sizeof *row);
        row->stack = b->stack;
        row->type = type;
        g_row_index[j] = ++g_nrows;
    }
    row->count++;
    row->bytes += b->size;
    row->est_count += b->weight;
    row->est_bytes += b->weight * (double)b->size;
    return 0;
}

/* The blocks are scattered over the heap: a cache miss each. A small ring lets the block
 * read RING visits later be fetched while the others are classified. */
#define RING 16
typedef struct {
    hs_live_block ring[RING];
    unsigned count;
} prefetch_ring;

static int classify_one(void *arg, const hs_live_block *b) {
    prefetch_ring *r = arg;
    hs_live_block *slot = &r->ring[r->count % RING];
    int rc = 0;
    if (r->count >= RING)
        rc = add_row(slot);
    *slot = *b;
    r->count++;
    if (b->domain == HS_DOM_OBJ)
        __builtin_prefetch((const void *)(uintptr_t)b->addr);
    return rc;
}

HS_EXPORT int hs_classify_live(hs_typed_row **rows, uint64_t *n) {
    if (rows == NULL || n == NULL)
        return HS_ERR_ARG;
    *rows = NULL;
    *n = 0;
    g_nrows = 0;
    if (g_row_index == NULL || g_row_index_cap > 4096) {
        free(g_row_index);
        g_row_index = NULL;
        g_row_index_cap = 0;
        if (!rows_index_rebuild(1024))
            return HS_ERR_NOMEM;
    } else {
        memset(g_row_index, 0, g_row_index_cap * sizeof *g_row_index);
    }
    prefetch_ring ring;
    ring.count = 0;
    int rc = hs_live_foreach(classify_one, &ring);
    unsigned left = ring.count < RING ? ring.count : RING;
    for (unsigned k = 0; rc == 0 && k < left; k++)
        rc = add_row(&ring.ring[k]); /* all RING slots once it wrapped */
    if (rc != 0)
        return rc;
    *rows = g_rows;
    *n = g_nrows;
    return HS_OK;
}
