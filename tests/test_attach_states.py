"""How the agent starts for each thing a main thread may be doing."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from interpreters import Interpreter, interpreter_params, py314
from support import Target, heapspy_dirs_in_tmp, run_heapspy, wait_for

from heapspy.config import AttachConfig
from heapspy.inject.ptrace import main_thread_activity
from heapspy.session import Session

Spawn = Callable[..., Target]


def _attach_once(target: Target, tmp_path: Path, **kw: object) -> float:
    config = AttachConfig(dump_dir=tmp_path, final_dump=False, **kw)  # type: ignore[arg-type]
    t0 = time.monotonic()
    session = Session.attach(target.pid, config)
    took = time.monotonic() - t0
    session.detach()
    return took


@pytest.mark.parametrize("mode", ["threads", "asyncio", "lock"])
@pytest.mark.parametrize("interp", interpreter_params(min_version=(3, 11)))
def test_agent_starts_promptly(
    interp: Interpreter, mode: str, spawn: Spawn, tmp_path: Path
) -> None:
    # PEP 768 runs at the next bytecode, which a main thread blocked on a lock never
    # reaches: on 3.14 the default falls back to ptrace and its futex nudge there.
    target = spawn(interp, "probe_target.py", mode)
    took = _attach_once(target, tmp_path)
    # 9 threads fighting for the GIL on 2 cores: every GIL release in the bootstrap
    # (file reads, imports) waits its turn, so allow seconds there
    assert took < (10.0 if mode == "threads" else 2.0), f"{mode}: agent took {took:.2f} s"
    assert target.state()["modules"] == []


def test_thread_option_reaches_a_busy_worker_on_314(spawn: Spawn, tmp_path: Path) -> None:
    interp = py314()
    target = spawn(interp, "probe_target.py", "sleep-worker")
    worker = int(target.ready[2])
    took = _attach_once(target, tmp_path, thread=worker, attach_timeout=5.0)
    assert took < 1.0
    assert target.state()["modules"] == []


def test_blocked_main_thread_on_314_suggests_thread(spawn: Spawn) -> None:
    """Told to use PEP 768 (so heapspy leaves the main thread as the choice), a main
    thread asleep for seconds is not served in time: the error names the busy worker."""
    interp = py314()
    target = spawn(interp, "probe_target.py", "sleep-worker")
    worker = int(target.ready[2])
    out = run_heapspy("attach", str(target.pid), "--attach-timeout", "1s", "--method", "pep768")
    assert out.returncode == 11, out.stderr
    assert f"--thread {worker}" in out.stderr
    assert heapspy_dirs_in_tmp(target.pid) == []  # the request was withdrawn


def _main_thread_waits_on_a_lock(pid: int) -> bool:
    return main_thread_activity(pid).kind == "futex"


def _attach_for_a_second(pid: int) -> subprocess.CompletedProcess[str]:
    out = run_heapspy("attach", str(pid), "--duration", "1", "--no-final-dump")
    assert out.returncode == 0, out.stderr
    assert f"detached from {pid} (duration elapsed)" in out.stderr, out.stderr
    return out


@pytest.mark.py314
def test_main_thread_in_join_on_314_starts_from_a_python_worker(spawn: Spawn) -> None:
    """The commonest server shape: the main thread in Thread.join(), workers running
    Python. PEP 768 aimed at the main thread would wait forever; by default heapspy
    aims at a worker that runs Python, and says so."""
    target = spawn(py314(), "probe_target.py", "join-workers")
    workers = {int(tid) for tid in target.ready[2:]}
    assert wait_for(lambda: _main_thread_waits_on_a_lock(target.pid))
    out = _attach_for_a_second(target.pid)
    assert "via pep768" in out.stderr, out.stderr
    chosen = re.search(r"note: the main thread is waiting on a futex .*: the agent was started "
                       r"from thread (\d+), which runs Python\n", out.stderr)
    assert chosen and int(chosen[1]) in workers, out.stderr
    assert target.alive() and target.state()["modules"] == []
    assert _main_thread_waits_on_a_lock(target.pid)  # still joining
    assert heapspy_dirs_in_tmp(target.pid) == []


@pytest.mark.py314
def test_main_thread_in_join_on_314_with_every_thread_idle_uses_ptrace(spawn: Spawn) -> None:
    """No thread runs Python, so no PEP 768 request would ever be served: heapspy uses
    ptrace, whose nudge turns the join's futex wait into EINTR (CPython runs the pending
    call and waits again), and says so. The join must go on: an early return would end
    the target's script."""
    target = spawn(py314(), "probe_target.py", "join-idle")
    assert wait_for(lambda: _main_thread_waits_on_a_lock(target.pid))
    out = _attach_for_a_second(target.pid)
    assert "via ptrace" in out.stderr, out.stderr
    assert "and no other thread runs Python: the agent was started by ptrace" in out.stderr
    assert target.alive() and target.state()["modules"] == []
    assert wait_for(lambda: _main_thread_waits_on_a_lock(target.pid))
    assert target.alive()
    assert heapspy_dirs_in_tmp(target.pid) == []


