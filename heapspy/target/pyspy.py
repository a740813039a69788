"""Ask py-spy what a target's threads are doing, to explain a slow agent start.

``py-spy dump --nonblocking`` reads the target's memory without stopping it (no ptrace),
so it can run beside our own injection; it costs ~30 ms and is only consulted when the
agent is slow to start, or to name the threads a request may be aimed at.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ThreadState:
    tid: int
    name: str | None
    active: bool
    owns_gil: bool
    where: str  # innermost Python frame, "function (file:line)"

    def describe(self) -> str:
        state = "running Python" if self.active else "idle"
        label = f"thread {self.tid}" + (f" ({self.name})" if self.name else "")
        return f"{label} is {state} in {self.where}"


def _binary() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def thread_states(pid: int, timeout: float = 5.0) -> list[ThreadState] | None:
    exe = _binary()
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "dump", "--pid", str(pid), "--json", "--nonblocking"],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        data = json.loads(out.stdout or b"[]")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    states = []
    for t in data:
        frames = t.get("frames") or []
        if frames:
            top = frames[0]
            where = f"{top.get('name')} ({top.get('short_filename')}:{top.get('line')})"
        else:
            where = "no Python frame"
        states.append(
            ThreadState(
                int(t.get("os_thread_id") or 0),
                t.get("thread_name"),
                bool(t.get("active")),
                bool(t.get("owns_gil")),
                where,
            )
        )
    return states


class BackgroundDump:
    """Run ``thread_states`` in a thread so that attaching never waits for it."""

    def __init__(self, pid: int) -> None:
        self.result: list[ThreadState] | None = None
        self._thread = threading.Thread(target=self._run, args=(pid,), daemon=True)
        self._thread.start()

    def _run(self, pid: int) -> None:
        self.result = thread_states(pid)

    def get(self, timeout: float = 2.0) -> list[ThreadState] | None:
        self._thread.join(timeout)
        return self.result
