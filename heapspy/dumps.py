"""Writing heap dump files: atomic, named to sort by time, with retention.

Each dump is ``heap-<pid>-<UTC time>-<rule>.pb.gz`` (gzipped pprof) plus a ``.json``
sidecar with what pprof cannot hold (exact totals, size classes, RSS series, the rule).
A file is written to a temporary name, fsynced and renamed, so a reader never sees a
partial dump; on a full disk or an unwritable directory the error is reported and the
temporary file removed, and the session goes on.

Reading one back is ``heapspy.dump_files`` (bounded: a dump may come from anywhere).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heapspy.errors import DumpError
from heapspy.model import HeapProfile
from heapspy.pprof import encode_profile

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
