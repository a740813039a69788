"""Symbols and sections of an ELF image mapped in a target, with an on-disk cache.

pyelftools takes 50-150 ms to parse libpython's symbol tables, more than the whole
attach budget, so what we resolve is cached under ``~/.cache/heapspy/elf`` keyed by the
image's GNU build-id (or by inode, size and mtime when it has none). The file is opened
through ``/proc/PID/map_files`` (the very file mapped, even if deleted or replaced on
disk since) and falls back to ``/proc/PID/root/<path>`` (the target's mount namespace).

The target chose that file, so it is read as hostile (a crafted ``.so`` claiming 4M
dynamic symbols kept pyelftools busy for minutes): it must be a regular file of at most
:data:`MAX_IMAGE` bytes, opened without following links out of the target's root (see
:mod:`heapspy.target.rootfs`), read through a view that allows :data:`READ_BUDGET`
bytes and :data:`PARSE_SECONDS` seconds in all, with the section, segment, note and
symbol counts checked before pyelftools walks them. Any failure, whatever pyelftools
raises, is :class:`UnrecognisedPython` (exit 6) with a one-line reason.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from heapspy.errors import UnrecognisedPython
from heapspy.target.maps import Mapping
from heapspy.target.memory import RemoteMemory
from heapspy.target.rootfs import (
    BoundedReader,
    Credentials,
    Refused,
    open_in_root,
    open_regular,
    open_root,
)

ET_EXEC = "ET_EXEC"
ET_DYN = "ET_DYN"
PAGE = 4096

# Limits on what a target's ELF image may make heapspy parse. Real interpreters, for
# scale: libpython3.12.so 30 MB, 37 sections, 9 segments, 2,335 .dynsym and 8,856 .symtab
# entries (3.8); pyelftools takes ~60 us per symbol to index a table.
MAX_IMAGE = 1 << 30  # bytes of file (a libpython with full debug info is ~150 MB)
MAX_SECTIONS = 4096
MAX_SEGMENTS = 256
MAX_SYMBOLS = 100_000  # per symbol table
MAX_STRINGS = 64 << 20  # bytes of one symbol string table
_SYM64 = struct.Struct("<IBBHQQ")  # Elf64_Sym: name, info, other, shndx, value, size
MAX_NOTES = 1 << 20  # bytes of one PT_NOTE segment
READ_BUDGET = 256 << 20  # bytes read from the file in all, per parse
PARSE_SECONDS = 20.0


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "heapspy" / "elf"


@dataclass
class ElfFacts:
    """What heapspy needs from one ELF file; serialisable to the cache."""

    elf_type: str
    first_load_vaddr: int
    build_id: str | None
    build_id_vaddr: int | None
    symbols: dict[str, int | None] = field(default_factory=dict)
    sections: dict[str, list[int] | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "elf_type": self.elf_type,
            "first_load_vaddr": self.first_load_vaddr,
            "build_id": self.build_id,
            "build_id_vaddr": self.build_id_vaddr,
            "symbols": self.symbols,
            "sections": self.sections,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ElfFacts:
        return cls(
            elf_type=str(data["elf_type"]),
            first_load_vaddr=int(data["first_load_vaddr"]),
            build_id=data.get("build_id"),
            build_id_vaddr=data.get("build_id_vaddr"),
            symbols=dict(data.get("symbols", {})),
            sections=dict(data.get("sections", {})),
        )


def open_mapped_file(pid: int, maps: list[Mapping], path: str) -> IO[bytes]:
    """Open the file behind ``path``'s mapping as the target sees it, bounded.

    Raises :class:`~heapspy.target.rootfs.Refused` for a file that is not a regular one
    of at most :data:`MAX_IMAGE` bytes the target may read, OSError when it cannot open.
    """
    fd = -1
    for m in maps:
        if m.path == path and m.offset == 0:
            # the magic link leads to the very inode mapped: no path is looked up
            try:
                path_fd = os.open(
                    f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}", os.O_PATH | os.O_CLOEXEC
                )
            except OSError:
                break
            try:
                fd = open_regular(path_fd, path, None, MAX_IMAGE)
            finally:
                os.close(path_fd)
            break
    if fd < 0:
        clean = path[: -len(" (deleted)")] if path.endswith(" (deleted)") else path
        root_fd = open_root(pid)
        try:
            fd = open_in_root(root_fd, clean, Credentials.of_process(pid), MAX_IMAGE)
        finally:
            os.close(root_fd)
    length = os.fstat(fd).st_size
    raw = BoundedReader(fd, path, min(length, MAX_IMAGE), READ_BUDGET, PARSE_SECONDS)
    return io.BufferedReader(raw, buffer_size=16 << 10)


def _cache_key(f: IO[bytes]) -> str:
    st = os.fstat(f.fileno())
    return hashlib.sha1(
        f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()
    ).hexdigest()


class _TooLarge(Exception):
    """A count in the image is beyond what heapspy parses."""


def _open_elf(f: IO[bytes]) -> Any:
    """pyelftools' view of ``f``, once its section and segment counts are sane."""
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(f)  # type: ignore[no-untyped-call, unused-ignore]
    if elf.num_sections() > MAX_SECTIONS:
        raise _TooLarge(f"{elf.num_sections()} sections (heapspy reads at most {MAX_SECTIONS})")
    if elf.num_segments() > MAX_SEGMENTS:
        raise _TooLarge(f"{elf.num_segments()} segments (heapspy reads at most {MAX_SEGMENTS})")
    return elf


