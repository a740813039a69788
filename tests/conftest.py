"""Shared fixtures: real target processes, and a guard that nothing is left behind.

Helpers that tests import live in ``support.py``, not here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
from interpreters import Interpreter
from support import TARGETS, Target


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


