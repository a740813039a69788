"""One forked child per target, running the same session as ``heapspy attach``.

A process per target, not a thread: ptrace belongs to the thread that attached, signal
handling and crashes stay with one target, and each child holds the target's registry
lock, so ``heapspy dump PID``, ``heapspy rate PID`` and ``heapspy detach PID`` reach a
daemon-managed session exactly as they reach a hand-started one.

Forked, not exec'd: a fresh ``python -m heapspy attach`` costs 25-32 MiB of private
memory (the interpreter, typer, rich, pydantic, protobuf, psutil, pyelftools, all
imported again), a child forked from the daemon, which has imported all of it already,
~9 MiB (benchmarks/daemon_memory.py): the rest stays shared with the daemon. The daemon
runs no other thread, so forking is safe; the child resets the daemon's signal handlers,
closes every descriptor it does not need, freezes the inherited objects out of its
garbage collector (so that collections do not write to, and unshare, the daemon's pages)
and never returns into the daemon's code: it ends with ``os._exit``. Its process name
(``comm``) is ``heapspy:PID``.

Children die with the daemon: ``PR_SET_PDEATHSIG`` sends each one SIGTERM if the daemon
is killed, and a child detaches cleanly on SIGTERM (final dump included).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import re
import signal
import sys
import time
import traceback
from typing import Callable, NoReturn

from heapspy.config import AttachConfig
from heapspy.daemon.sdnotify import PRIVATE_ENV
from heapspy.errors import HeapspyError
from heapspy.foreground import run_foreground
from heapspy.units import size_text

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
_MAX_LINE = 64 * 1024
_ATTACHED = re.compile(r"^attached to (\d+) ")
_DETACHED = re.compile(r"^detached from (\d+) \((.*)\); live heap ")


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


def _libc_prctl() -> Callable[..., int] | None:
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]  # fmt: skip
    return prctl


_prctl = _libc_prctl()


def _become_child(parent: int, target: int, stderr_fd: int) -> None:
    """Turn a freshly forked copy of the daemon into a session process."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_DFL)
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        name = ctypes.create_string_buffer(f"heapspy:{target}".encode()[:15])
        _prctl(PR_SET_NAME, ctypes.addressof(name), 0, 0, 0)
    if os.getppid() != parent:  # the daemon died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # the end-of-session table: the final dump has it
    os.dup2(stderr_fd, 2)
    os.closerange(3, _max_fd())  # the daemon's pipes and sockets; their objects stay unused
    for name_ in PRIVATE_ENV:  # the children do not speak to systemd in the daemon's name
        os.environ.pop(name_, None)
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("heapspy: %(message)s"))
    root.addHandler(handler)
    gc.freeze()


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (OSError, ValueError):
        return 65536


def _child_main(parent: int, target: int, config: AttachConfig, stderr_fd: int) -> NoReturn:
    code = 1
    try:
        _become_child(parent, target, stderr_fd)
        run_foreground(target, config)
        code = 0
    except HeapspyError as exc:
        print(f"heapspy: {exc}", file=sys.stderr)
        code = exc.exit_code
    except BaseException:  # noqa: BLE001 - a child must never return into the daemon
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):  # exiting anyway
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class AttachChild:
    """A forked session for one target; its stderr is read line by line, without
    blocking."""

    def __init__(self, target: int, config: AttachConfig) -> None:
        self.target = target
        self.config = config
        rfd, wfd = os.pipe()
        parent = os.getpid()
        for stream in (sys.stdout, sys.stderr):  # nothing buffered may be written twice
            stream.flush()
        try:
            pid = os.fork()
        except OSError:
            os.close(rfd)
            os.close(wfd)
            raise
        if pid == 0:
            _child_main(parent, target, config, wfd)
        os.close(wfd)
        self._pid = pid
        self.returncode: int | None = None
        self._fd = rfd
        os.set_blocking(rfd, False)
        self._partial = b""
        self.eof = False
        self.started = time.monotonic()
        self.attached_at: float | None = None  # when it said "attached to"
        self.end_reason: str | None = None  # from its "detached from PID (reason)" line
        self.stop_reason: str | None = None  # why the daemon asked it to stop
        self.early: list[str] = []  # what it said before attaching (the error, if any)

    @property
    def pid(self) -> int:
        return self._pid

    def fileno(self) -> int:
        return self._fd

    def read_lines(self) -> list[str]:
        """What it said since the last call that is worth logging now, without the
        ``heapspy: `` prefix. Until it has attached its lines are held in ``early``: a
        failure is then logged once, by the daemon, with its verdict."""
        if self.eof:
            return []
        while True:
            try:
                data = os.read(self._fd, 65536)
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
            os.close(self._fd)
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
        """Its exit status once it has ended (negative: killed by that signal), else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self._pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -signal.SIGKILL  # reaped elsewhere: treat as lost
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        """``poll`` until it ends or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return code

    def finish(self) -> list[str]:
        """After exit: whatever it still had to say. Closes the pipe."""
        lines = self.read_lines()
        if not self.eof:  # a grandchild still holds the pipe: do not wait for it
            self.eof = True
            os.close(self._fd)
        return lines

    def stop(self, reason: str) -> None:
        """Ask it to detach (SIGTERM): it writes its final dump and exits."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self._pid, sig)
            except ProcessLookupError:
                pass