def _parse(f: IO[bytes], symbols: Iterable[str], sections: Iterable[str]) -> ElfFacts:
    elf = _open_elf(f)
    etype = str(elf.header["e_type"])
    loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
    first = min(int(s["p_vaddr"]) for s in loads) if loads else 0
    build_id = None
    build_id_vaddr = None
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_NOTE":
            continue
        if int(seg["p_filesz"]) > MAX_NOTES:
            raise _TooLarge(f"a {int(seg['p_filesz'])}-byte note segment")
        for note in seg.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                build_id = str(note["n_desc"])
                # the descriptor follows a 12-byte header and the 4-byte "GNU\0" name
                build_id_vaddr = (
                    int(seg["p_vaddr"]) + (int(note["n_offset"]) - int(seg["p_offset"])) + 16
                )
    facts = ElfFacts(etype, first, build_id, build_id_vaddr)
    _fill(elf, facts, symbols, sections)
    return facts


def _fill(elf: Any, facts: ElfFacts, symbols: Iterable[str], sections: Iterable[str]) -> None:
    wanted = [name for name in symbols if name not in facts.symbols]
    if wanted:
        facts.symbols.update(_find_symbols(elf, wanted))
    for name in sections:
        if name in facts.sections:
            continue
        sec = elf.get_section_by_name(name)
        facts.sections[name] = [int(sec["sh_addr"]), int(sec["sh_size"])] if sec else None


def _symbol_tables(elf: Any, names: tuple[str, ...]) -> list[tuple[Any, Any]]:
    """Each of the symbol tables ``names`` the image has, in that order, with its string
    table; _TooLarge past the limits, or for a table or strings past the end of the file
    (read_functions and _find_symbols read both in one piece)."""
    if elf.elfclass != 64 or not elf.little_endian:
        raise _TooLarge("not a 64-bit little-endian image")  # x86_64 only, as the shim
    end = elf.stream.seek(0, io.SEEK_END)
    tables = []
    for name in names:
        table = elf.get_section_by_name(name)
        if not table or table["sh_type"] not in ("SHT_SYMTAB", "SHT_DYNSYM"):
            continue
        count = int(table["sh_size"]) // _SYM64.size
        if count > MAX_SYMBOLS:
            raise _TooLarge(f"{count} symbols in {name} (at most {MAX_SYMBOLS} read)")
        strtab = elf.get_section(int(table["sh_link"]))
        if int(strtab["sh_size"]) > MAX_STRINGS:
            raise _TooLarge(f"a {int(strtab['sh_size'])}-byte string table")
        for sec in (table, strtab):
            if int(sec["sh_offset"]) + int(sec["sh_size"]) > end:
                raise _TooLarge(f"{sec.name or 'a section'} runs past the end of the file")
        tables.append((table, strtab))
    return tables


