"""Pick the injection method for a target and give the session one interface to it."""

from __future__ import annotations

from typing import Protocol

from heapspy.config import AttachConfig
from heapspy.errors import HeapspyError, Remedy, Setting, UsageError
from heapspy.inject.bootstrap import Placement
from heapspy.target.process import PythonTarget
from heapspy.target.pyspy import BackgroundDump
from heapspy.target.threads import describe_main_thread, main_thread_activity


class Injection(Protocol):
    method: str
    chosen: str  # why heapspy chose this method or thread on its own, in words ("": default)

    def waiting_for(self) -> str:
        """What the bootstrap is waiting on, in words, for the spinner and errors."""

    def advice(self) -> tuple[str, tuple[Remedy, ...]]:
        """What the user can do when the agent does not start: advice that holds for
        every front end, and the settings that could help (worded by each front end)."""

    def cancel(self) -> None:
        """Withdraw the request if the target has not consumed it yet."""

    def still_pending(self) -> bool:
        """Whether the bootstrap may still run later (it cannot be withdrawn)."""


def _main_thread_activity(pid: int, spy: BackgroundDump) -> str:
    states = spy.get(timeout=0.0)
    where = ""
    if states:
        main = next((s for s in states if s.tid == pid), None)
        if main is not None:
            where = f" at {main.where}"
    return f"{describe_main_thread(pid)}{where}"


class PtraceInjection:
    method = "ptrace"
    chosen = ""

    def __init__(self, target: PythonTarget, placement: Placement, config: AttachConfig) -> None:
        from heapspy.inject.ptrace import inject_pending_call

        if config.thread is not None:
            raise UsageError(
                "needs a Python 3.14+ target; on older versions the agent always starts in "
                "the main thread.",
                subject=Setting("thread"),
            )
        self.pid = target.pid
        self.spy = BackgroundDump(target.pid)
        self.report = inject_pending_call(target, placement.pending_call_source, nudge=config.nudge)

    def waiting_for(self) -> str:
        return _main_thread_activity(self.pid, self.spy)

    def advice(self) -> tuple[str, tuple[Remedy, ...]]:
        return (
            "A pending call runs only when the main thread executes Python bytecode: a main "
            "thread blocked in sleep, accept, read or select starts the agent when that call "
            "returns. The queued bootstrap will clean up after itself if it runs later.",
            (Remedy("attach_timeout"),),
        )

    def cancel(self) -> None:
        pass  # a queued pending call cannot be withdrawn from outside

    def still_pending(self) -> bool:
        return True


class Pep768Injection:
    method = "pep768"
    chosen = ""

    def __init__(
        self,
        target: PythonTarget,
        placement: Placement,
        config: AttachConfig,
        thread: int | None = None,
    ) -> None:
        """``thread``: the native TID to run the bootstrap (default ``config.thread``, else
        the main thread)."""
        from heapspy.inject.pep768 import request_exec

        self.pid = target.pid
        self.target = target
        self.thread = config.thread if thread is None else thread
        self.nudge = config.nudge
        self.spy = BackgroundDump(target.pid)
        self.request = request_exec(target, placement.boot_path, thread_id=self.thread)

    def waiting_for(self) -> str:
        if self.thread is not None:
            return f"thread {self.thread}: not yet at a bytecode boundary"
        return _main_thread_activity(self.pid, self.spy)

    def advice(self) -> tuple[str, tuple[Remedy, ...]]:
        busy = _running_python_threads(self.target)
        hint = (
            "The request runs when the chosen thread next executes Python bytecode; a main "
            "thread blocked in sleep, accept, read or select only gets there when that call "
            "returns."
        )
        remedies = [Remedy("thread", thread=busy[0] if busy else None)]
        if main_thread_activity(self.pid).kind == "futex":
            remedies.append(Remedy("ptrace_wakes_lock", nudge=self.nudge))
        return hint, tuple(remedies)

    def cancel(self) -> None:
        self.request.cancel()

    def still_pending(self) -> bool:
        return bool(self.request.pending())


