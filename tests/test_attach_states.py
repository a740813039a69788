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
from heapspy.session import Session
from heapspy.target.threads import main_thread_activity

Spawn = Callable[..., Target]


def _attach_once(target: Target, tmp_path: Path, **kw: object) -> None:
    """Attach and detach; raises (AgentTimeout, exit 11) if the agent never starts."""
    config = AttachConfig(dump_dir=tmp_path, final_dump=False, **kw)  # type: ignore[arg-type]
    Session.attach(target.pid, config).detach()


@pytest.mark.parametrize("mode", ["threads", "asyncio", "lock"])
@pytest.mark.parametrize("interp", interpreter_params(min_version=(3, 11)))
def test_agent_starts(interp: Interpreter, mode: str, spawn: Spawn, tmp_path: Path) -> None:
    """The agent starts at all, whatever the main thread does: nine threads fighting for
    the GIL, an idle event loop, a lock that is never released (PEP 768 runs at the next
    bytecode, which that main thread never reaches: on 3.14 the default falls back to
    ptrace and its futex nudge there). How soon is measured by
    benchmarks/agent_start_by_state.py, not here: a loaded machine stretches it."""
    target = spawn(interp, "probe_target.py", mode)
    _attach_once(target, tmp_path, attach_timeout=60.0)
    assert target.state()["modules"] == []


def test_thread_option_reaches_a_busy_worker_on_314(spawn: Spawn, tmp_path: Path) -> None:
    """The main thread sleeps for an hour, so only the chosen worker can start the agent."""
    target = spawn(py314(), "probe_target.py", "sleep-worker", env={"PROBE_SLEEP": "3600"})
    worker = int(target.ready[2])
    _attach_once(target, tmp_path, thread=worker, attach_timeout=60.0)
    assert target.state()["modules"] == []


def test_blocked_main_thread_on_314_suggests_thread(spawn: Spawn) -> None:
    """Told to use PEP 768 (so heapspy leaves the main thread as the choice), a main
    thread asleep for an hour is not served in time: the error names the busy worker."""
    interp = py314()
    target = spawn(interp, "probe_target.py", "sleep-worker", env={"PROBE_SLEEP": "3600"})
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


@pytest.mark.py314
def test_main_thread_in_join_on_314_with_no_nudge_times_out_with_advice(spawn: Spawn) -> None:
    """--no-nudge forbids waking the wait, so with no other thread running Python nothing
    can start the agent: the attach times out (exit 11) and says what would work."""
    target = spawn(py314(), "probe_target.py", "join-idle")
    assert wait_for(lambda: _main_thread_waits_on_a_lock(target.pid))
    out = run_heapspy("attach", str(target.pid), "--no-nudge", "--attach-timeout", "1s")
    assert out.returncode == 11, out.stderr
    assert "waiting on a futex" in out.stderr, out.stderr
    assert "--method ptrace without --no-nudge wakes such a wait" in out.stderr, out.stderr
    assert target.alive() and heapspy_dirs_in_tmp(target.pid) == []


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
    """The main thread sleeps for an hour: the agent cannot start until the test wakes it
    (a signal runs Python in it). A Ctrl-C meanwhile is answered at once, that is before
    the agent has started, and the session ends cleanly once it has."""
    target = spawn(None, "probe_target.py", "sleep", env={"PROBE_SLEEP": "3600"})
    holder = subprocess.Popen(
        [sys.executable, "-m", "heapspy", "attach", str(target.pid), "--dump-dir", str(tmp_path),
         "--attach-timeout", "120s"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        # the agent's files are placed once heapspy listens for signals
        assert wait_for(lambda: heapspy_dirs_in_tmp(target.pid) != [], 60), "never placed"
        holder.send_signal(signal.SIGINT)
        assert holder.stderr is not None
        first = holder.stderr.readline()
        assert first.startswith("heapspy: interrupted: detaching as soon as the agent has"), first
        # the probe's signal runs Python in the main thread, which starts the agent once
        # it is queued (the files are placed before it is)
        assert wait_for(lambda: bool(target.state()) and holder.poll() is not None, 60)
        rest = holder.stderr.read()
        assert holder.wait(timeout=60) == 0, rest
    finally:
        holder.kill()
        holder.communicate()
    assert f"detached from {target.pid} (interrupted)" in rest, rest
    assert target.alive() and target.state()["modules"] == []