def _find_symbols(elf: Any, names: list[str]) -> dict[str, int | None]:
    """The value of each defined symbol named, .dynsym first, then .symtab; None for one
    in neither. Each table and its strings are read in one piece, as in read_functions:
    pyelftools' name lookup reads symbol by symbol, a buffer refill for the entry and
    another for its name (3.8's libpython, cache cold: over READ_BUDGET, and attach
    refused). The strings are searched for each name (the name and its NUL, wherever: a
    linker may point a short name into the tail of a longer one), then the entries for
    those offsets."""
    found: dict[str, int | None] = dict.fromkeys(names)
    tables = _symbol_tables(elf, (".dynsym", ".symtab"))
    for table, strtab in tables:
        missing = [name for name, addr in found.items() if addr is None]
        if not missing:
            break
        strings = strtab.data()
        offsets: dict[int, str] = {}
        for name in missing:
            needle = name.encode() + b"\0"
            at = strings.find(needle)
            while at >= 0 and len(offsets) < MAX_SYMBOLS:
                offsets[at] = name
                at = strings.find(needle, at + 1)
        if not offsets:
            continue
        data = table.data()
        for off in range(0, len(data) - _SYM64.size + 1, _SYM64.size):
            st_name, _, _, shndx, value, _ = _SYM64.unpack_from(data, off)
            hit = offsets.get(st_name)
            if hit is not None and value != 0 and shndx != 0 and found[hit] is None:
                found[hit] = value
    return found


class ElfImage:
    """One ELF file mapped in a target, with the load bias applied to its addresses."""

    def __init__(self, pid: int, maps: list[Mapping], path: str) -> None:
        self.pid = pid
        self.path = path
        self.base = next(m.start for m in maps if m.path == path and m.offset == 0)
        self._maps = maps
        self._facts: ElfFacts | None = None
        self._key: str | None = None

    def _cache_file(self) -> Path:
        assert self._key is not None
        return cache_dir() / f"{self._key}.json"

    def resolve(self, symbols: Iterable[str] = (), sections: Iterable[str] = ()) -> ElfFacts:
        """The facts asked for, from the cache or parsed. Raises UnrecognisedPython for
        an image heapspy will not parse, OSError when it cannot be opened at all."""
        try:
            return self._resolve(list(symbols), list(sections))
        except UnrecognisedPython:
            raise
        except Refused as exc:
            raise UnrecognisedPython(
                f"Process {self.pid}: heapspy will not read {self.path}: {exc}."
            ) from None
        except (OSError, StopIteration):
            raise  # not there, or not ours to open: the callers say which
        except Exception as exc:  # pyelftools raises anything on a crafted file
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise UnrecognisedPython(
                f"Process {self.pid}: cannot parse the ELF image {self.path}: {reason}."
            ) from None

    def _resolve(self, symbols: list[str], sections: list[str]) -> ElfFacts:
        with open_mapped_file(self.pid, self._maps, self.path) as f:
            if self._key is None:
                self._key = _cache_key(f)
            if self._facts is None:
                try:
                    self._facts = ElfFacts.from_json(json.loads(self._cache_file().read_text()))
                except (OSError, ValueError, KeyError):
                    self._facts = None
            facts = self._facts
            missing = (
                facts is None
                or any(s not in facts.symbols for s in symbols)
                or any(s not in facts.sections for s in sections)
            )
            if missing:
                if facts is None:
                    facts = _parse(f, symbols, sections)
                else:
                    _fill(_open_elf(f), facts, symbols, sections)
                self._facts = facts
                self._store(facts)
        assert self._facts is not None
        return self._facts

    def _store(self, facts: ElfFacts) -> None:
        try:
            d = cache_dir()
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=d, prefix=".elf-")
            with os.fdopen(fd, "w") as out:
                json.dump(facts.to_json(), out)
            os.replace(tmp, self._cache_file())
        except OSError:
            pass  # a cache that cannot be written only costs time

    @property
    def bias(self) -> int:
        facts = self.resolve()
        if facts.elf_type == ET_EXEC:
            return 0
        return self.base - (facts.first_load_vaddr & ~(PAGE - 1))

    def symbol(self, name: str) -> int | None:
        addr = self.resolve(symbols=[name]).symbols.get(name)
        return None if addr is None else addr + self.bias

    def section(self, name: str) -> tuple[int, int] | None:
        sec = self.resolve(sections=[name]).sections.get(name)
        return None if sec is None else (sec[0] + self.bias, sec[1])

    def check_build_id(self, memory: RemoteMemory) -> None:
        """Refuse when the file read (or the cache entry) is not the image in memory.

        Compares the GNU build-id note of the parsed file with the bytes at the same
        address in the target; images without a build-id are accepted.
        """
        facts = self.resolve()
        if not facts.build_id or facts.build_id_vaddr is None:
            return
        expected = bytes.fromhex(facts.build_id)
        try:
            actual = memory.read(facts.build_id_vaddr + self.bias, len(expected))
        except OSError:
            actual = b""
        if actual != expected:
            raise UnrecognisedPython(
                f"{self.path} in process {self.pid} does not match the file heapspy read "
                f"(build-id {facts.build_id} on disk, {actual.hex() or 'unreadable'} in memory).",
                hint="The file was replaced after the process started; restart it or clear "
                f"{cache_dir()}.",
            )


