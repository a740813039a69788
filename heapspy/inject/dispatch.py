"""Pick the injection method for a target and give the session one interface to it."""

from __future__ import annotations

from typing import Protocol

from heapspy.config import AttachConfig
from heapspy.errors import HeapspyError, UsageError
from heapspy.inject.bootstrap import Placement
from heapspy.pyspy import BackgroundDump
from heapspy.target.process import PythonTarget


class Injection(Protocol):
    method: str

    def waiting_for(self) -> str:
        """What the bootstrap is waiting on, in words, for the spinner and errors."""

    def advice(self) -> str:
        """What the user can do when the agent does not start."""

    def cancel(self) -> None:
        """Withdraw the request if the target has not consumed it yet."""

    def still_pending(self) -> bool:
        """Whether the bootstrap may still run later (it cannot be withdrawn)."""


def _main_thread_activity(pid: int, spy: BackgroundDump) -> str:
    from heapspy.inject.ptrace import describe_main_thread

    states = spy.get(timeout=0.0)
    where = ""
    if states:
        main = next((s for s in states if s.tid == pid), None)
        if main is not None:
            where = f" at {main.where}"
    return f"{describe_main_thread(pid)}{where}"


def _thread_state(pid: int, tid: int) -> str:
    """The one-letter scheduler state of a thread (R running, S sleeping, ...)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


class PtraceInjection:
    method = "ptrace"

    def __init__(self, target: PythonTarget, placement: Placement, config: AttachConfig) -> None:
        from heapspy.inject.ptrace import inject_pending_call

        if config.thread is not None:
            raise UsageError(
                "--thread needs a Python 3.14+ target; on older versions the agent always "
                "starts in the main thread."
            )
        self.pid = target.pid
        self.spy = BackgroundDump(target.pid)
        self.report = inject_pending_call(target, placement.pending_call_source, nudge=config.nudge)

    def waiting_for(self) -> str:
        return _main_thread_activity(self.pid, self.spy)

    def advice(self) -> str:
        return (
            "A pending call runs only when the main thread executes Python bytecode: a main "
            "thread blocked in sleep, accept, read or select starts the agent when that call "
            "returns. Try again when the process is busy, or raise --attach-timeout. The "
            "queued bootstrap will clean up after itself if it runs later."
        )

    def cancel(self) -> None:
        pass  # a queued pending call cannot be withdrawn from outside

    def still_pending(self) -> bool:
        return True


class Pep768Injection:
    method = "pep768"

    def __init__(self, target: PythonTarget, placement: Placement, config: AttachConfig) -> None:
        from heapspy.inject.pep768 import request_exec

        self.pid = target.pid
        self.target = target
        self.thread = config.thread
        self.spy = BackgroundDump(target.pid)
        self.request = request_exec(target, placement.boot_path, thread_id=config.thread)

    def waiting_for(self) -> str:
        if self.thread is not None:
            return f"thread {self.thread}: not yet at a bytecode boundary"
        return _main_thread_activity(self.pid, self.spy)

    def _running_python_threads(self) -> list[int]:
        """Python threads other than main that are on a CPU now: --thread candidates."""
        states = self.spy.get(timeout=1.0) or []
        busy = [s.tid for s in states if s.active and s.tid != self.pid]
        if busy:
            return busy
        from heapspy.inject.pep768 import python_thread_ids

        try:
            tids = python_thread_ids(self.target)
        except HeapspyError:
            return []
        return [t for t in tids if t != self.pid and _thread_state(self.pid, t) == "R"]

    def advice(self) -> str:
        busy = self._running_python_threads()
        hint = (
            "The request runs when the chosen thread next executes Python bytecode; a main "
            "thread blocked in sleep, accept, read or select only gets there when that call "
            "returns."
        )
        if busy:
            hint += f" Thread {busy[0]} is running Python: try --thread {busy[0]}."
        else:
            hint += " Use --thread TID to aim at another thread that runs Python."
        from heapspy.inject.ptrace import main_thread_activity

        if main_thread_activity(self.pid).kind == "futex":
            hint += (
                " Its main thread waits on a lock: --method ptrace wakes such a wait harmlessly"
                " so that the agent starts."
            )
        return hint

    def cancel(self) -> None:
        self.request.cancel()

    def still_pending(self) -> bool:
        return bool(self.request.pending())


def start_injection(target: PythonTarget, placement: Placement, config: AttachConfig) -> Injection:
    method = config.method
    if method == "auto":
        method = "pep768" if target.version >= (3, 14) else "ptrace"
    if method == "pep768":
        if target.version < (3, 14):
            raise UsageError(
                f"--method pep768 needs Python 3.14+; process {target.pid} runs "
                f"{target.version_text}."
            )
        return Pep768Injection(target, placement, config)
    if method == "ptrace":
        if target.version >= (3, 14):
            from heapspy.inject.pep768 import check_remote_debugging

            check_remote_debugging(target)
        return PtraceInjection(target, placement, config)
    raise UsageError(f"Unknown injection method {method!r}: use auto, pep768 or ptrace.")

