"""Thread and task leak rules on real targets: a pool that starts a thread per request
and never joins it, tasks that await a queue nobody fills and a future nobody sets. The
growth rules fire, attach prints the grouped stacks, the dump's sidecar holds every
thread and task grouped by identical stack with counts, and `heapspy report` shows
them; when the agent cannot answer (another thread holds the GIL), py-spy reads the
threads instead.

Parametrized over the interpreters where reading tasks differs: 3.8 (no co_qualname,
``_all_tasks``, as up to 3.11), 3.12 (scheduled and eager task sets, as 3.13), 3.14
(tasks in per-thread lists, read through the running loops).
"""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from interpreters import Interpreter, interpreter_params
from support import TARGETS, Target, run_heapspy

from heapspy.model import label_value
from heapspy.pprof import read_profile
from heapspy.stack_groups import PY_SPY, StackDump, StackGroup

SOURCE = (TARGETS / "leaky_pool.py").read_text().splitlines()


def _line(marker: str) -> int:
    """The target's line that carries ``# marker``."""
    return next(n for n, text in enumerate(SOURCE, 1) if text.rstrip().endswith(f"# {marker}"))


def _varied() -> list[Any]:
    wanted = {(3, 8), (3, 12), (3, 14)}
    return [
        p
        for p in interpreter_params()
        if p.values[0].version in wanted and p.values[0].label != "3.11-debian-static"
    ]


