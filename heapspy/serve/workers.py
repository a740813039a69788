"""The workers an HTTP endpoint can serve: every live heapspy session of this user
(the daemon's, and any started by hand), reached through their control sockets."""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heapspy import control
from heapspy.dump_files import read_dump_file
from heapspy.errors import HeapspyError, NoSession
from heapspy.registry import read_holder, runtime_dir
from heapspy.target.privilege import uids

# A profile of 10,000 stacks is ~1 MB; its control reply is base64 in one frame.
REQUEST_TIMEOUT = 10.0


class WorkerGone(Exception):
    """The session ended, or does not answer."""


@dataclass(frozen=True)
class Worker:
    pid: int
    uid: int | None  # the worker's real uid: who else may read its profile
    command: str  # the worker's command line (as the kernel shows it; for people)


def _uid_of(pid: int) -> int | None:
    ids = uids(pid)
    return None if ids is None else ids[0]


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(4096)
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def find_worker(pid: int) -> Worker | None:
    """The target ``pid`` if a session holds it now: what a request naming one worker
    needs, without looking at every other (a scrape of 50 workers asks 50 times)."""
    if read_holder(pid) is None:
        return None
    return Worker(pid, _uid_of(pid), _command_of(pid))


def list_workers(skip: frozenset[int] = frozenset()) -> list[Worker]:
    """Targets with a session holder alive now (but those in ``skip``)."""
    found = []
    for lock in sorted(runtime_dir().glob("*.lock")):
        if not lock.stem.isdigit() or int(lock.stem) in skip:
            continue
        worker = find_worker(int(lock.stem))
        if worker is not None:
            found.append(worker)
    return found


def ask(pid: int, cmd: str, timeout: float = REQUEST_TIMEOUT, **args: Any) -> dict[str, Any]:
    try:
        reply = control.request(pid, cmd, timeout=timeout, **args)
    except (NoSession, OSError, HeapspyError) as exc:
        raise WorkerGone(str(exc)) from None
    if not reply.get("ok"):
        raise WorkerGone(str(reply.get("error") or "the session refused"))
    return reply


def metrics(pid: int) -> dict[str, Any]:
    return dict(ask(pid, "metrics", timeout=3.0).get("metrics") or {})


def profile(pid: int, gc: bool = False) -> bytes:
    reply = ask(pid, "profile", timeout=40.0 if gc else REQUEST_TIMEOUT, gc=gc)
    return base64.b64decode(str(reply.get("profile", "")))


# A census walks every object of the worker (seconds of its CPU on a big heap): one a
# minute at most per worker, whatever scrapes; within that, the last one is served again.
CENSUS_EVERY = 60.0
_censuses: dict[int, tuple[float, Path]] = {}
_census_lock = threading.Lock()


def census(pid: int, now: float | None = None) -> bytes:
    """A census of the worker (``heapspy.census``): the session takes it and writes it
    into its dump directory; the file is read back, bounded, as any dump."""
    now = time.monotonic() if now is None else now
    with _census_lock:  # two scrapes at once wait for one census, not two
        last = _censuses.get(pid)
        if last is None or now - last[0] >= CENSUS_EVERY or not last[1].exists():

            def more(body: dict[str, Any]) -> bool:
                return bool(body.get("ok")) and not body.get("done")

            try:
                reply = control.stream(pid, "census", more, timeout=120.0)
            except (NoSession, OSError, HeapspyError) as exc:
                raise WorkerGone(str(exc)) from None
            found = reply.get("census") if reply.get("ok") else None
            if not isinstance(found, dict) or not found.get("path"):
                raise WorkerGone(str(reply.get("error") or "no census was written"))
            last = _censuses[pid] = (now, Path(str(found["path"])))
    try:
        return read_dump_file(last[1], "census")
    except HeapspyError as exc:
        raise WorkerGone(exc.message) from None
    except OSError as exc:  # removed meanwhile (retention)
        _censuses.pop(pid, None)
        raise WorkerGone(f"the census file went away: {exc.strerror}") from None
