"""200 attach/detach cycles against one busy multi-threaded target: nothing leaks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest
from interpreters import Interpreter, interpreter_params
from support import Target, heapspy_dirs_in_tmp
from test_attach import _fds

from heapspy.config import AttachConfig
from heapspy.session import Session

CYCLES = 200


def _anonymous_code(pid: int) -> list[str]:
    """Executable mappings backed by no file: where an injected page would show."""
    with open(f"/proc/{pid}/maps") as f:
        rows = [line.split() for line in f]
    return [r[0] for r in rows if "x" in r[1] and len(r) == 5]


@pytest.mark.slow
@pytest.mark.parametrize(
    "interp",
    [p for p in interpreter_params() if p.values[0].label in ("3.11-pyenv", "3.14-debian")],
)
def test_200_cycles(interp: Interpreter, spawn: Callable[..., Target], tmp_path: Path) -> None:
    target = spawn(interp, "probe_target.py", "workers")
    before = target.state()
    fds, threads, code_pages = target.fds(), target.threads(), _anonymous_code(target.pid)
    config = AttachConfig(dump_dir=tmp_path, final_dump=False, interval=0.05)
    latencies = []
    for i in range(CYCLES):
        session = Session.attach(target.pid, config)
        assert session.info is not None
        latencies.append(session.info.latency_ms)
        if i % 20 == 0:
            session.run(duration=0.15)  # some streaming too, not only handshakes
        session.detach()
        assert target.alive(), f"target died in cycle {i}"
    deadline = time.monotonic() + 5
    while target.threads() != threads and time.monotonic() < deadline:
        time.sleep(0.05)
    after = target.state()
    assert target.threads() == threads
    assert len(target.fds()) <= len(fds) + 1  # libffi's own fd once ctypes is imported
    assert _fds(after) == _fds(before) and after["modules"] == [] and not after["tracing"]
    assert _anonymous_code(target.pid) == code_pages  # every injected page was unmapped
    assert heapspy_dirs_in_tmp(target.pid) == []
    latencies.sort()
    print(f"\n{interp.label}: {CYCLES} cycles, attach median {latencies[CYCLES // 2]:.0f} ms")
