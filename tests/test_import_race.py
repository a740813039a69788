"""Attaching while the target imports: the agent imports nothing until the target's imports
are done, and then only under the global import lock, so the target never receives a
half-initialised module (importlib's answer to two threads each holding a module lock the
other needs).

The deterministic case holds the target's main thread inside an import the agent needs
(tests/targets/import_gate.py) while the agent starts, through every injection path and
the daemon; the slow one attaches hundreds of times at random moments while targets import
a good part of the standard library over and over.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
from interpreters import Interpreter, interpreter_params, py314
from support import Target, heapspy_dirs_in_tmp, wait_for
from test_daemon import FAST, Daemon, _finals, _ptrace_interp, _tag, _watch, daemon  # noqa: F401

from heapspy.config import AttachConfig
from heapspy.errors import AgentTimeout
from heapspy.session import Session

Spawn = Callable[..., Target]
# A window in which an agent that imports at once (the bug) certainly would have: it only
# makes the test stronger, a correct agent passes whatever the machine's speed.
GRACE = 2.0
PATHS = [
    pytest.param(p.values[0], "auto", id=f"{p.values[0]}-auto", marks=p.marks)
    for p in interpreter_params()
]
PATHS.append(pytest.param(py314, "ptrace", id="3.14-ptrace", marks=pytest.mark.py314))


def _line(target: Target, prefix: str) -> str:
    assert target.proc.stdout is not None
    line = target.proc.stdout.readline().strip()
    assert line.startswith(prefix), f"the target said {line!r}, expected {prefix}..."
    return line


def _threads(pid: int) -> int:
    """Threads of ``pid`` from /proc, 0 once it is gone. Not Popen.poll(): its waitpid
    would take the stops meant for the ptrace injector, which runs in this process."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


def _release_when_the_bootstrap_runs(target: Target, release: Path) -> None:
    """The bootstrap's thread is the target's second: once it exists, give a wrong agent
    the grace to import, then let the target's import finish."""
    assert wait_for(lambda: _threads(target.pid) != 1, 60), "no bootstrap"
    time.sleep(GRACE)
    release.write_text("")


def _check_whole(target: Target) -> None:
    assert _line(target, "IMPORTED") == "IMPORTED whole=True early=False"


def _check_no_violations(target: Target) -> None:
    target.proc.send_signal(signal.SIGUSR1)
    assert _line(target, "VIOLATIONS") == "VIOLATIONS"
    assert target.alive()


@pytest.mark.parametrize(("interp", "method"), PATHS)
def test_the_agent_waits_for_the_targets_import(
    interp: Interpreter | Callable[[], Interpreter], method: str, spawn: Spawn, tmp_path: Path
) -> None:
    if callable(interp):
        interp = interp()
    release = tmp_path / "release"
    target = spawn(interp, "import_gate.py", str(release))
    config = AttachConfig(dump_dir=tmp_path, attach_timeout=60, method=method, interval=0.2)
    got: list[Session | BaseException] = []

    def attach() -> None:
        try:
            got.append(Session.attach(target.pid, config))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            got.append(exc)

    attacher = threading.Thread(target=attach, daemon=True)
    attacher.start()
    _release_when_the_bootstrap_runs(target, release)
    _check_whole(target)
    attacher.join(90)
    assert got, "the attach did not finish"
    session = got[0]
    if isinstance(session, BaseException):
        raise session
    try:
        session.run(duration=1.0)
    finally:
        session.detach()
    assert session.aggregator.intervals > 0
    _check_no_violations(target)


@pytest.mark.parametrize(
    "pick",
    [
        pytest.param(_ptrace_interp, id="ptrace"),
        pytest.param(py314, id="pep768", marks=pytest.mark.py314),
    ],
)
def test_an_import_that_outlasts_the_attach_leaves_the_target_alone(
    pick: Callable[[], Interpreter], spawn: Spawn, tmp_path: Path
) -> None:
    """The attach times out (exit 11); the bootstrap gives up at the same deadline without
    importing anything and deletes its files; the target's import then completes."""
    interp = pick()
    release = tmp_path / "release"
    target = spawn(interp, "import_gate.py", str(release))
    config = AttachConfig(dump_dir=tmp_path, attach_timeout=3)
    with pytest.raises(AgentTimeout) as timed_out:
        Session.attach(target.pid, config)
    assert timed_out.value.exit_code == 11
    assert wait_for(lambda: heapspy_dirs_in_tmp(target.pid) == [], 60), "files left behind"
    assert wait_for(lambda: _threads(target.pid) == 1, 60), "the bootstrap's thread stayed"
    release.write_text("")
    _check_whole(target)
    _check_no_violations(target)


@pytest.mark.parametrize(
    "pick",
    [
        pytest.param(_ptrace_interp, id="ptrace"),
        pytest.param(py314, id="pep768", marks=pytest.mark.py314),
    ],
)
def test_the_daemon_attaching_during_an_import_leaves_the_target_whole(
    pick: Callable[[], Interpreter],
    spawn: Spawn,
    daemon: Callable[..., Daemon],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    interp = pick()
    tag, dumps, release = _tag(), tmp_path / "dumps", tmp_path / "release"
    target = spawn(interp, "import_gate.py", str(release), tag)
    d = daemon(FAST + _watch(tag, dumps))
    _release_when_the_bootstrap_runs(target, release)
    _check_whole(target)
    d.attached(target.pid)
    assert d.stop() == 0
    assert len(_finals(dumps, target.pid)) == 1
    _check_no_violations(target)


# 25 per interpreter: 200 in all over the eight interpreters this machine offers
STORM_ATTACHES = 25


@pytest.mark.slow
@pytest.mark.parametrize("interp", interpreter_params())
def test_attaching_at_random_moments_of_an_import_storm_kills_no_target(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    """Random moments are a weak test on their own (the deterministic one above is the
    strong one); what they add is breadth: the real imports of a framework's start."""
    target = spawn(interp, "import_storm.py")
    rng = random.Random()
    config = AttachConfig(dump_dir=tmp_path, attach_timeout=60, interval=0.2, final_dump=False)
    for n in range(STORM_ATTACHES):
        time.sleep(rng.uniform(0.0, 0.2))  # a random moment of the import rounds
        session = Session.attach(target.pid, config)
        session.detach()
        assert target.alive(), f"{interp}: the target died at attach {n + 1}"
    target.proc.send_signal(signal.SIGUSR1)
    line = _line(target, "ROUNDS")
    rounds, violations = line.split()[1], line.split(" VIOLATIONS")[1].strip()
    assert violations == "" and int(rounds) > STORM_ATTACHES, line