class Attach:
    """`heapspy attach` running in the background, its stderr read as it comes."""

    def __init__(self, pid: int, dump_dir: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heapspy", "attach", str(pid), "--interval", "0.25",
             "--no-census", "--no-final-dump", "--dump-dir", str(dump_dir), *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<EOF>")
            self._changed.notify_all()

    def wait_for(self, done: Callable[[list[str]], bool], timeout: float = 90.0) -> list[str]:
        """The lines so far, once ``done`` holds for them (or heapspy ended)."""
        with self._changed:
            self._changed.wait_for(lambda: done(self.lines) or "<EOF>" in self.lines, timeout)
            assert done(self.lines), "\n".join(self.lines)
            return list(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def attach() -> Iterator[Callable[..., Attach]]:
    started: list[Attach] = []

    def _attach(pid: int, dump_dir: Path, *args: str) -> Attach:
        started.append(Attach(pid, dump_dir, *args))
        return started[-1]

    yield _attach
    for a in started:
        a.stop()


def _wrote(rule: str) -> Callable[[list[str]], bool]:
    return lambda lines: any(line.startswith("heapspy: wrote ") and rule in line for line in lines)


def _group(groups: tuple[StackGroup, ...], function: str, line: int) -> StackGroup:
    """The one group whose stack passes through ``function`` at the target's ``line``."""
    (found,) = [
        g
        for g in groups
        if any(f.function == function and f.line == line and f.filename.endswith("leaky_pool.py")
               for f in g.stack)
    ]  # fmt: skip
    return found


@pytest.mark.parametrize("interp", _varied())
def test_growth_rules_fire_and_the_sidecar_groups_the_stuck_stacks(
    interp: Interpreter,
    spawn: Callable[..., Target],
    attach: Callable[..., Attach],
    tmp_path: Path,
) -> None:
    target = spawn(interp, "leaky_pool.py")
    session = attach(
        target.proc.pid,
        tmp_path,
        "--dump-on", "thread-growth>20/1m",
        "--dump-on", "task-growth>40/1m,action=log",
        "--dump-on", "tasks>80",
    )  # fmt: skip
    lines = session.wait_for(
        lambda ls: _wrote("thread-growth_20_1m")(ls) and _wrote("tasks_80")(ls)
    )
    target.proc.kill()  # the session then ends at once, with no detach to wait for
    session.stop()
    text = "\n".join(lines)
    # attach says what fired and prints the most common stacks of each kind
    assert "heapspy: rule thread-growth>20/1m fired: " in text, text
    assert "heapspy: rule task-growth>40/1m fired: " in text, text  # action=log: no dump
    assert not list(tmp_path.glob("*task-growth*")), text
    assert " threads (request-" in text and " tasks (consumer-" in text, text

    (thread_dump,) = tmp_path.glob("*thread-growth_20_1m.pb.gz")
    (task_dump,) = tmp_path.glob("*tasks_80.pb.gz")
    document = json.loads(thread_dump.with_suffix("").with_suffix(".json").read_text())
    stacks = StackDump.read(document)
    assert stacks is not None and stacks.source == "agent" and stacks.tasks is not None
    threads = stacks.threads
    assert sum(g.count for g in threads.groups) == threads.count and threads.left_out == 0
    leaked = _group(threads.groups, "handle", _line("LEAK: thread"))
    # the rule fired at growth > 20 and threads only ever grow here
    assert leaked.count > 20 and all(n.startswith("request-") for n in leaked.names)
    assert leaked.stack[-1].function.endswith("wait") and leaked.stack[-1].filename.endswith(
        "threading.py"
    )
    assert threads.count == leaked.count + 2  # with MainThread and event-loop, not the agent
    assert {n for g in threads.groups for n in g.names} >= {"MainThread", "event-loop"}

    stacks = StackDump.read(json.loads(task_dump.with_suffix("").with_suffix(".json").read_text()))
    assert stacks is not None and stacks.tasks is not None
    tasks = stacks.tasks
    assert tasks.count > 80 and sum(g.count for g in tasks.groups) == tasks.count
    consumers = _group(tasks.groups, "consume", _line("LEAK: consume"))
    waiters = _group(tasks.groups, "wait_for", _line("LEAK: wait_for"))
    # a task created a moment before the walk may not have reached its await yet
    assert consumers.count >= 35 and waiters.count >= 35, stacks.lines()
    assert all(n.startswith("consumer-") for n in consumers.names)
    assert all(n.startswith("waiter-") for n in waiters.names)
    assert consumers.stack[-1].function.endswith("get")  # Queue.get, awaited by consume
    assert waiters.stack[-1].function == "wait_for" and waiters.awaits

    if interp.version == (3, 12):  # the report does not depend on the target's Python
        report = run_heapspy("report", str(task_dump), timeout=60)
        assert report.returncode == 0, report.stderr
        assert f"Asyncio tasks (pending) at dump time: {tasks.count} in " in report.stdout
        assert f"  {consumers.count} tasks (consumer-" in report.stdout
        assert f"      consume  {TARGETS / 'leaky_pool.py'}:{_line('LEAK: consume')}" in (
            report.stdout
        )


def test_py_spy_reads_the_threads_when_the_agent_cannot_answer(
    spawn: Callable[..., Target], attach: Callable[..., Attach], tmp_path: Path
) -> None:
    interp = next(p.values[0] for p in _varied() if p.values[0].version == (3, 12))
    target = spawn(interp, "leaky_pool.py", "--hog")
    session = attach(target.proc.pid, tmp_path, "--dump-on", "threads>60")
    lines = session.wait_for(_wrote("threads_60"))
    target.proc.kill()  # the agent cannot take a detach for seconds: end it this way
    session.stop()
    assert any("60 threads (request-" in line for line in lines), lines
    (dump,) = tmp_path.glob("*threads_60.pb.gz")
    stacks = StackDump.read(json.loads(dump.with_suffix("").with_suffix(".json").read_text()))
    assert stacks is not None and stacks.source == PY_SPY and stacks.tasks is None
    assert stacks.note is not None and "did not answer" in stacks.note
    assert _group(stacks.threads.groups, "handle", _line("LEAK: thread")).count == 60
    hog = _group(stacks.threads.groups, "hog", _line("HOG"))
    assert hog.count == 1 and hog.names == ("MainThread",)


def _next_line(target: Target, timeout: float = 90.0) -> str:
    """The target's next line on stdout, waited for at most ``timeout``."""
    assert target.proc.stdout is not None
    ready, _, _ = select.select([target.proc.stdout], [], [], timeout)
    assert ready, "the target said nothing"
    return target.proc.stdout.readline().strip()


@pytest.mark.parametrize("interp", _varied())
def test_task_alloc_fires_once_naming_the_task_that_allocated_300_mib(
    interp: Interpreter,
    spawn: Callable[..., Target],
    attach: Callable[..., Attach],
    tmp_path: Path,
) -> None:
    """The three limits on one target, on the interpreters whose asyncio differs (3.8's
    Python-step handles, 3.12's eager-capable tasks, 3.14's per-thread task lists; on
    3.12 and 3.14 made by the eager task factory)."""
    target = spawn(interp, "bulk_task.py", *(["--eager"] if interp.version >= (3, 12) else []))
    session = attach(
        target.proc.pid,
        tmp_path,
        "--dump-on", "task-alloc>200MiB,cooldown=1s",
        "--dump-on", "thread-alloc>200MiB/1m,action=log",
        "--dump-on", "task-live>200MiB,action=log,cooldown=1h",
    )  # fmt: skip
    assert _next_line(target) == "ALLOCATED"
    assert _next_line(target) == "SEEN"  # four collections later: chances to fire again
    wrote = _wrote("task-alloc_200MiB-bulk-import")
    rules = ("rule thread-alloc>200MiB/1m fired", "rule task-live>200MiB fired")
    # each rule fires at the first collection that sees it hold, not all in the same one
    lines = session.wait_for(
        lambda ls: wrote(ls) and all(any(r in line for line in ls) for r in rules)
    )
    target.proc.kill()  # the session ends with it (no detach of a 300 MiB heap to wait for)
    session.stop()
    fired = [line for line in lines if "rule task-alloc>200MiB fired" in line]
    assert len(fired) == 1, lines
    # 300 MiB in big blocks, each sampled; a small allocation of the task's own, sampled
    # (about one run in six), adds a sample's worth (512 KiB): 300.5
    said = re.search(r"'bulk-import' allocated (\d+\.\d) MiB \(±<1%, sampled\) since", fired[0])
    assert said is not None and 300.0 <= float(said.group(1)) <= 301.5, fired[0]
    (dump,) = tmp_path.glob("*task-alloc*.pb.gz")
    assert dump.name.endswith("-task-alloc_200MiB-bulk-import.pb.gz")
    offender = json.loads(dump.with_suffix("").with_suffix(".json").read_text())["offender"]
    assert offender["name"] == "bulk-import" and offender["kind"] == "task"
    assert abs(offender["bytes"] - 300 * 2**20) < 2**20 and offender["sampled"]
    # the same 300 MiB, exact, per thread: the loop's thread, logged only
    (thread,) = [line for line in lines if "rule thread-alloc>200MiB/1m fired" in line]
    assert "thread MainThread (tid " in thread and "(action=log)" in thread
    # it keeps them: live, as the samples still in use estimate it
    (live,) = [line for line in lines if "rule task-live>200MiB fired" in line]
    said = re.search(r"task 'bulk-import' holds (\d+\.\d) MiB \(±<1%, sampled\) of live", live)
    assert said is not None and 300.0 <= float(said.group(1)) <= 301.5, live
    assert len(list(tmp_path.glob("*.pb.gz"))) == 1  # action=log writes none
    # prelude's one step: on 3.12 and 3.14 an eager one, run inside main's create_task;
    # its 8 MiB carry its own coroutine, not main's, and no other task's name (none)
    eager = [s for s in read_profile(dump).samples if s.stack[-1].function == "prelude"]
    assert eager, "no sample of the EAGER line"
    for sample in eager:
        assert label_value(sample.labels, "coro") == "prelude", sample.labels
        assert label_value(sample.labels, "task") in (None, "prelude"), sample.labels
