"""Ask py-spy what a target's threads are doing: to explain a slow agent start, and
for a thread rule's dump when the agent cannot answer (another thread holds the GIL).

``py-spy dump --nonblocking`` reads the target's memory without stopping it (no ptrace),
so it can run beside our own injection; it costs ~30 ms and is only consulted when the
agent is slow to start or silent, or to name the threads a request may be aimed at.
What it prints comes from the target's memory: its size is capped and each field is
checked before use.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heapspy_agent import schema

from heapspy.model import Frame, Stack

MAX_OUTPUT = 16 * 1024 * 1024  # bytes of py-spy's JSON read at most
MAX_THREADS = 10_000


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


def _dump(pid: int, timeout: float) -> list[Any] | None:
    """``py-spy dump --json``'s list of threads, or None (no py-spy, it failed, it took
    too long or printed too much)."""
    exe = _binary()
    if exe is None:
        return None
    argv = [exe, "dump", "--pid", str(pid), "--json", "--nonblocking"]
    try:
        out = _bounded_output(argv, timeout)
        data = json.loads(out or b"[]") if out is not None else None
    except (OSError, subprocess.SubprocessError, ValueError, RecursionError):
        return None
    return data[:MAX_THREADS] if isinstance(data, list) else None


def _bounded_output(argv: list[str], timeout: float) -> bytes | None:
    """What the command prints, read as it comes; None past MAX_OUTPUT or ``timeout``
    (the command is killed then)."""
    deadline = time.monotonic() + timeout
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    ) as proc:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        chunks: list[bytes] = []
        size = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or size > MAX_OUTPUT:
                proc.kill()
                return None
            if not select.select([fd], [], [], left)[0]:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            return None
    return b"".join(chunks)


def _text(value: object, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    return value[:limit]


def thread_states(pid: int, timeout: float = 5.0) -> list[ThreadState] | None:
    data = _dump(pid, timeout)
    if data is None:
        return None
    states = []
    for t in data:
        if not isinstance(t, dict):
            continue
        frames = t.get("frames") or []
        if frames and isinstance(frames, list) and isinstance(frames[0], dict):
            top = frames[0]
            where = f"{top.get('name')} ({top.get('short_filename')}:{top.get('line')})"
        else:
            where = "no Python frame"
        tid = t.get("os_thread_id")
        states.append(
            ThreadState(
                tid if isinstance(tid, int) else 0,
                _text(t.get("thread_name"), schema.MAX_STACK_NAME),
                bool(t.get("active")),
                bool(t.get("owns_gil")),
                where,
            )
        )
    return states


def _stack(frames: object, depth: int) -> Stack:
    """py-spy's frames (innermost first) as a stack, root first, its innermost
    ``depth`` frames; a frame with a field of the wrong type ends it."""
    out: list[Frame] = []
    for f in frames[:depth] if isinstance(frames, list) else ():
        if not isinstance(f, dict):
            break
        name = _text(f.get("name"), schema.MAX_FUNCTION)
        filename = _text(f.get("filename"), schema.MAX_TEXT)
        line = f.get("line")
        if name is None or filename is None or not isinstance(line, int):
            break
        out.append(Frame(name, filename, max(0, line)))
    return tuple(reversed(out))


def thread_stacks(
    pid: int, depth: int = schema.DEFAULT_STACK_DEPTH, timeout: float = 10.0
) -> list[tuple[str, Stack]] | None:
    """Every Python thread's (name, stack), as py-spy reads them from outside; None
    when py-spy cannot."""
    data = _dump(pid, timeout)
    if data is None:
        return None
    found = []
    for t in data:
        if isinstance(t, dict):
            name = _text(t.get("thread_name"), schema.MAX_STACK_NAME) or ""
            found.append((name, _stack(t.get("frames"), depth)))
    return found


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
