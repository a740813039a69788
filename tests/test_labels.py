"""Who allocated (issue 15): thread, task and coroutine labels on every sample, grouped
by ``--by``, read by ``go tool pprof -tags``, and the exact bytes each thread allocated.

One target per interpreter (tests/targets/labelled_service.py) is checked for all of it:
a thread type that leaks, a task type that keeps its results and has finished by the
time of the dump, their look-alikes that free everything, and tasks that live one step
(shorter than an interval, named or not) but keep the name they had at sample time.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from pathlib import Path
from typing import Callable

import pytest
from gotool import pprof, top
from interpreters import Interpreter, interpreter_params
from support import Target, run_heapspy

from heapspy.config import AttachConfig
from heapspy.dumps import sidecar_path
from heapspy.label_totals import by_label, thread_alloc
from heapspy.model import NO_LABEL
from heapspy.reporters.report import ReportConfig, build_report
from heapspy.session import Session

Spawn = Callable[..., Target]


def _dump_after_hoarding(target: Target, tmp_path: Path) -> tuple[Path, Session]:
    """Attach, start the leaks, hoard until the session holds samples labelled with the
    hoarder tasks' name, stop them, and write a dump once the target says they ended."""
    session = Session.attach(
        target.pid,
        AttachConfig(rate=64 * 1024, interval=0.2, dump_dir=tmp_path, final_dump=False),
    )
    try:
        os.kill(target.pid, signal.SIGUSR1)
        agg = session.aggregator
        deadline = time.monotonic() + 60
        while "hoarder" not in by_label(agg, "task") and time.monotonic() < deadline:
            session.run(0.2)  # a task is named from the first interval that sees it alive
        assert "hoarder" in by_label(agg, "task"), agg.label_sets
        session.run(0.6)
        os.kill(target.pid, signal.SIGUSR2)
        stdout = target.proc.stdout
        assert stdout is not None
        line = ""
        while not line and time.monotonic() < deadline:
            session.run(0.2)
            if select.select([stdout], [], [], 0)[0]:
                line = stdout.readline()
        assert line.startswith("HOARDED"), line
        session.run(0.3)  # the leaky threads keep going; the hoarders are gone
        path = Path(session.write_dump("labels"))
    finally:
        session.detach()
    return path, session


def _by(dump: Path, key: str) -> list[tuple[str, int]]:
    report = build_report(ReportConfig(dump=dump, by=key, top=20))
    return [(row.site.function, row.flat) for row in report.top]


@pytest.mark.parametrize("interp", interpreter_params())
def test_labels_name_the_thread_and_the_task_that_keep_memory(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    target = spawn(interp, "labelled_service.py")
    dump, session = _dump_after_hoarding(target, tmp_path)

    threads = _by(dump, "thread")
    assert threads[0][0].startswith("leaky-handler-"), threads
    tasks = [row for row in _by(dump, "task") if row[0] != NO_LABEL]  # threads: none
    assert tasks[0][0] == "hoarder", tasks  # its tasks have all finished
    hoarded = tasks[0][1]
    assert hoarded > 150_000, tasks  # 4 x 20 KB every 0.1 s for over 0.6 s
    assert dict(tasks).get("churner", 0) < hoarded / 4, tasks
    coros = [row for row in _by(dump, "coro") if row[0] != NO_LABEL]
    assert coros[0][0] == "hoard", coros
    ids = _by(dump, "thread_id")
    assert all(value.isdigit() or value == NO_LABEL for value, _ in ids), ids

    # exact bytes per thread, in the sidecar: the leaky handlers allocate ~8 MB/s each
    sidecar = json.loads(sidecar_path(dump).read_text())
    exact = {name: size for _, size, name in sidecar["labels"]["thread_alloc"]}
    assert exact["leaky-handler-0"] > 1_000_000 and exact["MainThread"] > 0, exact
    assert {row[0] for row in sidecar["labels"]["task"]} >= {"hoarder"}, sidecar["labels"]
    assert by_label(session.aggregator, "task")["hoarder"].live_bytes == pytest.approx(
        hoarded, rel=0.01
    )

    # tasks that live one step: every sample of their coroutine names its task, read at
    # sample time (sprinters by name, the others by asyncio's default name)
    by_task = by_label(session.aggregator, "task")
    sprinted = by_label(session.aggregator, "coro")["sprint"].alloc_bytes
    default = sum(t.alloc_bytes for name, t in by_task.items() if name.startswith("Task-"))
    assert by_task["sprinter"].alloc_bytes + default == pytest.approx(sprinted, rel=1e-9)
    assert by_task["sprinter"].alloc_bytes > sprinted / 5 and default > sprinted / 5, by_task

    if interp.label != "3.11-pyenv":
        return  # what differs between interpreters ends here: the readers, once
    tags = pprof("-tags", dump, cwd=tmp_path)
    assert "thread: " in tags and "leaky-handler-0" in tags, tags
    assert "task: " in tags and "hoarder" in tags and "coro: " in tags, tags
    focused = top(dump, "-tagfocus=task=hoarder", cwd=tmp_path)
    assert focused[0].name.startswith("hoard"), focused[:3]  # 3.11: its listcomp
    out = run_heapspy("report", str(dump), "--by", "task")
    assert out.returncode == 0, out.stderr
    assert "values of the label 'task'" in out.stdout and "hoarder" in out.stdout, out.stdout


@pytest.mark.parametrize(
    "interp", [p for p in interpreter_params() if p.values[0].label == "3.12-pyenv"]
)
def test_exact_mode_labels_coroutines_and_counts_bytes_per_thread(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    """tracemalloc's tracebacks have no thread and no task: exact mode's samples carry
    ``coro`` only, found after asyncio's step in each traceback; the totals shim beside
    tracemalloc still counts every thread's bytes."""
    target = spawn(interp, "labelled_service.py")
    session = Session.attach(
        target.pid, AttachConfig(rate=1, interval=0.2, dump_dir=tmp_path, final_dump=False)
    )
    try:
        os.kill(target.pid, signal.SIGUSR1)
        agg = session.aggregator
        deadline = time.monotonic() + 60
        while "hoard" not in by_label(agg, "coro") and time.monotonic() < deadline:
            session.run(0.2)
        coros = by_label(agg, "coro")
        assert coros["hoard"].live_bytes > 20_000, coros
        assert not by_label(agg, "task") and not by_label(agg, "thread")
        threads = {t.name: t.allocated_bytes for t in thread_alloc(agg)}
        assert threads.get("leaky-handler-0", 0) > 0 and threads.get("MainThread", 0) > 0
    finally:
        session.detach()
