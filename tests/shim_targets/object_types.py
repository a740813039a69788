"""Object <-> block mapping and the type check on every kind of block, every allocation
sampled (rate 1): for each object made here, the block the shim recorded for it must be
where hs_object_block() says, and classify it as its own type."""

import ctypes
import sys

from heapspy_agent.object_types import classify, min_sizes, reachable_types, type_name
from heapspy_agent.shim import DOM_MEM, DOM_OBJ

from _common import emit, load, mem_free, mem_malloc, obj_free, obj_malloc


class Plain:
    def __init__(self, i):
        self.i = i


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, i):
        self.a = i
        self.b = None


class MyDict(dict):
    pass


class MyList(list):
    pass


class MyBytes(bytes):
    pass


class MyStr(str):
    pass


class MyInt(int):
    pass


class WithWeak:
    __slots__ = ("x", "__weakref__")


def make(i):
    return [
        {"k": i},
        b"x" * (50 + i),
        [i, i],
        Plain(i),
        Slotted(i),
        MyDict(a=i),
        MyList([i]),
        MyBytes(b"y" * (10 + i)),
        MyStr("z" * (20 + i)),
        MyInt(10**30 + i),
        WithWeak(),
        "s" + str(10**20 + i),
        "é" + str(i),
        10**40 + i,
        float(i) + 0.5,
        (i, "a", None),
        {i, -i},
        bytearray(b"q" * 100),
        Plain,
    ]


def main():
    shim = load()
    shim.start(1, max_frames=4, seed=3)
    keep = [make(i) for i in range(120)]  # more than a free list holds
    shim.set_rate(0)  # what follows allocates: it must not sample itself while it reads
    blocks = {b.address: b for b in shim.live_blocks()}
    types = reachable_types()
    sizes = min_sizes(types)
    index = {id(t): k for k, t in enumerate(types)}
    wrong = []
    found = {}
    checked = []  # (object, its sampled block)
    for objs in keep:
        for obj in objs:
            b = blocks.get(shim.object_block(obj))
            if b is not None:  # else from a free list (made before start): no block of its own
                checked.append((obj, b))
    got = shim.block_types([(b.address, b.size, b.domain) for _, b in checked], types, sizes)
    for (obj, b), k in zip(checked, got):
        name = type_name(type(obj))
        if k != index[id(type(obj))]:
            wrong.append([name, type_name(types[k]) if k >= 0 else None, b.domain])
        found[name] = found.get(name, 0) + 1
    # Blocks that are not objects: a MEM buffer, an OBJ buffer of zeros, an OBJ buffer
    # whose words are the address of a type but where no object of it could start.
    shim.set_rate(1)
    raw = [mem_malloc(64), obj_malloc(64), obj_malloc(16)]
    shim.set_rate(0)

    ctypes.memset(raw[1], 0, 64)
    ctypes.c_uint64.from_address(raw[2] + 8).value = id(dict)  # 16 bytes: dict needs 48
    blocks = {b.address: b for b in shim.live_blocks()}
    not_objects = shim.block_types(
        [(p, blocks[p].size, blocks[p].domain) for p in raw], types, sizes
    )
    domains = [blocks[p].domain for p in raw]
    by_type = {}
    for rows in classify(shim, set()).values():
        for name, n, _nbytes, _en, _eb in rows:
            by_type[name] = by_type.get(name, 0) + n
    mem_free(raw[0])
    obj_free(raw[1])
    obj_free(raw[2])
    assert shim.stop()
    emit(
        {
            "wrong": wrong,
            "found": found,
            "not_objects": not_objects,
            "domains": domains,
            "expect_domains": [DOM_MEM, DOM_OBJ, DOM_OBJ],
            "by_type": by_type,
            "min_str": min_sizes([str])[0],
            "version": list(sys.version_info[:2]),
        }
    )


main()
