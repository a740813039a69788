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

The daemon learns how a session went from the child's exit status and from JSON events
the child writes on a pipe of its own (fd 3 in the child): "attached", then "ended" with
whether `heapspy detach` ended it. Its stderr is only logged, never parsed: it carries
text from the target (function names, the agent's reasons), and a line forged there must
not change what the daemon does.

Children die with the daemon: ``PR_SET_PDEATHSIG`` sends each one SIGTERM if the daemon
is killed, and a child detaches cleanly on SIGTERM (final dump included).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import signal
import sys
import time
import traceback
from typing import Callable, NoReturn

from heapspy.config import AttachConfig
from heapspy.daemon import hints
from heapspy.daemon.sdnotify import PRIVATE_ENV
from heapspy.errors import HeapspyError
from heapspy.foreground import run_foreground
from heapspy.printable import PrintableFormatter, printable
from heapspy.units import size_text

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
_MAX_LINE = 64 * 1024
EVENTS_FD = 3  # in the child: where it writes its events


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
        "--census" if config.census else "--no-census",
        "--native" if config.native else "--no-native",
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


def _become_child(parent: int, target: int, stderr_fd: int, events_fd: int) -> None:
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
    os.dup2(events_fd, EVENTS_FD, inheritable=False)
    os.closerange(EVENTS_FD + 1, _max_fd())  # the daemon's pipes and sockets, unused
    for name_ in PRIVATE_ENV:  # the children do not speak to systemd in the daemon's name
        os.environ.pop(name_, None)
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter("heapspy: %(message)s"))
    root.addHandler(handler)
    gc.freeze()


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (OSError, ValueError):
        return 65536


def _send_event(event: str, data: dict[str, object]) -> None:
    line = json.dumps({"event": event, **data}) + "\n"
    with contextlib.suppress(OSError):  # the daemon is gone: PDEATHSIG follows
        os.write(EVENTS_FD, line.encode())


def _child_main(
    parent: int,
    target: int,
    config: AttachConfig,
    stderr_fd: int,
    events_fd: int,
    start_time: int | None,
) -> NoReturn:
    code = 1
    try:
        _become_child(parent, target, stderr_fd, events_fd)
        run_foreground(target, config, events=_send_event, start_time=start_time)
        code = 0
    except HeapspyError as exc:
        print(f"heapspy: {printable(hints.render(exc), keep_newlines=True)}", file=sys.stderr)
        code = exc.exit_code
    except BaseException:  # noqa: BLE001 - a child must never return into the daemon
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):  # exiting anyway
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class AttachChild:
    """A forked session for one target; its stderr (for the log) and its events (for
    decisions) are read without blocking."""

    def __init__(self, target: int, config: AttachConfig, start_time: int | None = None) -> None:
        """``start_time``: the target's (``/proc/PID/stat``), as the daemon saw it; the
        session refuses a process that holds ``target`` with another one (pid reuse)."""
        self.target = target
        self.config = config
        rfd, wfd = os.pipe()
        try:
            efd_r, efd_w = os.pipe()
        except OSError:
            os.close(rfd)
            os.close(wfd)
            raise
        parent = os.getpid()
        for stream in (sys.stdout, sys.stderr):  # nothing buffered may be written twice
            stream.flush()
        try:
            pid = os.fork()
        except OSError:
            for fd in (rfd, wfd, efd_r, efd_w):
                os.close(fd)
            raise
        if pid == 0:
            _child_main(parent, target, config, wfd, efd_w, start_time)
        os.close(wfd)
        os.close(efd_w)
        self._events_fd: int | None = efd_r
        os.set_blocking(efd_r, False)
        self._events_partial = b""
        self._pid = pid
        self.returncode: int | None = None
        self._fd = rfd
        os.set_blocking(rfd, False)
        self._partial = b""
        self.eof = False
        self.started = time.monotonic()
        self.attached_at: float | None = None  # when its "attached" event came
        self.end_reason: str | None = None  # from its "ended" event (for the log)
        self.by_user = False  # its "ended" event: `heapspy detach` ended the session
        self.stop_reason: str | None = None  # why the daemon asked it to stop
        self.early: list[str] = []  # what it said before attaching (the error, if any)

    @property
    def pid(self) -> int:
        return self._pid

    def fileno(self) -> int:
        return self._fd

    def filenos(self) -> list[int]:
        """The pipes still open: stderr and events."""
        fds = [] if self.eof else [self._fd]
        return fds if self._events_fd is None else [*fds, self._events_fd]

    def _read_events(self) -> list[str]:
        """Act on the events that came; the lines held until the attach, once it came."""
        fd = self._events_fd
        if fd is None:
            return []
        done = False
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                done = True
                break
            self._events_partial += data
            if len(self._events_partial) > 16 * _MAX_LINE:  # never from our own child
                self._events_partial = b""
        *complete, self._events_partial = self._events_partial.split(b"\n")
        if done:
            os.close(fd)
            self._events_fd = None
        released: list[str] = []
        for raw in complete:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("event") == "attached" and self.attached_at is None:
                self.attached_at = time.monotonic()
                released, self.early = self.early, []
            elif event.get("event") == "ended":
                self.end_reason = str(event.get("reason") or "")
                self.by_user = event.get("by_user") is True
        return released

    def read_lines(self) -> list[str]:
        """What it said since the last call that is worth logging now, without the
        ``heapspy: `` prefix. Until it has attached its lines are held in ``early``: a
        failure is then logged once, by the daemon, with its verdict."""
        if self.eof:
            return self._read_events()
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
            line = raw.decode(errors="replace").rstrip("\r")
            text = line[len("heapspy: ") :] if line.startswith("heapspy: ") else line
            if self.attached_at is None:
                self.early = [*self.early[-99:], text]
            else:
                out.append(text)
        # events after the lines: an "attached" event releases the lines held until then
        return out + self._read_events()

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
        if self._events_fd is not None:
            os.close(self._events_fd)
            self._events_fd = None
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
