"""Writing heap dump files: atomic, named to sort by time, with retention.

Each dump is ``heap-<pid>-<UTC time>-<rule>.pb.gz`` (gzipped pprof) plus a ``.json``
sidecar with what pprof cannot hold (exact totals, size classes, RSS series, the rule).
A file is written to a temporary name, fsynced and renamed, so a reader never sees a
partial dump; on a full disk or an unwritable directory the error is reported and the
temporary file removed, and the session goes on.

Reading one back (report, diff, flame graph) goes through :func:`read_dump_file`: a dump
may come from anywhere, so only a regular file of at most :data:`MAX_DUMP_FILE` bytes is
read (a FIFO or ``/dev/zero`` given by mistake or malice is refused, never read), and
:func:`gunzip_capped` stops a gzip bomb at :data:`MAX_PROFILE` bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heapspy.errors import DumpError
from heapspy.model import HeapProfile

# What a reader accepts. heapspy's own dumps are a few MB at most (100,000 stacks of 64
# frames: ~13 MB of protobuf); parsing protobuf costs up to ~25 bytes of memory per byte
# (upb, millions of empty messages), so 64 MiB keeps a crafted dump under ~1.6 GB.
MAX_DUMP_FILE = 64 << 20  # bytes on disk: a dump (compressed) or a sidecar
MAX_PROFILE = 64 << 20  # bytes of protobuf once decompressed

_RULE_SAFE = re.compile(r"[^A-Za-z0-9._+=-]+")
PATTERN = re.compile(r"^heap-(\d+)-(\d{8}T\d{6}\.\d{3}Z)-(.+)\.pb\.gz$")


@dataclass(frozen=True)
class Retention:
    keep: int | None = None  # at most this many dumps per directory
    max_bytes: int | None = None  # at most this many bytes of dumps (+ sidecars)


def dump_name(pid: int, rule: str, when: float | None = None) -> str:
    when = time.time() if when is None else when
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z"
    safe = _RULE_SAFE.sub("_", rule).strip("_")[:60] or "dump"
    return f"heap-{pid}-{stamp}-{safe}.pb.gz"


def census_name(pid: int, when: float) -> str:
    """``census-<pid>-<UTC time>.pb.gz``: a heap census (``heapspy.census``)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z"
    return f"census-{pid}-{stamp}.pb.gz"


