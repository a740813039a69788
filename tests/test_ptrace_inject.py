"""The ptrace injector against real target processes on every CPython 3.8-3.13 found.

Each test starts a script from ``tests/targets/`` (it prints ``READY <pid>`` once set up),
queues a probe with ``inject_pending_call`` and checks where and when the probe ran
and that the target's own work carried on intact.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from interpreters import Interpreter, interpreter_params
from support import wait_for

from heapspy.errors import (
    InjectionFailed,
    NoSuchProcess,
    NotPython,
    TargetExited,
    TracerAttached,
    UnrecognisedPython,
)
from heapspy.inject import plan as inject_plan
from heapspy.inject import ptrace
from heapspy.inject.ptrace import disarm_pending_call, inject_pending_call, unmap_page
from heapspy.target.elf import ElfImage
from heapspy.target.maps import read_maps
from heapspy.target.process import PythonTarget, inspect_target
from heapspy.target.threads import describe_main_thread, main_thread_activity

_libc = ctypes.CDLL(None, use_errno=True)
TARGETS = Path(__file__).resolve().parent / "targets"
REPO = Path(__file__).resolve().parent.parent
# 3.8-3.13 need this injector; 3.14 normally uses PEP 768, but ptrace works there too
# (``--method ptrace``) and is tested alike.
ALL = interpreter_params()
# the single-interpreter tests: Debian's static, stripped, non-PIE build and a pyenv one
STATIC_AND_SHARED = [p for p in ALL if p.id in ("3.11-debian-static", "3.12-pyenv")] or ALL[-1:]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="ptrace injection is Linux-only"
)


class Target:
    """A target script running under one interpreter, with its stdout lines at hand."""

    def __init__(self, interp: Interpreter, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            interp.command(str(TARGETS / script), *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buf = b""
        ready = self.readline(30.0).split()
        assert ready and ready[0] == "READY", f"{script} did not start: {ready}"
        self.pid = int(ready[1])
        self.extra = ready[2:]
        assert self.pid == self.proc.pid

    def readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return ""
            chunk = os.read(fd, 4096)
            if not chunk:
                return ""
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def python(self) -> PythonTarget:
        return inspect_target(self.pid)

    def finish(self, timeout: float = 20.0) -> tuple[int, str]:
        """Wait for the exit; the last stdout line and the exit status."""
        last = ""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if not line:
                break
            last = line
        code = self.proc.wait(max(0.1, deadline - time.monotonic()))
        return code, last

    def stderr(self) -> str:
        """The target's stderr once it has exited (for assertion messages)."""
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Target]]:
    started: list[Target] = []

    def run(interp: Interpreter, script: str, *args: str) -> Target:
        t = Target(interp, script, *args)
        started.append(t)
        return t

    yield run
    for t in started:
        t.kill()


def probe(out: Path, tag: str, body: str = "", *, unmap: bool = False) -> Any:
    """A wrapped source that appends one JSON line about where it ran to ``out``.

    Like heapspy's real bootstrap it runs in a fresh namespace and lets nothing escape.
    With ``unmap`` it is a function of the page address (as ``inject_pending_call``
    allows) and the injected code unmaps its own page, as the agent does.
    """
    code = (
        "import json, os, threading, time\n"
        f"rec = dict(tag={tag!r}, main=threading.current_thread() is threading.main_thread(),"
        " ident=threading.get_ident(), pid=os.getpid(), t=time.monotonic())\n"
        f"with open({str(out)!r}, 'a') as f:\n"
        "    f.write(json.dumps(rec) + '\\n')\n"
    ) + body

    def wrap(code: str) -> bytes:
        wrapped = f"try:exec({code!r},{{'__builtins__':__builtins__}})\n"
        return (wrapped + "except BaseException:pass\n").encode()

    if not unmap:
        return wrap(code)

    def render(page: int) -> bytes:
        unmap_first = (
            "import ctypes\n"
            "libc = ctypes.CDLL(None)\n"
            "libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]\n"
            f"libc.munmap({page}, 4096)\n"
        )
        return wrap(unmap_first + code)

    return render


