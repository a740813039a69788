"""Attach to real targets on every interpreter, and leave them exactly as they were."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest
from interpreters import Interpreter, interpreter_params, py314
from support import Target, heapspy_dirs_in_tmp, wait_for

from heapspy.config import AttachConfig
from heapspy.errors import AlreadyAttached
from heapspy.pprof import decode_profile
from heapspy.session import Session

Spawn = Callable[..., Target]


def _wait(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    return wait_for(cond, timeout)


def _fds(state: dict[str, object]) -> list[str]:
    """The target's fds, less the one libffi >= 3.4 keeps on its own file for static
    trampolines once ctypes is imported: a stdlib module staying imported, not ours."""
    fds = state["fds"]
    assert isinstance(fds, list)
    return [fd for fd in fds if "libffi" not in fd]


def _clean(target: Target, before: dict[str, object], threads: int) -> None:
    """The target after detach: no agent module, thread, hook, file or fd of ours."""
    assert _wait(lambda: target.threads() == threads), "agent thread still running"
    after = target.state()
    assert after["modules"] == [] and after["path"] == [] and after["main_globals"] == []
    assert after["tracing"] is False
    assert after["agent_objects"] == []  # e.g. none held by a leftover atexit entry
    assert after["threads"] == before["threads"]
    assert _fds(after) == _fds(before)
    assert heapspy_dirs_in_tmp(target.pid) == []
    assert target.alive()


@pytest.mark.parametrize("interp", interpreter_params())
def test_attach_profiles_and_detaches_cleanly(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    target = spawn(interp, "probe_target.py", "busy")
    before = target.state()
    threads = target.threads()
    config = AttachConfig(dump_dir=tmp_path / "dumps", interval=0.3)
    session = Session.attach(target.pid, config)
    try:
        assert session.info is not None
        assert session.info.method == ("pep768" if interp.version >= (3, 14) else "ptrace")
        assert session.info.python.startswith(interp.version_text)
        assert _wait(lambda: target.threads() == threads + 1)  # the boot thread ends soon
        session.run(duration=1.5)
    finally:
        session.detach()
    top = session.aggregator.top(1)
    assert top and top[0][0].startswith("retain_blocks (probe_target.py:"), top
    assert len(session.dumps) == 1
    decoded = decode_profile(Path(session.dumps[0]).read_bytes())
    assert any(s.stack[-1].function == "retain_blocks" for s in decoded.samples)
    _clean(target, before, threads)


@pytest.mark.parametrize("interp", interpreter_params())
def test_second_attach_names_the_holder(interp: Interpreter, spawn: Spawn, tmp_path: Path) -> None:
    target = spawn(interp, "probe_target.py", "busy")
    config = AttachConfig(dump_dir=tmp_path, final_dump=False)
    session = Session.attach(target.pid, config)
    try:
        with pytest.raises(AlreadyAttached, match=f"held by pid {os.getpid()}"):
            Session.attach(target.pid, config)
    finally:
        session.detach()


def _heapspy(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "heapspy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _wait_attached(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "attached to" in line, line + proc.stderr.read()
    return line


@pytest.mark.parametrize("interp", interpreter_params(min_version=(3, 11), max_version=(3, 14)))
def test_detach_command_ends_another_session(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    target = spawn(interp, "probe_target.py", "busy")
    holder = _heapspy("attach", str(target.pid), "--dump-dir", str(tmp_path))
    try:
        _wait_attached(holder)
        out = subprocess.run(
            [sys.executable, "-m", "heapspy", "detach", str(target.pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert holder.wait(timeout=15) == 0
        assert len(list(tmp_path.glob("heap-*-final.pb.gz"))) == 1
    finally:
        holder.kill()
        holder.communicate()
    again = subprocess.run(
        [sys.executable, "-m", "heapspy", "detach", str(target.pid)], capture_output=True, text=True
    )
    assert again.returncode == 13 and "No heapspy session holds" in again.stderr


@pytest.mark.parametrize("interp", interpreter_params(min_version=(3, 12), max_version=(3, 14)))
def test_agent_switches_off_when_heapspy_is_killed(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    """... even in a target that restored SIGPIPE's default action: the agent's writes to
    the dead peer must not kill it (they would, but for MSG_NOSIGNAL)."""
    target = spawn(interp, "probe_target.py", "busy", env={"SIGPIPE_DEFAULT": "1"})
    before = target.state()
    threads = target.threads()
    holder = _heapspy("attach", str(target.pid), "--dump-dir", str(tmp_path))
    try:
        _wait_attached(holder)
        assert _wait(lambda: target.threads() == threads + 1)  # the boot thread ends soon
        holder.kill()
        holder.wait()
        killed = time.monotonic()
        # on the socket's end, not after PEER_TIMEOUT's silence
        assert _wait(lambda: target.threads() == threads, timeout=4.0)
        assert time.monotonic() - killed < 4.0
    finally:
        holder.kill()
        holder.communicate()
    _clean(target, before, threads)
    # SIGKILL left the dead holder's lock and socket behind: a new attach must not mind
    again = Session.attach(target.pid, AttachConfig(dump_dir=tmp_path, final_dump=False))
    again.detach()


def _signal_while_attached(
    target: Target, config: AttachConfig, after: float, sampled: bool = False
) -> tuple[Session, str]:
    """Attach, send SIGUSR1 (the probe target's cue) ``after`` seconds in (and, with
    ``sampled``, once the session holds a stack: a loaded machine may take longer), run
    until the session ends (20 s at most), detach; the session and why its run ended."""
    session = Session.attach(target.pid, config)
    try:
        session.run(duration=after)
        deadline = time.monotonic() + 60
        while sampled and not session.aggregator.sites and time.monotonic() < deadline:
            session.run(duration=0.2)
        os.kill(target.pid, signal.SIGUSR1)
        reason = session.run(duration=20)
    finally:
        session.detach()
    return session, reason


def _exit_while_attached(
    interp: Interpreter | None, rate: int, spawn: Spawn, tmp_path: Path
) -> None:
    """A worker that exits between two collections: its atexit callback sends what it
    holds then, so the final dump shows the 32 MiB it kept in its last moment."""
    target = spawn(interp, "probe_target.py", "last-words")
    config = AttachConfig(dump_dir=tmp_path, interval=600.0, rate=rate)
    session, reason = _signal_while_attached(target, config, after=0.3)
    assert reason == "target exited, its last state collected at exit"
    assert target.proc.wait(timeout=10) == 0
    sites = {name: live for name, live, *_ in session.aggregator.top(5)}
    (site,) = [s for s in sites if s.startswith("last_words (probe_target.py:")]
    assert 16 << 20 < sites[site] < 64 << 20, sites
    (dump,) = session.dumps
    decoded = decode_profile(Path(dump).read_bytes())
    assert any(s.stack[-1].function.endswith("last_words") for s in decoded.samples)


@pytest.mark.parametrize("interp", interpreter_params())
def test_what_an_exiting_target_holds_is_in_the_final_dump(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    _exit_while_attached(interp, 512 * 1024, spawn, tmp_path)


def test_exact_mode_collects_at_exit_too(spawn: Spawn, tmp_path: Path) -> None:
    _exit_while_attached(None, 1, spawn, tmp_path)  # heapspy's own interpreter


@pytest.mark.parametrize(
    "interp",
    [p for p in interpreter_params() if p.values[0].label in ("3.8-pyenv", "3.14-debian")],
)
def test_a_target_that_execs_another_program_ends_the_session_saying_so(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    target = spawn(interp, "probe_target.py", "exec")
    config = AttachConfig(dump_dir=tmp_path, interval=0.2)
    session, reason = _signal_while_attached(target, config, after=0.5, sampled=True)
    assert reason == "the process replaced its program: exec sleep 30"
    assert psutil.Process(target.pid).cmdline() == ["sleep", "30"]  # still running
    (dump,) = session.dumps  # what was collected before the exec
    assert decode_profile(Path(dump).read_bytes()).samples


@pytest.mark.parametrize("interp", interpreter_params())
def test_a_forked_child_runs_and_exits_free_of_the_agent(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    """A child forked while attached (a pre-fork server's worker) inherits the hooks but
    not the agent's thread: they go quiet in it, and its exit, atexit callbacks
    included, must neither fail nor talk to heapspy. The parent stays profiled."""
    target = spawn(interp, "probe_target.py", "fork")
    before = target.state()
    threads = target.threads()
    session = Session.attach(target.pid, AttachConfig(dump_dir=tmp_path, interval=0.2))
    try:
        session.run(duration=0.5)
        os.kill(target.pid, signal.SIGUSR1)
        status = Path(f"{target.probe}.status")
        assert wait_for(status.exists, timeout=20)
        assert wait_for(lambda: status.read_text() != "", timeout=5)
        assert int(status.read_text()) == 0  # exited with 0, not killed by a signal
        child = json.loads(Path(f"{target.probe}.child").read_text())
        assert child["threads"] == before["threads"]  # no agent thread in the child
        seen = session.aggregator.intervals
        assert session.run(duration=1.0) == "duration elapsed"
        assert session.aggregator.intervals > seen  # the parent's agent still sends
    finally:
        session.detach()
    _clean(target, before, threads)


def test_sigterm_detaches_cleanly(spawn: Spawn, tmp_path: Path) -> None:
    target = spawn(None, "probe_target.py", "busy")
    holder = _heapspy("attach", str(target.pid), "--dump-dir", str(tmp_path))
    try:
        _wait_attached(holder)
        holder.terminate()
        _, err = holder.communicate(timeout=15)
        assert holder.returncode == 0, err
        assert "terminated" in err
    finally:
        holder.kill()
    assert len(list(tmp_path.glob("heap-*-final.pb.gz"))) == 1


@pytest.mark.parametrize("method", ["auto", "ptrace"])
def test_remote_debug_disabled_is_refused(spawn: Spawn, method: str) -> None:
    """The owner's opt-out holds even though ptrace could get around it."""
    interp = py314()
    target = spawn(interp, "probe_target.py", "busy", python_args=("-X", "disable-remote-debug"))
    out = subprocess.run(
        [sys.executable, "-m", "heapspy", "attach", str(target.pid), "--duration", "1"]
        + ["--method", method],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 8, out.stderr
    assert "disable-remote-debug" in out.stderr
    assert heapspy_dirs_in_tmp(target.pid) == []
    assert target.state()["modules"] == []


def test_agent_outlives_a_long_gil_holding_call(spawn: Spawn, tmp_path: Path) -> None:
    """A C call holding the GIL for longer than the agent's peer timeout must not make
    the agent think heapspy is gone: heartbeats queued meanwhile count."""
    target = spawn(None, "probe_target.py", "gil-hog", env={"HOG": "200000000"})
    session = Session.attach(target.pid, AttachConfig(dump_dir=tmp_path, final_dump=False))
    try:
        t0 = time.monotonic()
        reason = session.run(duration=9.0)
        assert reason == "duration elapsed", reason
        assert time.monotonic() - t0 >= 8.5
    finally:
        session.detach()
    assert target.alive()
