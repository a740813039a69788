"""What the benchmark controllers share: logging, interpreter choice, a line-driven
target process, and streaming a session while checking it stays attached."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from interpreters import Interpreter, find_interpreters  # noqa: E402

from heapspy.session import Session  # noqa: E402


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def pick_interpreters(wanted: list[str]) -> list[Interpreter]:
    found = find_interpreters()
    picked = []
    for want in wanted:
        matches = [i for i in found if want in (i.label, i.version_text)]
        matches.sort(key=lambda i: (i.static, i.label))  # pyenv's shared build first
        if not matches:
            log(f"interpreter {want}: not found here (have {', '.join(map(str, found))})")
            continue
        picked.append(matches[0])
    return picked


class Target:
    """A target process, with its stdout read line by line in a thread."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.stderr: IO[str] = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def line(self, prefix: str, timeout: float, session: Session | None = None) -> str | None:
        """The next line starting with prefix (streaming the session meanwhile, if one is
        given), or None (timeout, or the target exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if session is not None:
                stream(session, self)
            try:
                text = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    return None
                continue
            if text.startswith(prefix):
                return text
        return None

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def failure(self, what: str) -> RuntimeError:
        self.stderr.seek(0)
        return RuntimeError(f"{what}; target stderr:\n{self.stderr.read()[-2000:]}")

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def stream(session: Session, target: Target, seconds: float = 1.0) -> None:
    """Let the session stream for a while; raise if it ended."""
    t0 = time.monotonic()
    session.run(duration=seconds)
    if time.monotonic() - t0 < seconds * 0.9 or target.proc.poll() is not None:
        code = target.proc.poll()
        why = session.end_reason if code is None else f"the target exited with {code}"
        raise target.failure(f"the session ended early: {why}")
