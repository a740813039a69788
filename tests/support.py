"""Helpers shared by the test modules: real targets, the CLI, waits and golden files.

A plain module (tests import it as ``support``), so that no test imports ``conftest``,
which pytest loads on its own terms; ``conftest.py`` keeps only the fixtures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

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


def attach_until_sampled(
    pid: int, *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``heapspy attach PID ARGS`` until its session has sampled a live allocation, then
    Ctrl-C (it detaches and prints its final table as a user's Ctrl-C makes it): a fixed
    ``--duration`` can end before a starved target allocates on a loaded machine."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "heapspy", "attach", str(pid), "--duration", str(timeout), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def sampled() -> bool:
        if proc.poll() is not None:
            return True  # ended early (an error): its output says why
        out = run_heapspy("status", str(pid), "--format", "json")
        try:
            return any(s.get("heap_estimate", 0) > 0 for s in json.loads(out.stdout))
        except ValueError:
            return False

    wait_for(sampled, timeout)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


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


GOLDEN = TESTS / "golden"
_Content = TypeVar("_Content", str, bytes)


def golden(name: str, actual: _Content) -> _Content:
    """The expected content of ``tests/golden/NAME``, for comparing with ``actual``.

    With ``HEAPSPY_REGEN_GOLDEN=1`` in the environment, ``actual`` is written there
    instead and the test skips, saying so: rerun without it and commit the file after an
    intended change to the output.
    """
    path = GOLDEN / name
    if os.environ.get("HEAPSPY_REGEN_GOLDEN") == "1":
        if isinstance(actual, bytes):
            path.write_bytes(actual)
        else:
            path.write_text(actual)
        pytest.skip(f"regenerated {path}")
    if isinstance(actual, bytes):
        return path.read_bytes()
    return path.read_text()
