"""One ``heapspy attach`` child process per target, and the command line it is given.

A process per target, not a thread: ptrace belongs to the thread that attached, signal
handling and crashes stay with one target, and each child holds the target's registry
lock, so ``heapspy dump PID``, ``heapspy rate PID`` and ``heapspy detach PID`` reach a
daemon-managed session exactly as they reach a hand-started one.

Children die with the daemon: ``PR_SET_PDEATHSIG`` sends each one SIGTERM if the daemon
is killed, and a child detaches cleanly on SIGTERM (final dump included).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

from heapspy.config import AttachConfig
from heapspy.daemon.sdnotify import PRIVATE_ENV

PR_SET_PDEATHSIG = 1
_MAX_LINE = 64 * 1024
_ATTACHED = re.compile(r"^attached to (\d+) ")
_DETACHED = re.compile(r"^detached from (\d+) \((.*)\); live heap ")


def size_text(n: int) -> str:
    """Bytes as the command line reads them back exactly: ``512KiB``, ``3MiB``, ``1000``."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def duration_text(seconds: float) -> str:
    """Seconds as the command line reads them back: ``10m``, ``2s``, ``250ms``, ``0.0005``."""
    ms = seconds * 1000
    if ms != int(ms):
        return f"{seconds:.6f}"
    ms = int(ms)
    for unit, factor in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % factor == 0:
            return f"{ms // factor}{unit}"
    return f"{ms}ms"


def attach_argv(pid: int, config: AttachConfig, python: str | None = None) -> list[str]:
    """The ``heapspy attach`` command that profiles ``pid`` as ``config`` says."""
    argv = [
        python or sys.executable, "-m", "heapspy", "attach", str(pid),
        "--rate", size_text(config.rate),
        "--frames", str(config.frames),
        "--interval", duration_text(config.interval),
        "--attach-timeout", duration_text(config.attach_timeout),
        "--method", config.method,
        "--dump-dir", str(config.dump_dir),
        "--final-dump" if config.final_dump else "--no-final-dump",
        "--nudge" if config.nudge else "--no-nudge",
    ]  # fmt: skip
    for rule in config.dump_on:
        argv += ["--dump-on", rule.text]
    if config.keep is not None:
        argv += ["--keep", str(config.keep)]
    if config.max_bytes is not None:
        argv += ["--max-bytes", size_text(config.max_bytes)]
    if config.require_sampling:
        argv.append("--require-sampling")
    return argv


def _die_with_parent() -> Callable[[], None]:
    """A pre-exec step asking the kernel for SIGTERM when the daemon dies."""
    parent = os.getpid()
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.restype = ctypes.c_int
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                          ctypes.c_ulong]  # fmt: skip
    except (OSError, AttributeError):
        prctl = None

    def setup() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the daemon died before the request was made
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


def child_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if environ is None else environ)
    for name in PRIVATE_ENV:
        env.pop(name, None)
    return env


class AttachChild:
    """A running ``heapspy attach``; its stderr is read line by line, without blocking."""

    def __init__(self, argv: list[str], env: Mapping[str, str]) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # the end-of-session table: the final dump has it
            stderr=subprocess.PIPE,
            env=dict(env),
            preexec_fn=_die_with_parent(),  # safe: the daemon runs no other threads
            close_fds=True,
        )
        assert self.proc.stderr is not None
        self._stderr = self.proc.stderr
        os.set_blocking(self._stderr.fileno(), False)
        self._partial = b""
        self.eof = False
        self.started = time.monotonic()
        self.attached_at: float | None = None  # when it said "attached to"
        self.end_reason: str | None = None  # from its "detached from PID (reason)" line
        self.stop_reason: str | None = None  # why the daemon asked it to stop
        self.early: list[str] = []  # what it said before attaching (the error, if any)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fileno(self) -> int:
        return self._stderr.fileno()

    def read_lines(self) -> list[str]:
        """What it said since the last call that is worth logging now, without the
        ``heapspy: `` prefix. Until it has attached its lines are held in ``early``: a
        failure is then logged once, by the daemon, with its verdict."""
        if self.eof:
            return []
        while True:
            try:
                data = os.read(self._stderr.fileno(), 65536)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self.eof = True
                break
            self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        if len(self._partial) > _MAX_LINE or (self.eof and self._partial):
            complete.append(self._partial)
            self._partial = b""
        if self.eof:
            self._stderr.close()
        out: list[str] = []
        for raw in complete:
            out += self._note(raw.decode(errors="replace").rstrip("\r"))
        return out

    def _note(self, line: str) -> list[str]:
        text = line[len("heapspy: ") :] if line.startswith("heapspy: ") else line
        if self.attached_at is None:
            if not _ATTACHED.match(text):
                self.early = [*self.early[-99:], text]
                return []
            self.attached_at = time.monotonic()
            held, self.early = self.early, []
            return [*held, text]
        if m := _DETACHED.match(text):
            self.end_reason = m[2]
        return [text]

    def poll(self) -> int | None:
        return self.proc.poll()

    def finish(self) -> list[str]:
        """After exit: whatever it still had to say. Closes the pipe."""
        lines = self.read_lines()
        if not self.eof:  # a grandchild still holds the pipe: do not wait for it
            self.eof = True
            self._stderr.close()
        return lines

    def stop(self, reason: str) -> None:
        """Ask it to detach (SIGTERM): it writes its final dump and exits."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