@dataclass(frozen=True)
class FunctionTable:
    """The functions an ELF file defines (``.symtab``, else ``.dynsym``), sorted by
    address: what native frames are named from (heapspy.target.native_symbols)."""

    elf_type: str
    first_load_vaddr: int
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    names: tuple[str, ...]
    examined: int = 0  # symbol entries read to build it (functions or not)

    def bias(self, base: int) -> int:
        """What to subtract from an address in the process to get one in the file, for
        an image whose offset-0 mapping starts at ``base``."""
        return 0 if self.elf_type == ET_EXEC else base - (self.first_load_vaddr & ~(PAGE - 1))

    def function_at(self, vaddr: int) -> str | None:
        i = bisect.bisect_right(self.starts, vaddr) - 1
        if i >= 0 and vaddr < self.ends[i]:
            return self.names[i]
        return None


MAX_SYMBOL_NAME = 256  # characters of a function name kept (C++ names run long)
_STT_FUNC, _STT_GNU_IFUNC = 2, 10


def read_functions(f: IO[bytes]) -> FunctionTable:
    """The function symbols of the (hostile, bounded) file ``f``; raises what pyelftools
    raises on a crafted file, and _TooLarge past the limits above. Each table and its
    strings are read in one piece and decoded here: pyelftools' per-symbol reads cost a
    buffer refill each (libpython's 16,000 symbols: over READ_BUDGET)."""
    elf = _open_elf(f)
    # the full table first: it names static functions
    tables = _symbol_tables(elf, (".symtab", ".dynsym"))
    loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
    first = min(int(s["p_vaddr"]) for s in loads) if loads else 0
    found: dict[int, tuple[int, str]] = {}
    examined = 0
    for table, strtab in tables:
        count = int(table["sh_size"]) // _SYM64.size
        data, strings = table.data(), strtab.data()
        examined += count
        for off in range(0, min(count * _SYM64.size, len(data) - _SYM64.size + 1), _SYM64.size):
            st_name, info, _, shndx, start, size = _SYM64.unpack_from(data, off)
            if info & 0xF not in (_STT_FUNC, _STT_GNU_IFUNC) or shndx == 0 or start == 0:
                continue
            if size <= 0 or start in found or st_name >= len(strings):
                continue
            end = strings.find(b"\0", st_name, st_name + MAX_SYMBOL_NAME)
            text = strings[st_name : end if end >= 0 else st_name + MAX_SYMBOL_NAME]
            found[start] = (start + size, text.decode("utf-8", "replace"))
    ordered = sorted(found.items())
    return FunctionTable(
        str(elf.header["e_type"]),
        first,
        tuple(start for start, _ in ordered),
        tuple(end for _, (end, _) in ordered),
        tuple(name for _, (_, name) in ordered),
        examined,
    )
