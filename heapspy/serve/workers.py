"""The workers an HTTP endpoint can serve: every live heapspy session of this user
(the daemon's, and any started by hand), reached through their control sockets."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from heapspy import control
from heapspy.errors import HeapspyError, NoSession
from heapspy.registry import read_holder, runtime_dir

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
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(4096)
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def list_workers() -> list[Worker]:
    """Targets with a session holder alive now."""
    found = []
    for lock in sorted(runtime_dir().glob("*.lock")):
        if not lock.stem.isdigit():
            continue
        pid = int(lock.stem)
        if read_holder(pid) is None:
            continue
        found.append(Worker(pid, _uid_of(pid), _command_of(pid)))
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
