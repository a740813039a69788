"""Name the native frames of native samples (``--native-frames``), heapspy-side.

The agent sends return addresses only: naming them in the target would mean reading
symbol tables there. Here each address is found in the target's ``/proc/PID/maps``, and
named from the function symbols of the file mapped there (``.symtab``, else ``.dynsym``),
read with pyelftools through :func:`heapspy.target.elf.open_mapped_file` — the very file
mapped (``/proc/PID/map_files``, else the target's root with its credentials), bounded,
never a path the target can change under us. Tables are cached per file (device, inode,
size, mtime) for every session of this heapspy, and what one session may make heapspy
parse is bounded (:data:`SESSION_SYMBOLS`).

What a user wants to see under the Python line that called into an extension is the
extension's and its libraries' functions, not the interpreter calling them: frames in
the interpreter (its executable, libpython) are dropped at the leaf end (PyMem_RawMalloc
calling our hook) and the walk is cut at the first one after (the interpreter that
called the extension, and the Python stack beyond, already shown as Python frames). A
stack entirely in the interpreter keeps its leaf frame. An address in no file mapping (a
stray frame pointer of code built without them) ends the walk; the leaf is always kept.

A frame is ``Frame("leaky_alloc (libleak.so)", "/path/to/libleak.so", 0)``; an address no
symbol covers is named ``libleak.so+0x1234`` (its offset in the file's mapping).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from heapspy.target.elf import FunctionTable, open_mapped_file, read_functions
from heapspy.target.maps import Mapping, read_maps

SESSION_SYMBOLS = 2_000_000  # symbols one session may make heapspy index, in all
MAPS_EVERY = 1.0  # seconds: an address outside the maps read re-reads them at most this often
CACHED_FILES = 64  # function tables kept for all sessions
_INTERPRETER = re.compile(r"^libpython\d+\.\d+")

_cache: OrderedDict[tuple[int, int, int, int], FunctionTable | None] = OrderedDict()
_cache_lock = threading.Lock()

NativeName = tuple[str, str]  # (function name as shown, the file's path)


class NativeSymbols:
    """Names the return addresses of one target's native frames."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.symbols_left = SESSION_SYMBOLS
        self._maps: list[Mapping] = []
        self._maps_read = float("-inf")
        self._exe = ""
        try:
            self._exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            pass
        self._tables: dict[str, FunctionTable | None] = {}

    def name(self, pcs: Sequence[int]) -> list[NativeName]:
        """The frames of ``pcs`` (leaf first) as they are shown, leaf first."""
        found = [self._mapping(pc) for pc in pcs]
        kinds = [self._kind(m) for m in found]
        keep: list[int] = []
        i = 0
        while i < len(pcs) and kinds[i] == "interpreter":  # the interpreter's allocator
            i += 1
        while i < len(pcs) and kinds[i] == "library":
            keep.append(i)
            i += 1
        if not keep:
            keep = [0]
        return [self._name(pcs[k], found[k]) for k in keep]

    def _kind(self, m: Mapping | None) -> str:
        if m is None:
            return "none"
        base = os.path.basename(m.path)
        if m.path == self._exe or _INTERPRETER.match(base):
            return "interpreter"
        return "library"

    def _mapping(self, pc: int) -> Mapping | None:
        addr = pc - 1  # a return address: the call is the instruction before it
        for attempt in range(2):
            for m in self._maps:
                if m.start <= addr < m.end:
                    return m if m.executable and m.path.startswith("/") else None
            if attempt or time.monotonic() - self._maps_read < MAPS_EVERY:
                return None
            try:
                self._maps = read_maps(self.pid)
            except Exception:  # noqa: BLE001 - gone or refused: the frames stay unnamed
                self._maps = []
            self._maps_read = time.monotonic()
        return None

    def _name(self, pc: int, m: Mapping | None) -> NativeName:
        if m is None:
            return (f"0x{pc:x}", "")
        base = os.path.basename(m.path)
        start = next((x.start for x in self._maps if x.path == m.path and x.offset == 0), None)
        table = self._table(m.path) if start is not None else None
        if table is not None and start is not None:
            function = table.function_at(pc - 1 - table.bias(start))
            if function:
                return (f"{function} ({base})", m.path)
        offset = pc - m.start + m.offset
        return (f"{base}+0x{offset:x}", m.path)

    def _table(self, path: str) -> FunctionTable | None:
        if path in self._tables:
            return self._tables[path]
        table: FunctionTable | None = None
        try:
            with open_mapped_file(self.pid, self._maps, path) as f:
                st = os.fstat(f.fileno())
                key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                with _cache_lock:
                    cached = key in _cache
                    table = _cache.get(key)
                if not cached and self.symbols_left > 0:
                    table = read_functions(f)
                    self.symbols_left -= table.examined
                    with _cache_lock:
                        _cache[key] = table
                        while len(_cache) > CACHED_FILES:
                            _cache.popitem(last=False)
        except Exception:  # noqa: BLE001 - the target's file: anything may be wrong with it
            table = None
        self._tables[path] = table
        return table
