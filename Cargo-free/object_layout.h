/*
 * object_layout.h: where a Python object sits in its allocation block, and a safe way to
 * tell which type (if any) a sampled block holds. Plain C, no Python.h: the only layouts
 * used are the ones CPython 3.8-3.14 share (see object_layout.c). Every function must be
 * called with the GIL held.
 */
#ifndef HEAPSPY_OBJECT_LAYOUT_H
#define HEAPSPY_OBJECT_LAYOUT_H

#include <stdint.h>

/* One row of hs_classify_live(): the live samples of one (stack, type). */
typedef struct {
    uint32_t stack;
    int32_t type;      /* index into the types given to hs_types_set(); -1: not an object */
    uint64_t count;    /* raw sampled blocks */
    uint64_t bytes;    /* their requested bytes */
    double est_count;  /* upscaled: sum of the blocks' weights */
    double est_bytes;
} hs_typed_row;

/* The interpreter's layout facts: minor version (3.minor) and offsetof(PyObject, ob_type)
 * (8; 24 in a Py_TRACE_REFS build), which the caller reads off object.__basicsize__ - 8. */
int hs_layout_init(int minor, uint64_t ob_type_off);

/* The set of type objects a block may be recognised as: types[i] is the address of a type
 * object the caller holds a reference to until hs_types_clear() (or the next set), flags[i]
 * its __flags__ (checked against tp_flags read at the layout's offset: HS_ERR_LAYOUT when
 * they differ), min_sizes[i] the fewest bytes an instance's object part can have (its
 * __basicsize__; for str the size of an empty compact str). */
int hs_types_set(const uint64_t *types, const uint64_t *flags, const uint64_t *min_sizes,
                 uint64_t n);
void hs_types_clear(void);

/* Bytes before the object in its block for a type with these tp_flags: the GC header
 * (HAVE_GC) and, on 3.11, the managed-dict pre-header, on 3.12+ the managed dict/weakref
 * pre-header. */
uint64_t hs_preheader(uint64_t tp_flags);

/* The type index of the object a block holds (and its address in *object), or -1: the
 * block is not of the OBJ domain, or no candidate position holds a pointer to a type of
 * the set that agrees with that position and fits in the block. Reads only inside the
 * block, and no type object outside the set. */
int64_t hs_block_type(uint64_t block, uint64_t size, uint32_t domain, uint64_t *object);

/* The start of the allocation block of a live object (the caller knows it is one: its
 * type is read). 0 before hs_layout_init(). */
uint64_t hs_object_block(uint64_t object);

/* Every live sampled block classified and summed per (stack, type): *rows points at n
 * rows owned by this file, valid until the next call or hs_types_clear(). */
int hs_classify_live(hs_typed_row **rows, uint64_t *n);

#endif
