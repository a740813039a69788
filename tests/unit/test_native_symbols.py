"""heapspy/target/native_symbols.py on this very process: return addresses named from the
mapped files' symbols, the interpreter's frames dropped at the leaf end and cut after,
and addresses outside any file left as addresses."""

from __future__ import annotations

import ctypes
import os

from heapspy.target.native_symbols import NativeSymbols

LIBC = ctypes.CDLL(None)


def _addr(fn: object) -> int:
    return ctypes.cast(fn, ctypes.c_void_p).value or 0


def test_native_frames_are_named_and_cut_at_the_interpreter() -> None:
    symbols = NativeSymbols(os.getpid())
    malloc = _addr(LIBC.malloc) + 4  # a return address inside malloc
    free = _addr(LIBC.free) + 4
    raw = _addr(ctypes.pythonapi.PyMem_RawMalloc) + 4  # the interpreter's
    obj = _addr(ctypes.pythonapi.PyObject_Free) + 4

    # interpreter frames at the leaf are dropped, the walk ends at the next one
    names = symbols.name([raw, malloc, obj, free])
    assert len(names) == 1, names
    name, path = names[0]
    assert name.endswith(f" ({os.path.basename(path)})") and "libc" in path, names
    assert name.split(" ")[0] in ("malloc", "__libc_malloc"), names

    # a stack all in the interpreter keeps its leaf, named
    [(name, path)] = symbols.name([raw, obj])
    assert name.startswith("PyMem_RawMalloc ("), (name, path)

    # an address in no file mapping: the leaf is kept as an address, a later one ends
    # the walk (a stray frame pointer of code built without them)
    assert symbols.name([0x10, malloc]) == [("0x10", "")]
    assert len(symbols.name([malloc, 0x10, free])) == 1