def records(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    # complete lines only: the target may be writing the next one as we read
    complete = out.read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete if line.strip()]


def wait_records(out: Path, n: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = records(out)
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.002)


def main_thread_in(pid: int, kind: str) -> bool:
    """Wait until the target's main thread is in ``kind`` (futex, sleep, io, poll, ...)."""
    return wait_for(lambda: main_thread_activity(pid).kind == kind, 30)


def _signals_pending(pid: int) -> bool:
    """A signal the kernel has not yet delivered, to the process or to any thread."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                fields = dict(line.split(":\t", 1) for line in f if ":\t" in line)
        except FileNotFoundError:  # noqa: PERF203 - a thread that ended meanwhile
            continue
        if int(fields["SigPnd"], 16) or int(fields["ShdPnd"], 16):
            return True
    return False


def map_count(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return sum(1 for _ in f)


def anon_exec_pages(pid: int) -> int:
    """Pages in anonymous r-x mappings: where heapspy's pages live (adjacent ones merge)."""
    pages = 0
    for m in read_maps(pid):
        if m.perms.startswith("r-x") and not m.path and not m.inode:
            pages += (m.end - m.start) // 4096
    return pages


def connect(port: int, line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(line.encode() + b"\n")
        return s.makefile("rb").readline().decode().strip()


# --- every interpreter ---------------------------------------------------------------------


@pytest.mark.parametrize("interp", ALL)
def test_busy_main_thread_runs_source_and_keeps_its_state(
    interp: Interpreter, start: Callable[..., Target], tmp_path: Path
) -> None:
    stop, out = tmp_path / "stop", tmp_path / "out.jsonl"
    t = start(interp, "busy.py", str(stop))
    target = t.python()
    report = inject_pending_call(target, probe(out, "first"))
    first = wait_records(out, 1, 30.0)
    assert first, f"probe never ran: {t.stderr()}"
    assert first[0]["main"] is True and first[0]["pid"] == t.pid
    assert report.main_thread == "running" and report.syscall is None and not report.nudged
    assert report.page % 4096 == 0 and report.page_size == 4096

    # exceptions, SystemExit included, stay inside the wrapped source
    inject_pending_call(target, probe(out, "raise", "raise ValueError('boom')\n"))
    inject_pending_call(target, probe(out, "exit", "raise SystemExit(3)\n"))
    inject_pending_call(target, probe(out, "after"))
    got = wait_records(out, 4, 30.0)
    assert [r["tag"] for r in got] == ["first", "raise", "exit", "after"]
    assert len({r["ident"] for r in got}) == 1

    stop.touch()
    code, last = t.finish()
    assert code == 0, (last, t.stderr())
    rounds, mismatches = map(int, last.split()[1:])
    assert rounds > 0 and mismatches == 0


@pytest.mark.parametrize("interp", ALL)
def test_sleeping_main_thread_runs_source_when_sleep_returns(
    interp: Interpreter, start: Callable[..., Target], tmp_path: Path
) -> None:
    stop, out = tmp_path / "stop", tmp_path / "out.jsonl"
    t = start(interp, "sleeper.py", str(stop), "0.4")
    assert main_thread_in(t.pid, "sleep"), main_thread_activity(t.pid)
    report = inject_pending_call(t.python(), probe(out, "slept"))
    assert report.main_thread in ("clock_nanosleep", "pselect6", "select", "nanosleep"), report
    assert report.syscall is not None and not report.nudged
    got = wait_records(out, 1, 30.0)
    assert got and got[0]["main"]
    # the restarted sleep kept its deadline: sleeper.py counts sleeps that came back early
    stop.touch()
    code, last = t.finish()
    assert code == 0 and last.split()[2] == "0", (last, t.stderr())


@pytest.mark.parametrize("interp", ALL)
def test_futex_wait_is_nudged_and_keeps_waiting(
    interp: Interpreter, start: Callable[..., Target], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    t = start(interp, "lock_waiter.py", "event")
    assert main_thread_in(t.pid, "futex"), describe_main_thread(t.pid)
    report = inject_pending_call(t.python(), probe(out, "nudged"))
    assert report.main_thread == "futex wait" and report.nudged, report
    # the wait lasts until the release below: the call ran because the nudge woke it
    got = wait_records(out, 1, 30.0)
    assert got and got[0]["main"], t.stderr()
    # and the wait went on (lock_waiter.py says EARLY if it ended before the release)
    t.send("go")
    code, last = t.finish()
    assert code == 0 and last.startswith("WOKE"), (last, t.stderr())


@pytest.mark.parametrize("interp", ALL)
def test_accept_runs_source_on_next_connection(
    interp: Interpreter, start: Callable[..., Target], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    t = start(interp, "accept_server.py")
    port = int(t.extra[0])
    assert main_thread_in(t.pid, "io")
    assert main_thread_activity(t.pid).description in ("blocked in accept", "blocked in accept4")
    report = inject_pending_call(t.python(), probe(out, "accepted"))
    assert report.main_thread in ("accept", "accept4"), report
    assert not report.nudged
    connected = time.monotonic()
    assert connect(port, "hello") == "ECHO hello"
    got = wait_records(out, 1, 30.0)
    assert got and got[0]["main"]
    # accept() is restarted, not run through the eval loop: the call ran once it returned
    assert got[0]["t"] >= connected
    assert connect(port, "quit") == "ECHO quit"
    assert t.finish()[0] == 0


# --- one static and one shared build -------------------------------------------------------


@pytest.mark.parametrize("interp", STATIC_AND_SHARED)
def test_without_nudge_futex_wait_holds_the_call(
    interp: Interpreter, start: Callable[..., Target], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    t = start(interp, "lock_waiter.py", "lock")
    assert main_thread_in(t.pid, "futex")
    target = t.python()
    report = inject_pending_call(target, probe(out, "held"), nudge=False)
    assert report.main_thread == "futex wait" and not report.nudged
    nudging = time.monotonic()
    inject_pending_call(target, probe(out, "nudge"))
    got = wait_records(out, 2, 30.0)
    assert [r["tag"] for r in got] == ["held", "nudge"]
    assert got[0]["t"] >= nudging  # the held call ran only once the nudge woke the wait
    t.send("go")
    code, last = t.finish()
    assert code == 0 and last.startswith("WOKE"), (last, t.stderr())


@pytest.mark.parametrize("interp", STATIC_AND_SHARED)
def test_join_wait_is_nudged(
    interp: Interpreter, start: Callable[..., Target], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    t = start(interp, "lock_waiter.py", "join")
    assert main_thread_in(t.pid, "futex")
    report = inject_pending_call(t.python(), probe(out, "join"))
    assert report.nudged
    assert wait_records(out, 1, 30.0)
    t.send("go")  # the join goes on until now: lock_waiter.py says EARLY otherwise
    code, last = t.finish()
    assert code == 0 and last.startswith("WOKE"), (last, t.stderr())


@pytest.mark.parametrize("interp", STATIC_AND_SHARED)
@pytest.mark.parametrize("spinners", [0, 1])
def test_signals_sent_while_held_arrive_once(
    interp: Interpreter, spinners: int, start: Callable[..., Target], tmp_path: Path
) -> None:
    stop, out = tmp_path / "stop", tmp_path / "out.jsonl"
    t = start(interp, "signals.py", str(stop), str(spinners))

    def send() -> None:
        os.kill(t.pid, signal.SIGUSR1)  # to the process
        assert _libc.tgkill(t.pid, t.pid, signal.SIGUSR2) == 0  # to the held main thread

    report = inject_pending_call(t.python(), probe(out, "signals"), on_stopped=send)
    assert report.redelivered_signals == ()  # they were blocked, not taken and re-sent
    assert wait_records(out, 1, 30.0)
    # once the kernel has delivered both, the busy main thread runs their Python handlers
    # at its next bytecode, before it next looks for the stop file
    assert wait_for(lambda: not _signals_pending(t.pid), 30)
    stop.touch()
    code, last = t.finish()
    assert code == 0, (last, t.stderr())
    assert last.split()[1:] == ["1", "1", "0"]


@pytest.mark.parametrize("interp", STATIC_AND_SHARED)
@pytest.mark.parametrize("spinners", [0, 2])
def test_sigstop_while_held_leaves_the_process_stopped(
    interp: Interpreter, spinners: int, start: Callable[..., Target], tmp_path: Path
) -> None:
    """Single-threaded, the held thread takes SIGSTOP itself (held back, re-sent);
    with other threads, one of them may start the group stop instead, which the kernel
    re-applies to the held thread when heapspy detaches."""
    stop, out = tmp_path / "stop", tmp_path / "out.jsonl"
    t = start(interp, "busy.py", str(stop), str(spinners))
    report = inject_pending_call(
        t.python(), probe(out, "stopped"), on_stopped=lambda: os.kill(t.pid, signal.SIGSTOP)
    )
    assert main_thread_in(t.pid, "stopped"), report
    # with other threads either may take it first: both ways end in one group stop
    assert report.redelivered_signals in (
        ((signal.SIGSTOP,), ()) if spinners else ((signal.SIGSTOP,),)
    )
    with pytest.raises(InjectionFailed, match="stopped"):
        inject_pending_call(t.python(), probe(out, "refused"))
    os.kill(t.pid, signal.SIGCONT)
    got = wait_records(out, 1, 30.0)
    assert [r["tag"] for r in got] == ["stopped"]
    stop.touch()
    code, last = t.finish()
    assert code == 0 and last.split()[2] == "0", (last, t.stderr())


@pytest.mark.parametrize("interp", STATIC_AND_SHARED)
def test_queue_full_is_refused_cleanly(
    interp: Interpreter, start: Callable[..., Target], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    t = start(interp, "lock_waiter.py", "lock")
    assert main_thread_in(t.pid, "futex")
    target = t.python()
    inject_pending_call(target, b"pass\n", nudge=False)  # warm up: ctypes, caches
    baseline = map_count(t.pid)
    queued = 1
    with pytest.raises(InjectionFailed, match="queue is full"):
        for i in range(400):
            inject_pending_call(target, probe(out, str(i), unmap=True), nudge=False)
            queued += 1
    assert 30 <= queued <= 400
    after_refusal = map_count(t.pid)
    assert after_refusal <= baseline + queued  # the refused call's page was unmapped
    t.send("go")
    code, last = t.finish()
    assert code == 0 and last.startswith("WOKE"), (last, t.stderr())
    assert len(records(out)) == queued - 1


@pytest.mark.parametrize("interp", STATIC_AND_SHARED)
def test_disarm_and_unmap(
    interp: Interpreter, start: Callable[..., Target], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    t = start(interp, "lock_waiter.py", "lock")
    assert main_thread_in(t.pid, "futex")
    baseline = map_count(t.pid)
    report = inject_pending_call(t.python(), probe(out, "never"), nudge=False)
    assert map_count(t.pid) >= baseline
    disarm_pending_call(report)
    t.send("go")  # the queued call runs now, with an empty source
    code, last = t.finish()
    assert code == 0 and last.startswith("WOKE"), (last, t.stderr())
    assert records(out) == []


@pytest.mark.parametrize("interp", STATIC_AND_SHARED)
def test_unmap_page_after_the_call_ran(
    interp: Interpreter, start: Callable[..., Target], tmp_path: Path
) -> None:
    stop, out = tmp_path / "stop", tmp_path / "out.jsonl"
    t = start(interp, "sleeper.py", str(stop), "0.05")
    target = t.python()
    inject_pending_call(target, probe(out, "warm"))
    assert wait_records(out, 1, 30.0)
    baseline = map_count(t.pid)
    report = inject_pending_call(target, probe(out, "ran"))
    assert wait_records(out, 2, 30.0)
    unmap_page(t.pid, report.page, report.page_size)
    assert map_count(t.pid) == baseline
    with open(f"/proc/{t.pid}/maps") as f:
        assert f"{report.page:x}-" not in f.read()
    stop.touch()
    code, last = t.finish()
    assert code == 0 and last.split()[2] == "0", (last, t.stderr())


@pytest.mark.parametrize("interp", STATIC_AND_SHARED)
def test_asyncio_idle_loop_runs_source_on_next_event(
    interp: Interpreter, start: Callable[..., Target], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    t = start(interp, "asyncio_idle.py")
    port = int(t.extra[0])
    assert main_thread_in(t.pid, "poll")
    report = inject_pending_call(t.python(), probe(out, "loop"))
    assert report.main_thread.startswith("epoll"), report
    connected = time.monotonic()
    assert connect(port, "ping") == "ECHO ping"
    got = wait_records(out, 1, 30.0)
    assert got and got[0]["main"]
    assert got[0]["t"] >= connected  # the idle loop ran it on the event, not before
    assert connect(port, "quit") == "ECHO quit"
    assert t.finish()[0] == 0


@pytest.mark.parametrize("interp", STATIC_AND_SHARED)
def test_eight_spinning_threads(
    interp: Interpreter, start: Callable[..., Target], tmp_path: Path
) -> None:
    stop, out = tmp_path / "stop", tmp_path / "out.jsonl"
    t = start(interp, "busy.py", str(stop), "8")
    report = inject_pending_call(t.python(), probe(out, "spin"))
    got = wait_records(out, 1, 10.0)
    assert got and got[0]["main"], report
    stop.touch()
    code, last = t.finish()
    assert code == 0 and last.split()[2] == "0", (last, t.stderr())


# --- failures leave the target as it was ---------------------------------------------------


def _pick(interp_id: str) -> Interpreter:
    """That interpreter if it is here, else the newest runnable one up to 3.13."""
    usable = [p.values[0] for p in ALL if not p.marks or p.values[0].version <= (3, 13)]
    for interp in usable:
        if interp.label == interp_id:
            return interp  # type: ignore[no-any-return]
    if not usable:
        pytest.skip("no CPython 3.8-3.13 found")
    return usable[-1]  # type: ignore[no-any-return]


@pytest.fixture
def busy(start: Callable[..., Target], tmp_path: Path) -> Target:
    return start(_pick("3.11-debian-static"), "busy.py", str(tmp_path / "stop"))


def _finish_busy(t: Target, tmp_path: Path) -> None:
    (tmp_path / "stop").touch()
    code, last = t.finish()
    assert code == 0 and last.split()[2] == "0", (last, t.stderr())


def test_fault_in_injected_call_is_undone(busy: Target, tmp_path: Path) -> None:
    plan = inject_plan.plan_pending_call(busy.python())
    bad = inject_plan.Plan(plan.pid, plan.arch, plan.syscall_insn, 0x10, plan.run_simple_string)
    before = map_count(busy.pid)
    with pytest.raises(InjectionFailed, match="SIGSEGV"):
        ptrace.Injector(bad).inject(lambda page: b"pass\n", nudge=True, timeout=5.0, hook=None)
    assert busy.proc.poll() is None  # and the injection below shows it still runs Python
    assert map_count(busy.pid) <= before + 1  # the page stays: the call may have queued it
    out = tmp_path / "out.jsonl"
    inject_pending_call(busy.python(), probe(out, "after"))
    assert wait_records(out, 1, 30.0)
    _finish_busy(busy, tmp_path)


def test_hung_call_times_out_and_is_undone(busy: Target, tmp_path: Path) -> None:
    """A call that never returns (here: pause(), all signals blocked) is taken back."""
    plan = inject_plan.plan_pending_call(busy.python())
    maps = read_maps(busy.pid)
    libc = next(m.path for m in maps if os.path.basename(m.path).startswith("libc.so"))
    pause = ElfImage(busy.pid, maps, libc).symbol("pause")
    assert pause is not None
    hung = inject_plan.Plan(plan.pid, plan.arch, plan.syscall_insn, pause, 0)
    with pytest.raises(InjectionFailed, match="Py_AddPendingCall"):
        ptrace.Injector(hung).inject(lambda page: b"pass\n", nudge=False, timeout=0.5, hook=None)
    # a poke left queued would kill it with SIGTRAP as it runs on: it runs Python again,
    # and exits 0 when told
    out = tmp_path / "out.jsonl"
    inject_pending_call(busy.python(), probe(out, "after"))
    assert wait_records(out, 1, 30.0)
    _finish_busy(busy, tmp_path)


def test_target_killed_while_held(busy: Target) -> None:
    with pytest.raises(TargetExited):
        inject_pending_call(
            busy.python(), b"pass\n", on_stopped=lambda: os.kill(busy.pid, signal.SIGKILL)
        )


def test_exception_in_hook_restores_target(busy: Target, tmp_path: Path) -> None:
    def boom() -> None:
        raise RuntimeError("hook")

    with pytest.raises(RuntimeError, match="hook"):
        inject_pending_call(busy.python(), b"pass\n", on_stopped=boom)
    with open(f"/proc/{busy.pid}/status") as f:
        assert "TracerPid:\t0" in f.read()
    _finish_busy(busy, tmp_path)


def test_exited_and_non_python_processes(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises((NoSuchProcess, TargetExited)):
        inspect_target(proc.pid)
    fake = PythonTarget(proc.pid, (3, 11), None, False, "/usr/bin/python3.11", "?", 0, "x")
    with pytest.raises((NoSuchProcess, TargetExited)):
        inject_pending_call(fake, b"pass\n")

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        # until the exec, the child is a copy of this Python
        assert wait_for(lambda: main_thread_activity(sleeper.pid).kind == "sleep", 30)
        with pytest.raises(NotPython):
            inspect_target(sleeper.pid)
        exe = os.readlink(f"/proc/{sleeper.pid}/exe")
        fake = PythonTarget(sleeper.pid, (3, 11), None, False, exe, exe, 0, "sleep")
        with pytest.raises(UnrecognisedPython, match="Py_AddPendingCall"):
            inject_pending_call(fake, b"pass\n")
        assert main_thread_activity(sleeper.pid).kind == "sleep"
    finally:
        sleeper.kill()
        sleeper.wait()


def _tracer_command(pid: int) -> list[str] | None:
    strace = shutil.which("strace")
    if strace:
        return [strace, "-q", "-p", str(pid), "-o", "/dev/null"]
    gdb = shutil.which("gdb")
    if gdb:
        return [gdb, "-q", "-nx", "-p", str(pid), "-ex", "continue &", "-ex", "shell sleep 30"]
    return None


def test_other_tracer_is_named(busy: Target, tmp_path: Path) -> None:
    command = _tracer_command(busy.pid)
    if command is None:
        pytest.skip("neither strace nor gdb is installed to hold the target")
    tracer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{busy.pid}/status") as f:
                if f"TracerPid:\t{tracer.pid}" in f.read():
                    break
            time.sleep(0.02)
        else:
            pytest.skip(f"{command[0]} could not attach to the target (probed for 10 s)")
        with pytest.raises(TracerAttached) as info:
            inject_pending_call(busy.python(), b"pass\n")
        assert str(tracer.pid) in info.value.message
        assert os.path.basename(command[0]) in info.value.message
    finally:
        tracer.terminate()
        tracer.wait()
    _finish_busy(busy, tmp_path)


def _as_nobody(*argv: str) -> list[str]:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run processes as user nobody")
    return [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]


def _inject_as_nobody(pid: int) -> list[str]:
    """Run inject_pending_call as user nobody; the error class and message it prints."""
    script = (
        "from heapspy.errors import HeapspyError\n"
        "from heapspy.inject.ptrace import inject_pending_call\n"
        "from heapspy.target.process import PythonTarget\n"
        f"t = PythonTarget({pid}, (3, 11), None, False, '/usr/bin/python3.11', '?', 0, 'x')\n"
        "try:\n"
        "    inject_pending_call(t, b'pass\\n')\n"
        "    print('injected')\n"
        "except HeapspyError as e:\n"
        "    print(type(e).__name__); print(e)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME="/nonexistent", XDG_CACHE_HOME="/tmp")
    importable = subprocess.run(
        _as_nobody(sys.executable, "-c", "import heapspy.inject.ptrace"),
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if importable.returncode != 0:
        pytest.skip(f"heapspy cannot be imported as nobody here: {importable.stderr[-300:]}")
    run = subprocess.run(
        _as_nobody(sys.executable, "-c", script),
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


@pytest.mark.privileged
def test_permission_denied_for_another_user(busy: Target, tmp_path: Path) -> None:
    lines = _inject_as_nobody(busy.pid)
    assert lines[0] == "PermissionDenied", lines
    text = "\n".join(lines)
    assert "runs as uid 0" in text and "CAP_SYS_PTRACE" in text and "sudo -u" in text
    assert busy.proc.poll() is None
    _finish_busy(busy, tmp_path)


@pytest.mark.privileged
def test_permission_denied_for_a_non_dumpable_target() -> None:
    code = (
        "import ctypes, os, time\n"
        "ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)\n"  # PR_SET_DUMPABLE, 0
        "print('READY', os.getpid(), flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        _as_nobody("/usr/bin/python3.11", "-c", code), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline().split()[1])
        lines = _inject_as_nobody(pid)  # same user, but not dumpable
        assert lines[0] == "PermissionDenied", lines
        assert "not dumpable" in lines[1] and "CAP_SYS_PTRACE" in "\n".join(lines)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_describe_running_thread(busy: Target, tmp_path: Path) -> None:
    assert describe_main_thread(busy.pid).startswith("running")
    _finish_busy(busy, tmp_path)


# --- soak ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("interp", ALL)
def test_two_hundred_injections_into_a_busy_threaded_target(
    interp: Interpreter, start: Callable[..., Target], tmp_path: Path
) -> None:
    stop, out = tmp_path / "stop", tmp_path / "out.jsonl"
    t = start(interp, "busy.py", str(stop), "2")
    target = t.python()
    for i in range(5):  # the probe's imports (ctypes, _struct) settle in first
        inject_pending_call(target, probe(out, "warm", unmap=True))
        assert wait_records(out, i + 1, 10.0)
    baseline, baseline_exec = map_count(t.pid), anon_exec_pages(t.pid)
    for i in range(200):
        inject_pending_call(target, probe(out, str(i), unmap=True))
        got = wait_records(out, i + 6, 20.0)
        assert len(got) == i + 6, f"injection {i} never ran"
    got = records(out)
    assert all(r["main"] and r["pid"] == t.pid for r in got)
    assert [r["tag"] for r in got[5:]] == [str(i) for i in range(200)]
    assert anon_exec_pages(t.pid) == baseline_exec  # every page was unmapped
    # and nothing else piles up (a new 1 MiB pymalloc arena or a heap split may come and go)
    assert map_count(t.pid) <= baseline + 2
    stop.touch()
    code, last = t.finish()
    assert code == 0 and last.split()[2] == "0", (last, t.stderr())
    # how long the target was held is benchmarks/attach_latency_ptrace.py's to measure
