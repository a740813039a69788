"""Queue Python source in a CPython 3.8-3.13 target with ptrace and ``Py_AddPendingCall``.

The target's main thread (tid == pid) is seized and interrupted, made to run one
``mmap`` through a ``syscall`` instruction that already exists in libc's text, and then
to call ``Py_AddPendingCall(PyRun_SimpleString, page)`` returning onto an ``int3`` in that
page; every register, the FP/vector state and the signal mask are then put back exactly
and the thread is let go. The interpreter runs the source at its next eval-breaker check
in the main thread. Nothing here calls into Python from the interrupted point (it may be
waiting for the GIL), nothing is written into shared code, and other threads never stop.

While the main thread is held, all signals it could take are blocked with
PTRACE_SETSIGMASK so they stay queued (or go to another thread) and arrive exactly once
after the detach; the unblockable ones that still reach it are re-sent after the detach.

Stops inside ``get_signal`` (an interrupt, a signal or a group stop) are the only ones
where restoring the registers also restores an interrupted syscall, because the kernel's
restart logic runs after them; the code below always detaches from one of those.

All ptrace requests for one injection come from one short-lived worker thread while the
caller keeps the time: if the main thread never stops (uninterruptible sleep), the caller
gives up and the worker lets the thread go untouched as soon as it does stop.

The ptrace and waitpid requests themselves are in ``ptrace_sys.py``; which addresses to
use, and how the mapped page is laid out, is decided beforehand in ``plan.py``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from heapspy.errors import InjectionFailed, NoSuchProcess, TargetExited
from heapspy.inject import ptrace_sys as ptsys
from heapspy.inject.arch import Arch
from heapspy.inject.plan import (
    SOURCE_OFFSET,
    WIDEST_ADDRESS,
    Plan,
    check_source,
    landing_pad,
    page_size_for,
    plan_pending_call,
    plan_syscall_only,
)
from heapspy.target.privilege import ptrace_refused
from heapspy.target.process import PythonTarget, check_same_process, dying, tracer_error
from heapspy.target.threads import is_futex_wait_op

DEFAULT_TIMEOUT = 5.0

# Left unblocked while we hold the thread: blocking a fault makes the kernel reset its
# handler to SIG_DFL when it is forced, and our own int3 must reach us.
_SYNC_SIGNALS = (
    signal.SIGILL,
    signal.SIGTRAP,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGSEGV,
    signal.SIGSYS,
)


@dataclass(frozen=True)
class InjectionReport:
    """What one injection did; the page stays mapped until the injected code unmaps it."""

    pid: int
    page: int  # address of the mapping holding the landing pad and the source
    page_size: int
    source_addr: int  # the NUL-terminated source handed to PyRun_SimpleString
    stopped_s: float  # how long the main thread was held
    main_thread: str  # what it was doing: "running", "futex wait", "clock_nanosleep", ...
    syscall: int | None  # the syscall it was interrupted in, if any
    nudged: bool  # a futex wait was turned into EINTR so the call runs promptly
    redelivered_signals: tuple[int, ...]  # unblockable signals held back, re-sent after


# --- public API --------------------------------------------------------------------------


def inject_pending_call(
    target: PythonTarget,
    source: bytes | Callable[[int], bytes],
    *,
    nudge: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    on_stopped: Callable[[], None] | None = None,
) -> InjectionReport:
    """Make the target's main thread queue ``PyRun_SimpleString(source)`` as a pending call.

    ``source`` must not let any exception escape (``PyRun_SimpleString`` returning -1
    from a pending call breaks the target's own code with SystemError): wrap it in
    ``try: ... except BaseException: pass``. It may be a function of the page address
    (called while the thread is held, so keep it to string formatting), which lets the
    injected code ``munmap`` its own page: anonymous r-x pages mapped next to each other
    merge into one mapping, so searching /proc/self/maps for "a 4 KiB r-x page" misses
    them. The page is ``report.page_size`` bytes (4096 unless the source is long).

    With ``nudge``, a main thread waiting on a futex (lock, ``join()``,
    ``Event.wait()``) gets EINTR so the call runs at once; the wait then carries on.
    Other blocking calls (sleep, select, accept, read, epoll) run it when they return.
    ``on_stopped`` is called while the thread is held (tests use it to send signals at
    that moment). ``timeout`` bounds the whole injection. On any failure the target is
    left running as it was and a ``HeapspyError`` says why.
    """
    render = source if callable(source) else (lambda page: source)
    check_source(render(WIDEST_ADDRESS))
    plan = plan_pending_call(target)
    injector = Injector(plan, lambda: check_same_process(target))
    return injector.inject(render, nudge=nudge, timeout=timeout, hook=on_stopped)


def unmap_page(pid: int, addr: int, size: int, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """``munmap(addr, size)`` in the target with the same syscall mechanism.

    Only safe once the pending call that reads the page has run: an unmapped source
    would crash the target when it runs later. ``disarm_pending_call`` is the safe way to
    withdraw a call that has not run yet.
    """
    Injector(plan_syscall_only(pid)).unmap(addr, size, timeout=timeout)


def disarm_pending_call(report: InjectionReport) -> None:
    """Make a queued call harmless: its source becomes empty (the page stays mapped).

    Written through /proc/PID/mem without stopping the target. Racing the interpreter as
    it copies the source at the very start of parsing is the only (sub-microsecond) risk.
    """
    try:
        fd = os.open(f"/proc/{report.pid}/mem", os.O_RDWR)
    except FileNotFoundError:
        raise TargetExited(f"Process {report.pid} exited.") from None
    try:
        os.pwrite(fd, b"\0", report.source_addr)
    except OSError as exc:
        if exc.errno in (errno.ESRCH, errno.EIO):
            raise TargetExited(f"Process {report.pid} exited.") from None
        raise
    finally:
        os.close(fd)


# --- the tracer --------------------------------------------------------------------------

_T = TypeVar("_T")
GRACE = 3.0  # after a timeout: time to interrupt the thread and put it back


class _Timeout(Exception):
    pass


# Where the tracee is. Only at a _SIGNAL_STOP (interrupt, signal or group stop: all inside
# the kernel's get_signal) does restoring the registers also restart an interrupted
# syscall, since the restart logic runs right after it.
_RUNNING, _SIGNAL_STOP, _SYSCALL_ENTRY, _SYSCALL_EXIT, _GONE = range(5)

_TIMEOUT_HINTS = {
    "stopping": "It may be in an uninterruptible sleep (D state: disk or NFS); try again later.",
    "the call to Py_AddPendingCall": (
        "It was probably interrupted while holding the interpreter's pending-call lock; "
        "try again. The page heapspy mapped was left in place (4 KiB) in case the call "
        "was queued."
    ),
}


class Injector:
    """One ptrace session on a target's main thread.

    All ptrace requests and waits happen in one worker thread (a tracee belongs to the
    thread that seized it, and that thread's exit detaches it); the calling thread is the
    watchdog. waitpid blocks, because polling it costs the target 2-10x longer stops on a
    busy machine; a timeout is enforced by the watchdog, which sends the held thread a
    SIGTRAP ("poke") that makes it stop where we can take it back, and which the worker
    always consumes before detaching (delivered for real, it would kill the target).
    """

    def __init__(self, plan: Plan, same: Callable[[], None] | None = None) -> None:
        self.plan = plan
        # raises unless the pid still names the process inspected (pid reuse)
        self.same = same or (lambda: None)
        self.pid = plan.pid
        self.arch = plan.arch
        self.where = _GONE
        self.resumed_from = _GONE
        self.seized = False
        self.stopped_once = False
        self.saved_regs: ctypes.Structure | None = None
        self.saved_fp: bytes | None = None
        self.saved_mask: int | None = None
        self.held: list[tuple[int, bool]] = []  # (signal, thread-directed)
        self.mem_fd = -1
        self.phase = "stopping"
        self.lock = threading.RLock()  # orders the watchdog's poke against the detach
        self.timed_out = False
        self.recovering = False
        self.poked = False
        self.poke_seen = False

    # the two threads --------------------------------------------------------------------
    def drive(self, timeout: float, body: Callable[[float], _T]) -> _T:
        """Run ``body`` in a worker thread holding the tracee; watch the clock here."""
        box: list[_T] = []
        error: list[BaseException] = []

        def work() -> None:
            try:
                box.append(self._run(timeout, body))
            except BaseException as exc:
                error.append(exc)

        # A daemon: it is only ever left behind when the thread never stops, and then the
        # process exit detaches the (untouched) target.
        worker = threading.Thread(target=work, name=f"heapspy-ptrace-{self.pid}", daemon=True)
        worker.start()
        try:
            worker.join(timeout)
        except BaseException:  # Ctrl-C: stop the injection, put the target back
            self._expire()
            worker.join(GRACE)
            raise
        if worker.is_alive():
            self._expire()
            worker.join(GRACE)
        if worker.is_alive():
            raise InjectionFailed(
                f"Process {self.pid}'s main thread did not stop for ptrace within "
                f"{timeout:g} s (uninterruptible sleep?). heapspy gave up; the thread is "
                "let go unchanged as soon as it stops.",
                hint=_TIMEOUT_HINTS["stopping"],
            )
        if error:
            raise error[0]
        return box[0]

    def _expire(self) -> None:
        """Watchdog side of a timeout: flag it and, if the thread runs our code, poke it."""
        with self.lock:
            if self.timed_out:
                return
            self.timed_out = True
            if self.seized and self.stopped_once and self.where == _RUNNING and not self.poked:
                if ptsys.tgkill(self.pid, self.pid, signal.SIGTRAP):
                    self.poked = True

    # ptrace and waitpid ---------------------------------------------------------------------
    def _ptrace(self, request: int, addr: int | None = 0, data: int | None = 0) -> int:
        return ptsys.ptrace(request, self.pid, addr, data)

    def _resume(self, request: int, sig: int = 0) -> None:
        with self.lock:
            if self.timed_out and not self.recovering:
                raise _Timeout()
            self._ptrace(request, 0, sig)
            self.resumed_from = self.where
            self.where = _RUNNING

    def _wait(self) -> ptsys.Stop:
        """The tracee's next stop (blocking); raises _Timeout once the watchdog fired."""
        try:
            _, status = os.waitpid(self.pid, ptsys.WALL)
        except ChildProcessError:
            self.where = _GONE
            raise ptsys.Exited() from None
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self.where = _GONE
            self.seized = False
            raise ptsys.Exited()
        stop = ptsys.Stop(status)
        if stop.is_syscall:
            self.where = _SYSCALL_EXIT if self.resumed_from == _SYSCALL_ENTRY else _SYSCALL_ENTRY
        else:
            self.where = _SIGNAL_STOP
        if self.poked and not self.poke_seen and stop.is_signal and stop.sig == signal.SIGTRAP:
            code, sender = self._siginfo()
            if code == ptsys.SI_TKILL and sender == os.getpid():
                self.poke_seen = True
                raise _Timeout()
        if self.timed_out and not self.recovering:
            raise _Timeout()
        return stop

    def _siginfo(self) -> tuple[int, int]:
        return ptsys.siginfo(self.pid)

    # registers --------------------------------------------------------------------------
    def _get_regs(self) -> ctypes.Structure:
        return ptsys.get_regs(self.pid, self.arch)

    def _set_regs(self, regs: ctypes.Structure) -> None:
        ptsys.set_regs(self.pid, regs)

    def _get_fp(self) -> bytes:
        return ptsys.get_fp(self.pid, self.arch)

    def _set_fp(self, data: bytes) -> None:
        ptsys.set_fp(self.pid, self.arch, data)

    def _get_mask(self) -> int:
        return ptsys.get_sigmask(self.pid)

    def _set_mask(self, value: int) -> None:
        ptsys.set_sigmask(self.pid, value)

    def _write(self, addr: int, data: bytes) -> None:
        if self.mem_fd < 0:
            self.mem_fd = os.open(f"/proc/{self.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        # /proc/PID/mem writes with FOLL_FORCE: our read+exec page takes them.
        if os.pwrite(self.mem_fd, data, addr) != len(data):
            raise OSError(errno.EIO, f"short write at {addr:#x} in process {self.pid}")

    # stops ------------------------------------------------------------------------------
    def _foreign(self, stop: ptsys.Stop, request: int) -> None:
        """A stop that is not the one awaited: note what it carries, resume as before."""
        if stop.is_signal:
            code, _ = self._siginfo()
            if stop.sig in _SYNC_SIGNALS and code > 0:
                # raised by the kernel on an instruction we made the thread run
                raise InjectionFailed(
                    f"Process {self.pid} faulted ({signal.Signals(stop.sig).name}) in code "
                    "heapspy made it run; its state was restored."
                )
            self.held.append((stop.sig, code == ptsys.SI_TKILL))
        # group stops: go on; the kernel re-stops the thread when we detach.
        self._resume(request, 0)

    def _await(self, want: Callable[[ptsys.Stop], bool], request: int) -> ptsys.Stop:
        while True:
            stop = self._wait()
            if want(stop):
                return stop
            self._foreign(stop, request)

    # the steps --------------------------------------------------------------------------
    def _seize(self) -> float:
        self.same()
        try:
            self._ptrace(ptsys.PTRACE_SEIZE, 0, ptsys.PTRACE_O_TRACESYSGOOD)
        except ptsys.PtraceError as exc:
            if exc.errno == errno.EPERM:
                raise tracer_error(self.pid) or ptrace_refused(self.pid, "ptrace") from None
            if exc.errno == errno.ESRCH:
                raise NoSuchProcess(f"No process with pid {self.pid}.") from None
            raise
        with self.lock:
            self.seized = True
            self.where = _RUNNING
        # Once seized its pid cannot be reused (we would see its exit first); checked
        # again here, it closes the gap between the check above and the seize. A
        # newcomer is let go untouched (_recover: nothing was saved, only detached).
        self.same()
        self._ptrace(ptsys.PTRACE_INTERRUPT)
        while True:
            stop = self._wait()
            if stop.is_interrupt:
                break
            if stop.is_group_stop:
                raise InjectionFailed(
                    f"Process {self.pid} is stopped (SIGSTOP, Ctrl-Z or a debugger) and "
                    "cannot run Python until it is resumed.",
                    hint=f"Resume it with `kill -CONT {self.pid}` and try again.",
                )
            # a signal it was taking as we came: let it have it, nothing is changed yet
            self._resume(ptsys.PTRACE_CONT, stop.sig if stop.is_signal else 0)
        stopped_at = time.monotonic()
        with self.lock:
            self.stopped_once = True
        self.saved_regs = self._get_regs()
        self.saved_fp = self._get_fp()
        self.saved_mask = self._get_mask()
        keep = 0
        for sig in _SYNC_SIGNALS:
            keep |= 1 << (sig - 1)
        self._set_mask(((1 << 64) - 1) & ~keep)
        return stopped_at

    def _syscall(self, nr: int, *args: int) -> int:
        """Run one syscall in the thread (from a signal or syscall-exit stop)."""
        assert self.saved_regs is not None and self.where in (_SIGNAL_STOP, _SYSCALL_EXIT)
        self.phase = f"the syscall {self.arch.syscall_name(nr)}"
        regs = self.arch.copy(self.saved_regs)
        self.arch.prepare_syscall(regs, self.plan.syscall_insn, nr, args)
        self._set_regs(regs)
        self._resume(ptsys.PTRACE_SYSCALL)
        self._await(lambda s: s.is_syscall, ptsys.PTRACE_SYSCALL)
        entry = self._get_regs()
        if self.where != _SYSCALL_ENTRY or self.arch.interrupted_syscall(entry) != nr:
            raise InjectionFailed(
                f"Process {self.pid} stopped in an unexpected syscall "
                f"({self.arch.interrupted_syscall(entry)}, wanted {nr})."
            )
        self._resume(ptsys.PTRACE_SYSCALL)
        self._await(lambda s: s.is_syscall, ptsys.PTRACE_SYSCALL)
        return self.arch.syscall_return(self._get_regs())

    def _to_signal_stop(self) -> None:
        """From a syscall stop (or running) to a stop inside get_signal."""
        if self.where == _SYSCALL_ENTRY:
            regs = self._get_regs()
            self.arch.skip_syscall(regs)
            self._set_regs(regs)
            self._resume(ptsys.PTRACE_SYSCALL)
            self._await(lambda s: s.is_syscall, ptsys.PTRACE_SYSCALL)
        if self.where in (_SYSCALL_EXIT, _RUNNING):
            # The interrupt is taken on the way back to user mode, before any instruction.
            self._ptrace(ptsys.PTRACE_INTERRUPT)
            if self.where == _SYSCALL_EXIT:
                self._resume(ptsys.PTRACE_CONT)
            self._await(lambda s: s.is_interrupt or s.is_group_stop, ptsys.PTRACE_CONT)

    def _call(self, func: int, args: tuple[int, ...], pad: int) -> int:
        assert self.saved_regs is not None
        self.phase = "the call to Py_AddPendingCall"
        regs = self.arch.copy(self.saved_regs)
        for addr, data in self.arch.prepare_call(regs, func, args, pad):
            self._write(addr, data)
        self._set_regs(regs)
        self._resume(ptsys.PTRACE_CONT)
        landing = self.arch.pc_after_trap(pad)
        while True:
            stop = self._wait()
            if stop.is_signal and stop.sig == signal.SIGTRAP:
                done = self._get_regs()
                if self.arch.pc(done) == landing:
                    return self.arch.call_return_int(done)
            self._foreign(stop, ptsys.PTRACE_CONT)

    def _restore_and_detach(self, nudge: bool = False) -> tuple[bool, float]:
        """Put everything back and let go; returns (futex wait nudged, time of release)."""
        assert self.where == _SIGNAL_STOP
        nudged = False
        with self.lock:  # no poke may be sent from here on
            if self.saved_regs is not None:
                regs = self.arch.copy(self.saved_regs)
                if nudge and _is_futex_wait(self.arch, regs):
                    self.arch.set_syscall_return(regs, -errno.EINTR)
                    nudged = True
                self._set_regs(regs)
            if self.saved_fp is not None:
                self._set_fp(self.saved_fp)
            if self.poked and not self.poke_seen:
                # Still queued: take it now. Resuming from here dequeues it inside the
                # same get_signal call, before any instruction runs.
                self.recovering = True
                self._ptrace(ptsys.PTRACE_CONT, 0, 0)
                self.resumed_from, self.where = self.where, _RUNNING
                while not self.poke_seen:
                    try:
                        stop = self._wait()
                    except _Timeout:
                        break  # that was it
                    self._foreign(stop, ptsys.PTRACE_CONT)
            if self.saved_mask is not None:
                self._set_mask(self.saved_mask)
            released = time.monotonic()
            self._ptrace(ptsys.PTRACE_DETACH, 0, 0)
            self.seized = False
            self.where = _GONE
        for sig, to_thread in self.held:
            ptsys.resend(self.pid, sig, to_thread)
        return nudged, released

    def _recover(self) -> None:
        """After a failure: get to a stop inside get_signal, restore, detach."""
        self.recovering = True
        for _ in range(3):
            if not self.seized or self.where == _GONE:
                return
            try:
                if self.where != _SIGNAL_STOP:
                    self._to_signal_stop()
                self._restore_and_detach()
                return
            except _Timeout:
                continue  # the poke, seen on the way: we are at a signal stop now
            except InjectionFailed:
                continue  # a fault on the way is a signal stop too
            except (ptsys.PtraceError, ptsys.Exited):
                return  # gone; or the worker's exit detaches it

    def _run(self, timeout: float, body: Callable[[float], _T]) -> _T:
        try:
            stopped_at = self._seize()
            return body(stopped_at)
        except BaseException as exc:
            self._recover()
            if isinstance(exc, ptsys.Exited) or (
                isinstance(exc, OSError)
                and exc.errno in (errno.ESRCH, errno.EIO)
                and dying(self.pid)
            ):
                raise TargetExited(
                    f"Process {self.pid} exited while heapspy was injecting into it."
                ) from None
            if isinstance(exc, _Timeout):
                raise InjectionFailed(
                    f"Process {self.pid}'s main thread did not finish {self.phase} within "
                    f"{timeout:g} s; it was put back as it was and left running.",
                    hint=_TIMEOUT_HINTS.get(self.phase),
                ) from None
            if isinstance(exc, ptsys.PtraceError):
                raise InjectionFailed(f"ptrace failed on process {self.pid}: {exc}.") from None
            raise
        finally:
            if self.mem_fd >= 0:
                os.close(self.mem_fd)
                self.mem_fd = -1

    def inject(
        self,
        render: Callable[[int], bytes],
        *,
        nudge: bool,
        timeout: float,
        hook: Callable[[], None] | None,
    ) -> InjectionReport:
        sample = render(WIDEST_ADDRESS)
        size = page_size_for(sample)
        pad = landing_pad(self.arch)
        mmap_nr = self.arch.syscall_numbers["mmap"]
        prot, flags = ptsys.PROT_READ | ptsys.PROT_EXEC, ptsys.MAP_PRIVATE | ptsys.MAP_ANONYMOUS

        def body(stopped_at: float) -> InjectionReport:
            assert self.saved_regs is not None
            state = self.saved_regs
            if hook is not None:
                hook()
            page = self._syscall(mmap_nr, 0, size, prot, flags, -1, 0)
            if -4096 < page < 0:
                self._to_signal_stop()
                self._restore_and_detach()
                raise InjectionFailed(f"mmap failed in process {self.pid}: {os.strerror(-page)}.")
            try:
                source = render(page)
                check_source(source)
                if SOURCE_OFFSET + len(source) + 1 > size:
                    raise ValueError(f"the source grew to {len(source)} bytes for page {page:#x}")
                self._write(page, pad + source + b"\0")
            except BaseException:
                self._unmap_here(page, size)
                raise
            args = (self.plan.run_simple_string, page + SOURCE_OFFSET)
            result = self._call(self.plan.add_pending_call, args, page)
            if result != 0:
                self._unmap_here(page, size)
                self._restore_and_detach()
                raise InjectionFailed(
                    f"Py_AddPendingCall returned {result} in process {self.pid}: its "
                    "pending-call queue is full or the interpreter is shutting down.",
                    hint="Wait until the process runs Python again (the queue drains) and retry.",
                )
            nudged, released = self._restore_and_detach(nudge)
            nr = self.arch.interrupted_syscall(state)
            return InjectionReport(
                pid=self.pid,
                page=page,
                page_size=size,
                source_addr=page + SOURCE_OFFSET,
                stopped_s=released - stopped_at,
                main_thread=_state_name(self.arch, state),
                syscall=nr if _in_syscall(self.arch, state) else None,
                nudged=nudged,
                redelivered_signals=tuple(sig for sig, _ in self.held),
            )

        return self.drive(timeout, body)

    def _unmap_here(self, page: int, size: int) -> None:
        self._syscall(self.arch.syscall_numbers["munmap"], page, size)
        self._to_signal_stop()

    def unmap(self, addr: int, size: int, *, timeout: float) -> None:
        def body(stopped_at: float) -> None:
            result = self._syscall(self.arch.syscall_numbers["munmap"], addr, size)
            self._to_signal_stop()
            self._restore_and_detach()
            if result < 0:
                raise InjectionFailed(
                    f"munmap({addr:#x}, {size}) failed in process {self.pid}: "
                    f"{os.strerror(-result)}."
                )

        self.drive(timeout, body)


# --- reading a thread's state ----------------------------------------------------------------


def _in_syscall(arch: Arch, regs: ctypes.Structure) -> bool:
    """Stopped while blocked in a syscall: one the kernel will restart, or one that (like
    epoll_wait) returns EINTR after any stop; CPython retries those (PEP 475)."""
    if arch.interrupted_syscall(regs) is None:
        return False
    result = -arch.syscall_return(regs)
    return result in ptsys.RESTARTS or result == errno.EINTR


def _is_futex_wait(arch: Arch, regs: ctypes.Structure) -> bool:
    futex = arch.syscall_numbers["futex"]
    if not _in_syscall(arch, regs) or arch.interrupted_syscall(regs) != futex:
        return False
    return is_futex_wait_op(arch.syscall_args(regs)[1])


def _state_name(arch: Arch, regs: ctypes.Structure) -> str:
    if not _in_syscall(arch, regs):
        return "running"
    nr = arch.interrupted_syscall(regs)
    assert nr is not None
    if _is_futex_wait(arch, regs):
        return "futex wait"
    return arch.syscall_name(nr)


__all__ = [
    "DEFAULT_TIMEOUT",
    "InjectionReport",
    "Injector",
    "disarm_pending_call",
    "inject_pending_call",
    "unmap_page",
]