@pytest.mark.parametrize("interp", interpreter_params(min_version=(3, 13)))
def test_accept_blocked_main_thread_times_out_with_reason(
    interp: Interpreter, spawn: Spawn
) -> None:
    target = spawn(interp, "probe_target.py", "accept")
    out = run_heapspy("attach", str(target.pid), "--attach-timeout", "1s")
    assert out.returncode == 11, out.stderr
    assert "accept" in out.stderr
    assert target.alive()


def test_lock_blocked_main_thread_on_314_suggests_ptrace(spawn: Spawn) -> None:
    target = spawn(py314(), "probe_target.py", "lock")
    out = run_heapspy("attach", str(target.pid), "--attach-timeout", "1s", "--method", "pep768")
    assert out.returncode == 11, out.stderr
    assert "waiting on a futex" in out.stderr and "--method ptrace" in out.stderr
    assert heapspy_dirs_in_tmp(target.pid) == []


@pytest.mark.parametrize("interp", interpreter_params())
def test_main_thread_inside_a_slow_import(interp: Interpreter, spawn: Spawn) -> None:
    """The bootstrap runs wherever the interpreter checks for pending calls, here inside
    the target's first `import json`, with json half-made in sys.modules. The agent,
    which imports json, must wait for that import instead of taking the half-made
    module (which failed with ImportError/AttributeError), and the target's own import
    must finish as if nothing happened."""
    target = spawn(interp, "slow_import.py", "2.5")
    t0 = time.monotonic()
    out = run_heapspy("attach", str(target.pid), "--duration", "1", "--no-final-dump")
    assert out.returncode == 0, out.stderr
    assert f"attached to {target.pid}" in out.stderr
    assert time.monotonic() - t0 >= 2.0  # the agent could only start once json was done
    assert target.proc.stdout is not None
    assert target.proc.stdout.readline() == "IMPORTED\n"
    assert target.proc.poll() is None
    assert heapspy_dirs_in_tmp(target.pid) == []


def test_ctrl_c_while_the_agent_is_on_its_way_is_answered_at_once(
    spawn: Spawn, tmp_path: Path
) -> None:
    """The main thread sleeps 5 s at a time: the agent starts when the sleep returns.
    A Ctrl-C meanwhile is answered at once, and the session ends cleanly once it has."""
    target = spawn(None, "probe_target.py", "sleep", env={"PROBE_SLEEP": "5"})
    holder = subprocess.Popen(
        [sys.executable, "-m", "heapspy", "attach", str(target.pid), "--dump-dir", str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        holder.send_signal(signal.SIGINT)
        said = time.monotonic()
        assert holder.stderr is not None
        first = holder.stderr.readline()
        assert time.monotonic() - said < 1.0, first  # not after the agent started
        assert first.startswith("heapspy: interrupted: detaching as soon as the agent has"), first
        rest = holder.stderr.read()
        assert holder.wait(timeout=20) == 0, rest
    finally:
        holder.kill()
        holder.communicate()
    assert f"detached from {target.pid} (interrupted)" in rest, rest
    assert target.alive() and target.state()["modules"] == []
