"""Shared fixtures: real target processes, and a guard that nothing is left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from interpreters import Interpreter

TESTS = Path(__file__).resolve().parent
TARGETS = TESTS / "targets"
REPO = TESTS.parent


class Target:
    """A running target script; ``state()`` asks it (via SIGUSR2) to describe itself."""

    def __init__(self, proc: subprocess.Popen[str], probe: Path, ready: str = "") -> None:
        self.proc = proc
        self.pid = proc.pid
        self.probe = probe
        self.ready = ready.split()  # the READY line's words

    def state(self, timeout: float = 10.0) -> dict[str, Any]:
        """Modules, tracemalloc, threads and fds as the target itself sees them."""
        try:
            self.probe.unlink()
        except FileNotFoundError:
            pass
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.probe.exists():
                try:
                    return dict(json.loads(self.probe.read_text()))
                except ValueError:
                    pass
            time.sleep(0.02)
        raise AssertionError(f"target {self.pid} did not answer the probe")

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def fds(self) -> list[str]:
        return sorted(os.listdir(f"/proc/{self.pid}/fd"))

    def maps_count(self) -> int:
        with open(f"/proc/{self.pid}/maps") as f:
            return sum(1 for _ in f)

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Target]]:
    """Start ``tests/targets/<script>`` under an interpreter and wait for its READY line."""
    started: list[subprocess.Popen[str]] = []

    def _spawn(
        interp: Interpreter | None,
        script: str,
        *args: str,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
        python_args: tuple[str, ...] = (),
        cwd: Path | None = None,
        probe_dir: Path | None = None,
    ) -> Target:
        probe = (probe_dir or tmp_path) / f"probe-{len(started)}.json"
        argv = interp.argv if interp else (sys.executable,)
        full_env = dict(os.environ)
        full_env.pop("PYTHONPATH", None)
        full_env["HEAPSPY_PROBE"] = str(probe)
        full_env.update(env or {})
        proc = subprocess.Popen(
            [*prefix, *argv, *python_args, str(TARGETS / script), *args],
            stdout=subprocess.PIPE,
            text=True,
            env=full_env,
            cwd=cwd or tmp_path,
        )
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            proc.kill()
            raise AssertionError(f"{script} did not start: {line!r}")
        if len(probe.parent.name) and probe.exists():
            probe.unlink()
        return Target(proc, probe, line)

    yield _spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        # a bootstrap still queued when its target was killed (timeout tests) never got
        # to clean up its files: do it for it
        for left in Path("/tmp").glob(f"heapspy-{proc.pid}-*"):
            shutil.rmtree(left, ignore_errors=True)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(autouse=True)
def _no_session_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test gets its own runtime dir; after it, no lock or socket may remain."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("HEAPSPY_RUNTIME_DIR", str(runtime))
    yield
    sessions = runtime / "sessions"
    left = sorted(p.name for p in sessions.iterdir()) if sessions.exists() else []
    assert not left, f"session files left behind: {left}"


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll cond every 50 ms until it holds or timeout passes; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def run_heapspy(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (``python -m heapspy ARGS``) to completion."""
    return subprocess.run(
        [sys.executable, "-m", "heapspy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def heapspy_dirs_in_tmp(pid: int) -> list[str]:
    """Agent directories heapspy placed for ``pid`` that still exist."""
    return sorted(p.name for p in Path("/tmp").glob(f"heapspy-{pid}-*"))


LEAKY_WORKER = Path(__file__).resolve().parent.parent / "heapspy" / "examples" / "leaky_worker.py"


def attach_to_leaky_worker(
    python: list[str], *attach_args: str
) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Start the bundled leaking worker under ``python``, run ``heapspy attach PID
    ATTACH_ARGS`` on it to completion, kill the worker; (worker pid, attach result)."""
    worker = subprocess.Popen([*python, str(LEAKY_WORKER), "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None and worker.stdout.readline().startswith("READY")
        out = run_heapspy("attach", str(worker.pid), *attach_args, timeout=120)
    finally:
        worker.kill()
        worker.wait()
        assert worker.stdout is not None
        worker.stdout.close()
    return worker.pid, out
