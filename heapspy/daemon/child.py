"""One forked helper per target attaches to it; the session then runs in the daemon.

The helper is a process, not a thread: ptrace belongs to the thread that attached, and
inspecting the target, placing the agent and injecting it parse and read what the
target chose (its ELF, its filesystem) and may be held up by it; a crash, a hang or a
hostile target then costs that helper alone, which the daemon kills when overdue. Once
the agent has shaken hands, the helper hands the session over to the daemon
(``heapspy.daemon.handoff``: descriptors and a record over a socketpair) and exits; the
daemon runs it in a thread (``heapspy.daemon.sessions``) and serves its control socket,
so ``heapspy dump/rate/detach/status PID`` reach it as they reach a hand-started one.

Forked, not exec'd: a fresh ``python -m heapspy attach`` costs 25-32 MiB of private
memory and a second of imports; a child forked from the daemon, which has imported
everything already, shares all of that. The child resets the daemon's signal handlers,
closes every descriptor it does not need, gets stdio objects of its own (a daemon thread
may have held theirs at the fork), freezes the inherited objects out of its garbage
collector and never returns into the daemon's code: it ends with ``os._exit``. Its
process name (``comm``) is ``heapspy:PID``.

The daemon learns how an attach went from the child's exit status and from what the
child sends on a socket of its own (fd 3 in the child): JSON events, and the session.
Its stderr is only logged, never parsed: it carries text from the target (function
names, the agent's reasons), and a line forged there must not change what the daemon
does. A child stopped (SIGTERM) before it could hand over detaches by itself, final
dump included, as a session process did.

Children die with the daemon: ``PR_SET_PDEATHSIG`` sends each one SIGTERM if the daemon
is killed.

The injection modules are imported here, in the daemon, before any fork, although a
session imports them only when it injects: imported in each helper they cost ~25 ms of
CPU per attach (ctypes structures, dataclasses built afresh), half of a helper's own.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from typing import Callable, NoReturn

import heapspy.inject.pep768  # noqa: F401 - loaded once, for every helper (docstring)
import heapspy.inject.ptrace  # noqa: F401
from heapspy.config import AttachConfig
from heapspy.daemon import handoff, hints
from heapspy.daemon.sdnotify import PRIVATE_ENV
from heapspy.daemon.sessions import SessionThread
from heapspy.errors import HeapspyError
from heapspy.foreground import SignalRequests, run_attached
from heapspy.printable import PrintableFormatter, printable
from heapspy.session import Session
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
        "--idle-report", duration_text(config.idle_report),
        "--attach-timeout", duration_text(config.attach_timeout),
        "--method", config.method,
        "--dump-dir", str(config.dump_dir),
        "--final-dump" if config.final_dump else "--no-final-dump",
        "--nudge" if config.nudge else "--no-nudge",
        "--census" if config.census else "--no-census",
        "--native" if config.native else "--no-native",
        "--retainers" if config.retainers else "--no-retainers",
    ]  # fmt: skip
    if config.native_frames:
        argv.append("--native-frames")
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
    # the daemon's session threads write to stdout/stderr: one may have held an io
    # object's lock at the fork, which nothing here could ever take again
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - lives as long as the child
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
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


def _attach_and_hand_over(target: int, config: AttachConfig, start_time: int | None) -> None:
    """Attach, and send the session to the daemon; or, stopped meanwhile, detach."""

    def early(why: str) -> None:
        print(
            f"heapspy: {why}: detaching as soon as the agent has started (within "
            f"{config.attach_timeout:g} s), which leaves the process as it was",
            file=sys.stderr,
            flush=True,
        )

    with SignalRequests(early=early) as requests:
        session = Session.attach(target, config, start_time=start_time, serve=False)
        if not requests.reason:
            channel = socket.socket(fileno=EVENTS_FD)
            try:
                handoff.send_session(channel, session)
            finally:
                channel.detach()
            return  # the daemon holds it all now: nothing is undone on the way out
        requests.follow(session)
        session.serve()
        run_attached(session, config, events=_send_event)


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
        _attach_and_hand_over(target, config, start_time)
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
    """One target's session, from the attach helper's fork to the detach: first the
    helper process (its stderr, for the log, and its events, for decisions, read without
    blocking), then the session it handed over, running in a thread of the daemon."""

    def __init__(
        self,
        target: int,
        config: AttachConfig,
        start_time: int | None = None,
        prefix: str = "",
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        """``start_time``: the target's (``/proc/PID/stat``), as the daemon saw it; the
        session refuses a process that holds ``target`` with another one (pid reuse).
        ``prefix`` starts the session's log lines; ``wake`` wakes the daemon's loop
        (called from the session's thread when it ends)."""
        self.target = target
        self.config = config
        self.prefix = prefix
        self._wake = wake
        rfd, wfd = os.pipe()
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
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
            for fd in (rfd, wfd):
                os.close(fd)
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            _child_main(parent, target, config, wfd, theirs.fileno(), start_time)
        os.close(wfd)
        theirs.close()
        ours.setblocking(False)
        self._events: socket.socket | None = ours
        self._pid = pid
        self._helper_code: int | None = None  # the helper's exit status, once it exited
        self.returncode: int | None = None
        self._fd = rfd
        os.set_blocking(rfd, False)
        self._partial = b""
        self.eof = False
        self.started = time.monotonic()
        self.attached_at: float | None = None  # when the session was handed over
        self.end_reason: str | None = None  # from its "ended" event (for the log)
        self.by_user = False  # its "ended" event: `heapspy detach` ended the session
        self.dropped_stacks = 0  # its "ended" event: stacks the session could not keep
        self.stop_reason: str | None = None  # why the daemon asked it to stop
        self.stop_by: float | None = None  # when it must be done, if the daemon said
        self.early: list[str] = []  # what it said before attaching (the error, if any)
        self.session: SessionThread | None = None  # once handed over
        self._released: list[str] = []  # lines to log, released by the hand-over
        self._lost = False  # it handed a session over that could not be taken over

    @property
    def pid(self) -> int:
        """The attach helper's pid."""
        return self._pid

    @property
    def helper_exists(self) -> bool:
        """Whether its attach helper process is still there (running, or exited and not
        yet reaped by ``poll``)."""
        return self._helper_code is None

    @property
    def in_daemon(self) -> bool:
        """Whether the session runs in the daemon (handed over), not in its helper."""
        return self.session is not None

    def fileno(self) -> int:
        return self._fd

    def filenos(self) -> list[int]:
        """The helper's stderr and events, while open."""
        fds = [] if self.eof else [self._fd]
        return fds if self._events is None else [*fds, self._events.fileno()]

    # --- what the helper says ----------------------------------------------------------
    def _read_events(self) -> None:
        """Act on what came on the events socket: events, and the session itself."""
        sock = self._events
        while sock is not None:
            got = handoff.receive(sock)
            if got is None:
                break
            data, fds = got
            if not data and not fds:  # the helper is gone
                sock.close()
                self._events = sock = None
                break
            if data.startswith(b"S"):
                self._take_over(data, fds)
                continue
            for fd in fds:  # never from our own child: nothing else carries descriptors
                os.close(fd)
            try:
                event = json.loads(data)
            except ValueError:
                continue
            if isinstance(event, dict):
                self._on_event(str(event.get("event")), event)

    def _on_event(self, kind: str, event: dict[str, object]) -> None:
        if kind == "attached" and self.attached_at is None:
            self.attached_at = time.monotonic()
            self._released, self.early = [*self._released, *self.early], []
        elif kind == "ended":
            self.end_reason = str(event.get("reason") or "")
            self.by_user = event.get("by_user") is True
            dropped = event.get("dropped_stacks")
            self.dropped_stacks = dropped if isinstance(dropped, int) else 0

    def _take_over(self, data: bytes, fds: list[int]) -> None:
        """The helper sent its session: run it here from now on."""
        try:
            session = handoff.resume(data, fds, self.config)
        except Exception as exc:  # noqa: BLE001 - this session fails, the daemon goes on
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.early.append(f"the session could not be taken over from its helper: {exc}")
            self._lost = True
            return
        self._on_event("attached", {})
        thread = SessionThread(session, self.config, self.prefix, self._thread_event, self._wake)
        self.session = thread
        if self.stop_reason is not None:  # asked to stop while it was on its way
            thread.stop(self.stop_reason, self.stop_by)
        thread.start()

    def _thread_event(self, kind: str, event: dict[str, object]) -> None:
        if kind == "ended":  # "attached" was the hand-over itself
            self._on_event(kind, event)

    def read_lines(self) -> list[str]:
        """What it said since the last call that is worth logging now, without the
        ``heapspy: `` prefix. Until it has attached its lines are held in ``early``: a
        failure is then logged once, by the daemon, with its verdict. (The session's own
        lines, once it runs here, are logged by its thread.)"""
        if not self.eof:
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
        if self.eof and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        out: list[str] = []
        for raw in complete:
            line = raw.decode(errors="replace").rstrip("\r")
            text = line[len("heapspy: ") :] if line.startswith("heapspy: ") else line
            if self.attached_at is None:
                self.early = [*self.early[-99:], text]
            else:
                out.append(text)
        # events after the lines: the hand-over releases the lines held until then
        self._read_events()
        released, self._released = self._released, []
        return out + released

    # --- its end ------------------------------------------------------------------------
    def poll(self) -> int | None:
        """Its exit status once it has ended (negative: killed by that signal), else None:
        the helper's, unless it handed its session over; then the session's."""
        if self.returncode is not None:
            return self.returncode
        if self._helper_code is None:
            try:
                pid, status = os.waitpid(self._pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self._pid, -1
            if pid:
                self._helper_code = (
                    -signal.SIGKILL if status == -1 else os.waitstatus_to_exitcode(status)
                )  # reaped elsewhere: treat as lost
                # it wrote its events before exiting: the hand-over, if any, is there
                self._read_events()
        if self.session is not None:
            if self._helper_code is not None:  # the helper reaped too: no zombie left
                self.returncode = self.session.code
        elif self._helper_code is not None:
            self.returncode = self._helper_code or (1 if self._lost else 0)
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        """``poll`` until it ends or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return code

    def finish(self) -> list[str]:
        """After the end: whatever it still had to say. Closes the pipes."""
        lines = self.read_lines()
        if not self.eof:  # a grandchild still holds the pipe: do not wait for it
            self.eof = True
            os.close(self._fd)
            self._fd = -1
        if self._events is not None:
            self._events.close()
            self._events = None
        return lines

    def stop(self, reason: str, by: float | None = None) -> None:
        """Ask it to detach: it writes its final dump and ends (by ``by``, a
        ``time.monotonic`` deadline, if given: see ``Session.request_stop``)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if by is not None:
            self.stop_by = by if self.stop_by is None else min(by, self.stop_by)
        if self.session is not None:
            self.session.stop(reason, self.stop_by)
        else:
            self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """End it now: the helper by SIGKILL; a session running here is asked to stop
        and left to finish in the background (the daemon is exiting, or gives up on it)."""
        if self.session is not None:
            self.session.stop(self.stop_reason or "killed")
            if self.returncode is None:
                self.returncode = -signal.SIGKILL
            return
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.poll() is None and self._helper_code is None:
            try:
                os.kill(self._pid, sig)
            except ProcessLookupError:
                pass
