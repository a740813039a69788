"""Prefork servers: a target that forks thousands of children while attached never hangs one.

A forked child inherits only the thread that called fork, so any lock another thread held
at that moment stays held forever in the child. The agent's after-fork handler must take
none: these tests fork children from the main thread while the agent thread is busy
draining (short interval, hundreds of live stacks, constant allocation), the way gunicorn's
arbiter and multiprocessing's fork context do, and require every child to exit 0.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Callable

import pytest
from interpreters import Interpreter, interpreter_params
from support import Target

from heapspy.config import AttachConfig
from heapspy.session import Session

Spawn = Callable[..., Target]
# (label, rate): 4 KiB keeps the agent draining almost all the time (the rate at which
# the hang was reported), the default rate, and exact mode (tracemalloc + the shim's totals)
MODES = [("4KiB", 4096), ("default", AttachConfig.rate), ("exact", 1)]
QUICK = [p for p in interpreter_params() if p.values[0].label in ("3.11-pyenv", "3.14-debian")]


def fork_while_attached(target: Target, tmp_path: Path, rate: int, count: int) -> None:
    """Attach, make the target fork ``count`` children, check every one exited 0 and that
    the target and the session are still fine afterwards; then detach."""
    session = Session.attach(
        target.pid, AttachConfig(rate=rate, interval=0.02, dump_dir=tmp_path, collect_budget=0)
    )
    ended: list[str] = []
    runner = threading.Thread(target=lambda: ended.append(session.run()), daemon=True)
    runner.start()
    try:
        target.proc.send_signal(signal.SIGUSR1)
        assert target.proc.stdout is not None
        line = target.proc.stdout.readline().strip()
        assert line == f"FORKED {count}", f"rate {rate}: the forking target said {line!r}"
        assert target.alive()
        assert not ended, f"the session ended while the target forked: {ended}"
    finally:
        session.request_stop()
        runner.join(30)
        session.detach()
    assert session.aggregator.intervals > 0


@pytest.mark.parametrize("interp", QUICK)
def test_forking_at_4kib_hangs_no_child(interp: Interpreter, spawn: Spawn, tmp_path: Path) -> None:
    target = spawn(interp, "forker.py", "500", "gunicorn,gunicorn,mp", "60")
    fork_while_attached(target, tmp_path, 4096, 500)


@pytest.mark.slow
@pytest.mark.parametrize(
    "forks", [pytest.param(200, id="200"), pytest.param(700, id="700", marks=pytest.mark.soak)]
)
@pytest.mark.parametrize("interp", interpreter_params())
def test_thousands_of_forks_in_every_mode_hang_no_child(
    interp: Interpreter, forks: int, spawn: Spawn, tmp_path: Path
) -> None:
    """600 children per interpreter (2,100 under `make soak`): ``forks`` in each mode, one
    session after the other on the same target (a fork's cost is the same whichever
    session came before)."""
    target = spawn(interp, "forker.py", str(forks), "gunicorn,gunicorn,gunicorn,mp", "60")
    for _label, rate in MODES:
        fork_while_attached(target, tmp_path, rate, forks)
