"""A heap census: what the live objects of a target are, and which roots hold them.

The agent walks the target's objects (``heapspy_agent.census``: roots, order, sizes and
what it cannot see are documented there) and sends its results as CENSUS frames: per
retention path (root, a few containers, the object's type) the objects and bytes. This
module collects those frames (``CensusCollector``), turns the result into a pprof profile
with two sample types, ``objects`` and ``space`` (``census_profile``), and writes it as
``census-<pid>-<UTC time>.pb.gz`` with a ``.json`` sidecar (``write_census``). In the
profile a stack is the retention path, root first, so ``go tool pprof -top`` ranks types
(the leaves) by bytes and ``-top -cum`` ranks the roots that hold the most.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from heapspy_agent import protocol

from heapspy.channel import readable
from heapspy.config import AttachConfig
from heapspy.control import encode_reply
from heapspy.dumps import DumpWriter, census_name
from heapspy.errors import HeapspyError
from heapspy.model import Frame
from heapspy.pprof import encode_samples
from heapspy.units import format_bytes

log = logging.getLogger("heapspy")

CENSUS_SAMPLE_TYPES = (("objects", "count"), ("space", "bytes"))
CENSUS_DEFAULT = "space"
# What heapspy keeps of one census: a genuine agent sends at most ~5,000 paths plus one
# per type folded into [other]; beyond this the rest is dropped and counted.
MAX_SITES = 50_000
DEFAULT_SLICE = 0.01  # seconds of work per slice in the target
DEFAULT_PAUSE = 0.03  # seconds of rest between slices: at most 25 % of one core
CENSUS_FILENAME = ""  # frames are names (roots, containers, types), not code
WALKERS = {"native": "native", "python": "python"}  # the agent's walks, by name


@dataclass(frozen=True)
class CensusOptions:
    """How the agent paces the walk (``heapspy census --slice/--pause``)."""

    slice: float = DEFAULT_SLICE
    pause: float = DEFAULT_PAUSE


@dataclass(frozen=True)
class CensusProgress:
    objects: int
    bytes: int
    elapsed: float
    cpu: float
    longest_slice: float
    phase: str
    bookkeeping: int
    longest_slice_wall: float = 0.0
    walker: str = ""  # "native" (the shim's census_walk.c) or "python" (the fallback)

    @classmethod
    def of(cls, body: dict[str, Any]) -> CensusProgress:
        return cls(
            objects=int(body.get("objects", 0)),
            bytes=int(body.get("bytes", 0)),
            elapsed=float(body.get("elapsed", 0.0)),
            cpu=float(body.get("cpu", 0.0)),
            longest_slice=float(body.get("longest_slice", 0.0)),
            phase=str(body.get("phase", "")),
            bookkeeping=int(body.get("bookkeeping", 0)),
            longest_slice_wall=float(body.get("longest_slice_wall", 0.0)),
            walker=WALKERS.get(str(body.get("walker", "")), ""),
        )


@dataclass(frozen=True)
class CensusResult:
    """One finished (or stopped: ``partial``) census."""

    pid: int
    time_ns: int  # when it started
    progress: CensusProgress
    sites: tuple[tuple[tuple[str, ...], int, int], ...]  # (path, objects, bytes)
    partial: bool
    folded_paths: int = 0  # paths the agent folded into ([other], type)
    dropped_sites: int = 0  # paths beyond MAX_SITES heapspy did not keep
    notes: tuple[str, ...] = ()
    stopped_why: str = ""  # why a partial census stopped

    def by_root(self) -> list[tuple[str, int, int]]:
        return _totals(self.sites, 0)

    def by_type(self) -> list[tuple[str, int, int]]:
        return _totals(self.sites, -1)


def _totals(
    sites: tuple[tuple[tuple[str, ...], int, int], ...], index: int
) -> list[tuple[str, int, int]]:
    totals: dict[str, list[int]] = {}
    for path, objects, nbytes in sites:
        entry = totals.setdefault(path[index], [0, 0])
        entry[0] += objects
        entry[1] += nbytes
    return sorted(
        ((name, v[0], v[1]) for name, v in totals.items()), key=lambda row: (-row[2], row[0])
    )


@dataclass
class CensusCollector:
    """Gathers the CENSUS frames of one census (checked by ``heapspy_agent.schema``)."""

    pid: int
    started_ns: int = field(default_factory=time.time_ns)
    sites: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    dropped: int = 0
    last: CensusProgress | None = None
    result: CensusResult | None = None
    stopped_why: str = ""

    def progress(self, body: dict[str, Any]) -> CensusProgress:
        self.last = CensusProgress.of(body)
        return self.last

    def add(self, body: dict[str, Any]) -> CensusResult | None:
        """One CENSUS frame; the result once the last one came."""
        for path, objects, nbytes in body["sites"]:
            key = tuple(path)
            if not key:
                continue
            entry = self.sites.get(key)
            if entry is None:
                if len(self.sites) >= MAX_SITES:
                    self.dropped += 1
                    continue
                entry = self.sites[key] = [0, 0]
            entry[0] += max(0, objects)
            entry[1] += max(0, nbytes)
        if not body.get("done"):
            return None
        self.result = CensusResult(
            pid=self.pid,
            time_ns=self.started_ns,
            progress=self.progress(body),
            sites=tuple((path, v[0], v[1]) for path, v in self.sites.items()),
            partial=bool(body.get("partial")),
            folded_paths=int(body.get("folded_paths", 0)),
            dropped_sites=self.dropped,
            notes=tuple(str(n) for n in body.get("notes", ())),
            stopped_why=self.stopped_why,
        )
        return self.result


def census_profile(result: CensusResult) -> bytes:
    """The census as a gzipped pprof profile: stacks are retention paths."""
    frames: dict[str, Frame] = {}

    def frame(name: str) -> Frame:
        found = frames.get(name)
        if found is None:
            found = frames[name] = Frame(name, CENSUS_FILENAME, 0)
        return found

    samples = [
        (tuple(frame(name) for name in path), (objects, nbytes))
        for path, objects, nbytes in result.sites
        if objects or nbytes
    ]
    comments = [f"heapspy census of pid {result.pid}: objects and bytes by retention path"]
    if result.partial:
        comments.append(f"partial census: {result.stopped_why or 'stopped before its end'}")
    return encode_samples(
        CENSUS_SAMPLE_TYPES,
        CENSUS_DEFAULT,
        samples,
        time_ns=result.time_ns,
        duration_ns=int(result.progress.elapsed * 1e9),
        comments=tuple(comments),
    )


def census_sidecar(result: CensusResult, facts: dict[str, Any]) -> dict[str, Any]:
    """What the profile cannot hold: how the walk went, and the totals by root and type."""
    p = result.progress
    side = dict(facts)
    side.update(
        kind="census",
        pid=result.pid,
        partial=result.partial,
        stopped=result.stopped_why or None,
        objects=p.objects,
        bytes=p.bytes,
        elapsed=p.elapsed,
        cpu=p.cpu,
        longest_slice=p.longest_slice,
        longest_slice_wall=p.longest_slice_wall,
        bookkeeping_bytes=p.bookkeeping,
        walker=p.walker or None,
        folded_paths=result.folded_paths,
        dropped_sites=result.dropped_sites,
        notes=list(result.notes),
        roots=[list(row) for row in result.by_root()[:50]],
        types=[list(row) for row in result.by_type()[:50]],
        order=(
            "module globals (modules by name) and class attributes, then threads' frame "
            "locals, then what no root reached; the first root to reach an object owns it"
        ),
    )
    return side


def write_census(
    result: CensusResult, directory: Path, facts: dict[str, Any] | None = None
) -> Path:
    """Write the census and its sidecar into ``directory``; the dump's path."""
    data = census_profile(result)
    name = census_name(result.pid, result.time_ns / 1e9)
    return DumpWriter(directory).write_file(data, name, census_sidecar(result, facts or {}))