def start_injection(target: PythonTarget, placement: Placement, config: AttachConfig) -> Injection:
    method = config.method
    if method == "auto" and target.version >= (3, 14) and config.thread is None:
        return _choose_on_314(target, placement, config)
    if method == "auto":
        method = "pep768" if target.version >= (3, 14) else "ptrace"
    if method == "pep768":
        if target.version < (3, 14):
            raise UsageError(
                f"needs Python 3.14+; process {target.pid} runs {target.version_text}.",
                subject=Setting("method", "pep768"),
            )
        return Pep768Injection(target, placement, config)
    if method == "ptrace":
        if target.version >= (3, 14):
            from heapspy.inject.pep768 import check_remote_debugging

            check_remote_debugging(target)
        return PtraceInjection(target, placement, config)
    raise UsageError(f"Unknown injection method {method!r}: use auto, pep768 or ptrace.")


# How long a request aimed at a thread seen running Python may stay untaken before we
# withdraw it and fall back: such a thread takes it in ~8 ms, 50 ms when threads fight for
# the GIL; a loaded machine stretches that, so allow far more, within the attach timeout.
WORKER_TAKE_TIMEOUT = 1.0
WORKERS_TRIED = 2  # the busiest: if they cannot take it, the GIL is the bottleneck, not them
_SERVED_SOON = ("running", "unknown", "stopped", "exited")  # activities that need no help


def _choose_on_314(target: PythonTarget, placement: Placement, config: AttachConfig) -> Injection:
    """Method "auto" on 3.14+: pick what starts the agent soonest.

    The main thread gets the PEP 768 request unless it is blocked. A blocked main thread
    reaches an eval breaker only when its call returns, and one waiting on a lock or in
    ``join()`` never: then another Python thread that runs gets the request, and if none
    takes it, ptrace with its futex nudge (the wait goes on afterwards) serves a lock wait.
    Anything else blocked (sleep, accept, read) keeps the main thread, served on return.
    """
    activity = main_thread_activity(target.pid)
    if activity.kind in _SERVED_SOON:
        return Pep768Injection(target, placement, config)
    why = f"the main thread is {activity.description}"
    tried = _running_python_threads(target)[:WORKERS_TRIED]
    for tid in tried:
        worker = Pep768Injection(target, placement, config, thread=tid)
        if _taken_else_withdrawn(worker, min(WORKER_TAKE_TIMEOUT, config.attach_timeout / 4)):
            worker.chosen = f"{why}: the agent was started from thread {tid}, which runs Python"
            return worker
    if activity.kind == "futex" and config.nudge:
        from heapspy.inject.pep768 import check_remote_debugging

        check_remote_debugging(target)
        ptrace = PtraceInjection(target, placement, config)
        others = "no other thread took the request" if tried else "no other thread runs Python"
        ptrace.chosen = (
            f"{why} and {others}: the agent was started by ptrace, which wakes that wait "
            "harmlessly (the wait goes on after)"
        )
        return ptrace
    return Pep768Injection(target, placement, config)


def _running_python_threads(target: PythonTarget) -> list[int]:
    """Python threads other than main that ran in the last moment, busiest first."""
    from heapspy.inject.pep768 import python_thread_ids
    from heapspy.target.threads import busy_threads, thread_ids

    # /proc first: a single-threaded target costs nothing more than before
    busy = busy_threads(target.pid, (t for t in thread_ids(target.pid) if t != target.pid))
    if not busy:
        return []
    try:
        python = set(python_thread_ids(target))
    except HeapspyError:
        return []
    return [t for t in busy if t in python]


def _taken_else_withdrawn(injection: Pep768Injection, timeout: float) -> bool:
    """Wait for the thread to take the request; withdraw it if not. True when it was taken,
    or may have been (its thread exited meanwhile, or it could not be withdrawn): a second
    bootstrap must not be sent after one that may run."""
    try:
        return injection.request.wait_taken(timeout) or not injection.request.cancel()
    except BaseException:
        injection.cancel()
        raise