def sidecar_path(dump: Path) -> Path:
    """The sidecar next to ``dump``: ``x.pb.gz`` → ``x.json`` (any other name: ``.json``)."""
    name = dump.name
    if name.endswith(".pb.gz"):
        return dump.with_name(name[: -len(".pb.gz")] + ".json")
    return dump.with_suffix(".json")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DumpWriter:
    def __init__(self, directory: Path, retention: Retention | None = None) -> None:
        self.directory = Path(directory)
        self.retention = retention or Retention()

    def write(self, profile: HeapProfile, pid: int, rule: str, sidecar: dict[str, Any]) -> Path:
        from heapspy.pprof import encode_profile

        data = encode_profile(profile)
        side = dict(sidecar)
        side.update(rule=rule, pid=pid)
        path = self.write_file(data, dump_name(pid, rule, profile.time_ns / 1e9), side)
        self.prune()
        return path

    def write_file(self, data: bytes, name: str, sidecar: dict[str, Any]) -> Path:
        """Write an encoded profile as ``name`` with its sidecar (no retention)."""
        path = self.directory / name
        side = dict(sidecar)
        side.update(dump=path.name)
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            # sidecar first: a dump that exists always has its sidecar
            _atomic_write(sidecar_path(path), json.dumps(side, indent=1).encode())
            _atomic_write(path, data)
            _fsync_dir(self.directory)
        except OSError as exc:
            try:
                sidecar_path(path).unlink()
            except OSError:
                pass
            raise DumpError(
                f"Could not write a heap dump to {self.directory}: {exc.strerror}."
            ) from None
        return path

    def dumps(self) -> list[Path]:
        try:
            found = [p for p in self.directory.iterdir() if PATTERN.match(p.name)]
        except OSError:
            return []
        return sorted(found, key=lambda p: (PATTERN.match(p.name)[2], p.name))  # type: ignore[index]

    def prune(self) -> list[Path]:
        """Delete the oldest dumps beyond ``keep`` or ``max_bytes``; return what went."""
        dumps = self.dumps()
        removed: list[Path] = []

        def size(p: Path) -> int:
            total = 0
            for f in (p, sidecar_path(p)):
                with contextlib.suppress(OSError):
                    total += f.stat().st_size
            return total

        sizes = {p: size(p) for p in dumps}
        total = sum(sizes.values())
        keep, cap = self.retention.keep, self.retention.max_bytes
        while dumps and (
            (keep is not None and len(dumps) > keep)
            or (cap is not None and total > cap and len(dumps) > 1)
        ):
            oldest = dumps.pop(0)
            total -= sizes[oldest]
            for f in (oldest, sidecar_path(oldest)):
                with contextlib.suppress(OSError):
                    f.unlink()
            removed.append(oldest)
        return removed


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_dump_file(path: Path, what: str = "dump") -> bytes:
    """The bytes of the regular file ``path`` (at most :data:`MAX_DUMP_FILE`).

    ``what`` names it in errors ("dump", "sidecar"). Raises FileNotFoundError when it
    does not exist (a missing sidecar is normal) and DumpError for anything else. The
    file is looked at through an ``O_PATH`` fd first, so a FIFO or a device is never
    opened, let alone read.
    """
    path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)  # FileNotFoundError goes up
    try:
        st = os.fstat(path_fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a file")
            raise DumpError(f"The {what} {path} is {kind}, not a regular file.")
        if st.st_size > MAX_DUMP_FILE:
            raise DumpError(
                f"The {what} {path} is {st.st_size >> 20} MiB; heapspy reads files of at "
                f"most {MAX_DUMP_FILE >> 20} MiB."
            )
        fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise DumpError(f"Cannot read the {what} {path}: {exc.strerror or exc}.") from exc
    finally:
        os.close(path_fd)
    try:
        chunks = []
        total = 0
        while chunk := os.read(fd, min(1 << 20, MAX_DUMP_FILE + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_DUMP_FILE:
                raise DumpError(
                    f"The {what} {path} grew beyond {MAX_DUMP_FILE >> 20} MiB while read."
                )
        return b"".join(chunks)
    except OSError as exc:
        raise DumpError(f"Cannot read the {what} {path}: {exc.strerror or exc}.") from exc
    finally:
        os.close(fd)


class TooLarge(ValueError):
    """Decompressed data beyond the cap."""


def gunzip_capped(data: bytes, cap: int = MAX_PROFILE) -> bytes:
    """``gzip.decompress`` (every member) that stops at ``cap`` output bytes: raises
    TooLarge beyond it, zlib.error or EOFError for a damaged or truncated stream."""
    out: list[bytes] = []
    total = 0
    rest = data
    while rest:
        if not rest.startswith(b"\x1f\x8b"):
            raise zlib.error("trailing data after the last gzip member")
        member = zlib.decompressobj(wbits=31)
        pending = rest
        while not member.eof:
            # 1 MiB at a time (never 0, which means unlimited): zlib grows one buffer
            # for a larger request, copying it as it goes
            limit = min(1 << 20, cap + 1 - total)
            chunk = member.decompress(pending, limit)
            out.append(chunk)
            total += len(chunk)
            if total > cap:
                raise TooLarge(f"it decompresses to more than {cap >> 20} MiB")
            pending = member.unconsumed_tail
            if not pending and len(chunk) < limit:
                break  # all input used and nothing held back: the stream is cut short
        if not member.eof:
            raise EOFError("the gzip stream ends before its end-of-stream marker")
        rest = member.unused_data
    return b"".join(out)