ProgressSink = Callable[[CensusProgress], None]


# --- running one: through a session, for its own caller or a control client --------
class CensusHost(Protocol):
    """What a census needs of the session holding the target. A protocol, not
    ``heapspy.session.Session``: the session takes censuses through this module, and
    the two do not import each other."""

    @property
    def config(self) -> AttachConfig: ...

    def target_facts(self) -> dict[str, Any]:
        """What the sidecar says of the target (as a heap dump's sidecar does)."""
        ...

    def census(
        self,
        options: CensusOptions,
        on_progress: ProgressSink | None = None,
        should_stop: Callable[[], str] | None = None,
    ) -> CensusResult: ...

    def census_at_attach(
        self, on_progress: ProgressSink | None, should_stop: Callable[[], str] | None
    ) -> dict[str, Any] | None: ...


def take_census(
    session: CensusHost,
    options: CensusOptions,
    directory: Path,
    on_progress: ProgressSink | None = None,
    should_stop: Callable[[], str] | None = None,
) -> tuple[CensusResult, Path]:
    """Run a census through ``session`` and write it into ``directory``."""
    result = session.census(options, on_progress, should_stop)
    return result, write_census(result, directory, session.target_facts())


def record_census(session: CensusHost, result: CensusResult) -> dict[str, Any] | None:
    """Write the census a session took at attach, say so; its summary (None if it could
    not be written: the session goes on)."""
    try:
        path = write_census(result, session.config.dump_dir, session.target_facts())
    except HeapspyError as exc:
        log.error("%s", exc)
        return None
    p = result.progress
    log.info(
        "census of the heap at attach%s: %s in %s objects (%.1f s): %s",
        " (partial)" if result.partial else "",
        format_bytes(p.bytes),
        f"{p.objects:,}",
        p.elapsed,
        path,
    )
    return summary(result, path)


