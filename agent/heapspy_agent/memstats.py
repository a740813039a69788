"""What the target's allocators say they hold: pymalloc's arenas and glibc's malloc.

Read in the target because only there can these be asked: pymalloc's own walk of its
arenas (``_PyObject_DebugMallocStats``, exported by every CPython 3.8-3.14, written to a
memory stream instead of the target's stderr) and glibc's ``mallinfo2`` (``mallinfo``
before glibc 2.33, whose ``int`` fields wrap at 2 GiB) and ``malloc_info`` (the arena
count). heapspy adds what the kernel says (``/proc/PID/smaps``) and reconciles the two.

Each call is made only when heapspy asks (at a dump, ``heapspy status``, ``heapspy
trim``), never per interval: pymalloc's walk visits every pool, mallinfo every free
chunk. heapspy asks for glibc figures only when the target runs glibc's malloc.
"""

import ctypes
import re
import sys

# typing is for the type checker only: the agent imports nothing it does not need
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional

_SIZE_T = ctypes.c_size_t


# glibc's struct mallinfo2 (size_t fields) and struct mallinfo (int fields), in order
MALLINFO_FIELDS = (
    "arena",
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",
    "usmblks",
    "fsmblks",
    "uordblks",
    "fordblks",
    "keepcost",
)
# what glibc() reports: the struct's fields, whether they are exact, and the arena count
GLIBC_KEYS = ("exact", *MALLINFO_FIELDS, "arenas")
# what pymalloc() reports
PYMALLOC_KEYS = (
    "arenas",
    "arena_size",
    "allocated_bytes",
    "available_bytes",
    "unused_pools_bytes",
    "overhead_bytes",
    "map_bytes",
    "blocks",
)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, _SIZE_T) for name in MALLINFO_FIELDS]


class _Mallinfo(ctypes.Structure):
    _fields_ = [(f[0], ctypes.c_int) for f in _Mallinfo2._fields_]


_NUMBER = re.compile(r"^(#?[^=]+?)\s*=\s*([\d,]+)\s*$")


def _libc() -> "ctypes.CDLL":
    return ctypes.CDLL(None, use_errno=True)


def _read_stream(write: "object") -> str:
    """What ``write(FILE *)`` prints, captured with open_memstream (nothing reaches the
    target's own streams)."""
    libc = _libc()
    buf = ctypes.c_char_p()
    size = _SIZE_T()
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(_SIZE_T)]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.free.argtypes = [ctypes.c_void_p]
    stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    if not stream:
        return ""
    try:
        write(stream)  # type: ignore[operator]
    finally:
        libc.fclose(stream)
    try:
        return ctypes.string_at(buf, size.value).decode("ascii", "replace")
    finally:
        libc.free(ctypes.cast(buf, ctypes.c_void_p))


def pymalloc(through: "Optional[Callable[[int], int]]" = None) -> "dict[str, int]":
    """pymalloc's own account: arenas, and the bytes in blocks used and free in them.

    CPython reports it only while pymalloc is the installed object allocator: with the
    shim's hooks in, ``through`` is the shim's ``pymalloc_stats``, which steps them aside
    for the call. Empty when pymalloc is not in use (``PYTHONMALLOC=malloc``) or other
    hooks are (tracemalloc's, in exact mode)."""
    func = through
    if func is None:
        direct = getattr(ctypes.pythonapi, "_PyObject_DebugMallocStats", None)
        if direct is None:
            return {}
        direct.argtypes = [ctypes.c_void_p]
        direct.restype = ctypes.c_int
        func = direct
    used = []

    def write(stream: int) -> None:
        used.append(func(stream))

    text = _read_stream(write)
    if not used or not used[0]:
        return {}
    out = {}  # type: dict[str, int]
    for line in text.splitlines():
        m = _NUMBER.match(line.strip())
        if m is None:
            continue
        key, value = m.group(1), int(m.group(2).replace(",", ""))
        if key == "# arenas allocated current":
            out["arenas"] = value
        elif "bytes/arena" in key:
            out["arena_size"] = int(key.split("*")[1].split()[0])
        elif key == "# bytes in allocated blocks":
            out["allocated_bytes"] = value
        elif key == "# bytes in available blocks":
            out["available_bytes"] = value
        elif key.startswith("# unused pools"):
            out["unused_pools_bytes"] = value
        elif key.startswith("# bytes lost to"):
            if "arena map" in key:
                out["map_bytes"] = out.get("map_bytes", 0) + value
            else:
                out["overhead_bytes"] = out.get("overhead_bytes", 0) + value
    out["blocks"] = sys.getallocatedblocks()
    return out


def glibc() -> "dict[str, int]":
    """glibc's malloc account (mallinfo2, else mallinfo), and its number of arenas."""
    libc = _libc()
    out = {}  # type: dict[str, int]
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _Mallinfo2
        info = libc.mallinfo2()  # type: ctypes.Structure
        out["exact"] = 1
    elif hasattr(libc, "mallinfo"):
        libc.mallinfo.restype = _Mallinfo
        info = libc.mallinfo()
        out["exact"] = 0  # int fields: wrong past 2 GiB
    else:
        return {}
    mask = (1 << 64) - 1 if out["exact"] else (1 << 32) - 1  # mallinfo's ints wrap
    for field in info._fields_:
        out[field[0]] = int(getattr(info, field[0])) & mask
    if hasattr(libc, "malloc_info"):
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        text = _read_stream(lambda stream: libc.malloc_info(0, stream))
        out["arenas"] = text.count("<heap nr=")
    return out


def trim() -> int:
    """glibc's malloc_trim(0): give free memory at the top of and inside the heaps back
    to the kernel. 1 when some was released."""
    libc = _libc()
    libc.malloc_trim.argtypes = [_SIZE_T]
    libc.malloc_trim.restype = ctypes.c_int
    return int(libc.malloc_trim(0))
