"""Every refusal has its own sentence and exit code, and leaves the target untouched."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
from interpreters import (
    Interpreter,
    find_interpreters,
    interpreter_params,
    old_interpreter_params,
)
from support import (
    TARGETS,
    Target,
    attach_until_sampled,
    heapspy_dirs_in_tmp,
    run_heapspy,
    wait_for,
)

Spawn = Callable[..., Target]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_no_such_pid() -> None:
    out = run_heapspy("attach", "999999999")
    assert out.returncode == 3 and "No process with pid 999999999" in out.stderr


def test_not_python(sleeper: subprocess.Popen[bytes]) -> None:
    out = run_heapspy("attach", str(sleeper.pid))
    assert out.returncode == 4, out.stderr
    assert "is not a CPython process" in out.stderr and "(sleep)" in out.stderr


@pytest.mark.parametrize("interp", old_interpreter_params())
def test_old_python_is_refused(interp: Interpreter, spawn: Spawn) -> None:
    target = spawn(interp, "old_target.py")
    out = run_heapspy("attach", str(target.pid))
    assert out.returncode == 5, out.stderr
    assert f"runs Python {interp.version_text}" in out.stderr
    assert "3.8 to 3.14" in out.stderr


def test_unknown_python_layout(tmp_path: Path) -> None:
    # Debian's 3.11 under a 3.10 name: the interpreter's own Py_Version contradicts it
    fake = tmp_path / "python3.10"
    shutil.copy("/usr/bin/python3.11", fake)
    code = "import time; print('READY', flush=True); time.sleep(60)"
    with subprocess.Popen([str(fake), "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().startswith("READY")
            out = run_heapspy("attach", str(proc.pid))
            assert out.returncode == 6, out.stderr
            assert "says it is Python 3.11" in out.stderr
        finally:
            proc.kill()


@pytest.mark.parametrize("interp", interpreter_params(max_version=(3, 13)))
def test_another_tracer(interp: Interpreter, spawn: Spawn) -> None:
    if not shutil.which("strace"):
        pytest.skip("strace is not installed (apt-get install strace)")
    target = spawn(interp, "probe_target.py", "busy")
    strace = subprocess.Popen(
        ["strace", "-p", str(target.pid), "-o", "/dev/null"], stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with open(f"/proc/{target.pid}/status") as f:
                if "TracerPid:\t0" not in f.read():
                    break
            time.sleep(0.02)
        out = run_heapspy("attach", str(target.pid))
        assert out.returncode == 10, out.stderr
        assert f"already being traced by pid {strace.pid} (strace)" in out.stderr
    finally:
        strace.send_signal(signal.SIGINT)
        strace.wait(timeout=10)
    assert target.state()["modules"] == []


def test_target_exits_during_attach(spawn: Spawn) -> None:
    # sleeps in its main thread, then exits before the pending call can run
    target = spawn(None, "probe_target.py", "exit-soon", env={"EXIT_AFTER": "1.0"})
    out = run_heapspy("attach", str(target.pid), "--attach-timeout", "5s")
    assert out.returncode == 9, out.stderr
    # "exited" during the attach, or "has exited" already when a loaded machine started
    # heapspy after the target's second was up: exit 9 and nothing left behind either way
    assert re.search(rf"Process {target.pid} (has )?exited", out.stderr), out.stderr
    assert heapspy_dirs_in_tmp(target.pid) == []


@pytest.mark.parametrize("interp", interpreter_params(min_version=(3, 12), max_version=(3, 13)))
def test_agent_timeout_explains_what_main_thread_does(interp: Interpreter, spawn: Spawn) -> None:
    target = spawn(interp, "probe_target.py", "sleep")
    out = run_heapspy("attach", str(target.pid), "--attach-timeout", "1s")
    assert out.returncode == 11, out.stderr
    assert "did not start in process" in out.stderr and "within 1 s" in out.stderr
    assert "clock_nanosleep" in out.stderr or "sleep" in out.stderr
    assert "--attach-timeout" in out.stderr
    # The queued bootstrap runs when the sleep returns: it must clean up and not start.
    # The first probe wakes the main thread from its sleep (the bootstrap may run before
    # or after the probe's handler); its thread then deletes the files and imports nothing.
    target.state(timeout=60)

    def clean() -> bool:
        state = target.state(timeout=60)
        assert state["tracing"] is False
        assert not any(m.startswith("heapspy_agent") for m in state["modules"]), state
        return heapspy_dirs_in_tmp(target.pid) == []

    assert wait_for(clean, timeout=60)
    assert target.state(timeout=60)["modules"] == []
    assert target.alive()


def test_bad_options_are_usage_errors() -> None:
    for args, text in [
        (("attach", "1", "--rate", "lots"), "Invalid sampling rate 'lots'"),
        (("attach", "1", "--frames", "0"), "--frames must be between 1 and 512"),
        (("attach", "1", "--dump-on", "rss>lots"), "Invalid dump rule 'rss>lots'"),
        (("attach", "1", "--duration", "-5"), "Invalid duration"),
        (("attach", "1", "--keep", "0"), "--keep must be at least 1"),
        (("attach", "1", "--method", "gdb"), "--method must be one of auto, pep768, ptrace"),
        (("dump", "1", "--frames", "600"), "--frames must be between 1 and 512"),
    ]:
        out = run_heapspy(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert text in out.stderr, (args, out.stderr)


def _as_nobody() -> list[str]:
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _outside_root() -> list[Interpreter]:
    """Interpreters user nobody can run (pyenv's live under /root, mode 0700)."""
    return [i for i in find_interpreters() if not i.argv[0].startswith("/root/")]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as nobody")
@pytest.mark.parametrize("interp", _outside_root(), ids=str)
def test_attach_to_another_users_target_as_root(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    shared = Path(tempfile.mkdtemp(prefix="heapspy-nobody-"))
    shared.chmod(0o777)
    target = spawn(
        interp, "probe_target.py", "grow", prefix=tuple(_as_nobody()), cwd=shared, probe_dir=shared
    )
    with open(f"/proc/{target.pid}/status") as f:
        assert "Uid:\t65534" in f.read()
    out = attach_until_sampled(target.pid, "--dump-dir", str(tmp_path / "d"))
    assert out.returncode == 0, out.stderr
    # its frames are named: read through the target's root with the target's credentials
    assert "grow_cache" in out.stdout
    assert heapspy_dirs_in_tmp(target.pid) == []
    assert target.state()["modules"] == []
    shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run heapspy as nobody")
def test_permission_denied_names_the_fix(spawn: Spawn, tmp_path: Path) -> None:
    target = spawn(None, "probe_target.py", "busy")
    runtime = Path("/tmp") / f"heapspy-test-nobody-{os.getpid()}"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.chown(runtime, 65534, 65534)
    try:
        env = {**os.environ, "HEAPSPY_RUNTIME_DIR": str(runtime), "HOME": str(runtime)}
        out = subprocess.run(
            [*_as_nobody(), sys.executable, "-m", "heapspy", "attach", str(target.pid)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd="/",
        )
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    assert out.returncode == 7, out.stderr
    assert "Not allowed to read the memory map" in out.stderr, out.stderr
    # nobody lacks the capability: the advice is to get it, not to look for an LSM
    assert "as the target's user, or as root with CAP_SYS_PTRACE" in out.stderr, out.stderr
    assert target.state()["modules"] == []


def test_old_target_script_exists() -> None:
    assert (TARGETS / "old_target.py").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as nobody")
def test_root_without_cap_chown_is_told_what_is_missing(spawn: Spawn, tmp_path: Path) -> None:
    """A hardened root (as under systemd's CapabilityBoundingSet) that lacks CAP_CHOWN
    cannot give the agent's files to the target's user: a sentence, exit 7, no files."""
    interp = next(iter(_outside_root()), None)
    if interp is None:
        pytest.skip("no interpreter that user nobody can run")
    shared = Path(tempfile.mkdtemp(prefix="heapspy-nobody-"))
    shared.chmod(0o777)
    target = spawn(
        interp, "probe_target.py", "grow", prefix=tuple(_as_nobody()), cwd=shared, probe_dir=shared
    )
    out = subprocess.run(
        ["setpriv", "--bounding-set=-chown", "--inh-caps=-chown", sys.executable, "-m",
         "heapspy", "attach", str(target.pid), "--duration", "1", "--dump-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 7, out.stderr
    assert "CAP_CHOWN" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert heapspy_dirs_in_tmp(target.pid) == []
    assert target.state()["modules"] == []
    shutil.rmtree(shared, ignore_errors=True)