def census_note(found: dict[str, Any], since: int) -> str:
    """One line on the heap before the attach (a census summary) beside the samples'
    live heap since: a dump's comment and ``heapspy status``."""
    if found.get("running"):
        return (
            f"census of the heap at attach under way: {found.get('objects', 0):,} objects, "
            f"{format_bytes(int(found.get('bytes', 0)))} so far; live heap allocated since "
            f"attach (samples): {format_bytes(since)}"
        )
    if found.get("skipped"):
        return (
            f"heap at attach not counted ({found['skipped']}): the live heap, "
            f"{format_bytes(since)}, is only what was allocated since attach (samples); "
            "`heapspy census PID` counts what the process holds"
        )
    partial = " (partial)" if found.get("partial") else ""
    return (
        f"heap at attach (census{partial}): {format_bytes(int(found.get('bytes', 0)))} in "
        f"{found.get('objects', 0):,} objects, {found.get('path')}; live heap allocated "
        f"since attach (samples): {format_bytes(since)}"
    )


def summary(result: CensusResult, path: Path | None = None) -> dict[str, Any]:
    """The census in brief, as the control socket and the CLI pass it on."""
    p = result.progress
    return {
        "path": str(path) if path is not None else None,
        "partial": result.partial,
        "stopped": result.stopped_why,
        "objects": p.objects,
        "bytes": p.bytes,
        "elapsed": p.elapsed,
        "cpu": p.cpu,
        "longest_slice": p.longest_slice,
        "longest_slice_wall": p.longest_slice_wall,
        "bookkeeping": p.bookkeeping,
        "walker": p.walker,
        "roots": [list(r) for r in result.by_root()[:10]],
        "types": [list(r) for r in result.by_type()[:10]],
    }


def serve_client(session: CensusHost, sock: socket.socket, body: dict[str, Any]) -> None:
    """A `heapspy census` asked the session holding the target (control socket): run
    it, sending the client progress frames, then the summary (``done``). The client
    asks for a partial census by sending ``stop`` or hanging up."""
    reader = protocol.FrameReader()

    def send(reply: dict[str, Any]) -> None:
        sock.settimeout(10.0)  # a client that stops reading cannot hold the session
        try:
            sock.sendall(encode_reply(reply))
        except OSError:
            pass

    def client_says() -> str:
        if not readable([sock], 0):
            return ""
        try:
            sock.settimeout(0.5)
            data = sock.recv(4096)
            frames = reader.feed(data) if data else []
        except (OSError, protocol.ProtocolError):
            return "the client went away"
        if not data:
            return "the client went away"
        if any(frame.get("cmd") == "stop" for _, frame in frames):
            return "stopped by the client (Ctrl-C)"
        return ""

    options = CensusOptions(
        slice=_bounded(body.get("slice"), DEFAULT_SLICE, 0.001, 1.0),
        pause=_bounded(body.get("pause"), DEFAULT_PAUSE, 0.0, 10.0),
    )
    def progress(p: CensusProgress) -> None:
        send({"ok": True, "progress": asdict(p)})

    try:
        # the census at attach, if it is still under way, is the one to wait for
        found = session.census_at_attach(progress, client_says)
        if found is None:
            result, path = take_census(
                session, options, session.config.dump_dir, progress, client_says
            )
            found = summary(result, path)
    except HeapspyError as exc:
        send({"ok": False, "error": exc.message})
        return
    send({"ok": True, "done": True, "census": found})


def _bounded(value: Any, default: float, lo: float, hi: float) -> float:
    if type(value) not in (int, float):
        return default
    return min(max(float(value), lo), hi)
