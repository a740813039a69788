"""Who allocated (issue 15): thread, task and coroutine labels on every sample, grouped
by ``--by``, read by ``go tool pprof -tags``, and the exact bytes each thread allocated.

One target per interpreter (tests/targets/labelled_service.py) is checked for all of it:
a thread type that leaks, a task type that keeps its results and has finished by the
time of the dump, their look-alikes that free everything, and tasks that live one step
(shorter than an interval, named or not, asyncio.Task or a subclass of it) or a step
after a real await but keep the name they had at sample time.
In exact mode (tracemalloc) the same target's exact bytes are split by the thread and
task labels of the samples the shim takes beside it (heapspy.label_shares), and a
task-alloc limit fires on tests/targets/bulk_task.py.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
from gotool import pprof, top
from interpreters import Interpreter, interpreter_params
from support import Target, run_heapspy

from heapspy.config import AttachConfig
from heapspy.dumps import sidecar_path
from heapspy.label_shares import frames_key
from heapspy.label_totals import by_label, thread_alloc
from heapspy.model import NO_LABEL, label_value
from heapspy.pprof import read_profile
from heapspy.reporters.report import ReportConfig, build_report
from heapspy.rules import parse_rule
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
    # the agent's own thread is not one of the target's: apart, as agent_alloc
    assert "heapspy-agent" not in exact and sidecar["labels"]["agent_alloc"] > 0, exact
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
    # the same from a Python subclass of asyncio.Task (a task factory's): its stored name
    # is read at sample time as a Task's, not what its get_name() override says
    sub_sprinted = by_label(session.aggregator, "coro")["sub_sprint"].alloc_bytes
    assert sub_sprinted > 0 and "overridden" not in by_task, by_task
    assert by_task["subsprinter"].alloc_bytes == pytest.approx(sub_sprinted, rel=1e-9)
    # a task whose allocating step follows a real await (run by its wakeup callback, not
    # its step wrapper) and that ends within a loop turn or two: named at sample time too
    waited = by_label(session.aggregator, "coro")["wait_then_alloc"].alloc_bytes
    assert waited > 0 and by_task["waiter"].alloc_bytes == pytest.approx(waited, rel=1e-9)

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


def _varied() -> list[Any]:
    """3.8 (Python-step handles, no co_qualname), 3.12 and 3.14: how tasks are read."""
    wanted = {(3, 8), (3, 12), (3, 14)}
    return [
        p
        for p in interpreter_params()
        if p.values[0].version in wanted and p.values[0].label != "3.11-debian-static"
    ]


def _next_line(target: Target, session: Session, deadline: float) -> str:
    """The target's next line, the session running meanwhile (the target may wait for
    its collections)."""
    stdout = target.proc.stdout
    assert stdout is not None
    while time.monotonic() < deadline:
        if select.select([stdout], [], [], 0)[0]:
            return stdout.readline().strip()
        session.run(0.1)
    raise AssertionError("the target said nothing")


@pytest.mark.parametrize("interp", _varied())
def test_exact_mode_splits_exact_bytes_by_thread_and_task(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    """Exact mode (tracemalloc): each stack's exact bytes are split by the thread and
    task labels of the shim's samples of the same frames; the parts add up to
    tracemalloc's figure per stack, in the session and in the dump, and the dump's
    ``--by thread``/``--by task`` name the leaking thread type and the hoarding tasks.
    The totals shim beside tracemalloc still counts every thread's bytes."""
    target = spawn(interp, "labelled_service.py")
    session = Session.attach(
        target.pid,
        AttachConfig(rate=1, interval=0.2, dump_dir=tmp_path, final_dump=False, collect_budget=1),
    )
    agg = session.aggregator

    def seen() -> bool:
        tasks, threads = by_label(agg, "task"), by_label(agg, "thread")
        leaky = sum(t.live_bytes for name, t in threads.items() if name.startswith("leaky"))
        return "hoarder" in tasks and tasks["hoarder"].live_bytes > 50_000 and leaky > 500_000

    try:
        os.kill(target.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while not seen() and time.monotonic() < deadline:
            session.run(0.2)
        assert seen(), (by_label(agg, "task"), by_label(agg, "thread"))
        whole: Counter[tuple[tuple[str, int], ...]] = Counter()
        for site in agg.all_sites():
            whole[frames_key(site.stack)] += site.inuse_bytes
        parts: Counter[tuple[tuple[str, int], ...]] = Counter()
        split = 0
        for labels, site in agg.all_parts():
            parts[frames_key(site.stack)] += site.inuse_bytes
            split += label_value(labels, "thread") is not None
        threads = {t.name: t.allocated_bytes for t in thread_alloc(agg)}
        dump = Path(session.write_dump("exact-labels"))  # its frames: those above
    finally:
        session.detach()
    assert parts == whole and split, split  # split, and every stack's parts add up
    assert by_label(agg, "coro")["hoard"].live_bytes > 50_000  # from the tracebacks
    assert threads.get("leaky-handler-0", 0) > 0 and threads.get("MainThread", 0) > 0

    decoded = read_profile(dump)  # the dump: the same exact bytes per stack
    inuse = decoded.sample_type_names.index("inuse_space")
    in_dump: Counter[tuple[tuple[str, int], ...]] = Counter()
    for sample in decoded.samples:
        in_dump[frames_key(sample.stack)] += sample.values[inuse]
    assert +in_dump == +whole
    assert any("label samples" in c for c in decoded.comments), decoded.comments
    sidecar = json.loads(sidecar_path(dump).read_text())["labels"]
    assert "in proportion of the label samples" in sidecar["split"], sidecar
    by_thread = _by(dump, "thread")
    assert by_thread[0][0].startswith("leaky-handler-"), by_thread
    tasks = [row for row in _by(dump, "task") if row[0] != NO_LABEL]
    assert tasks[0][0] == "hoarder", tasks

    if interp.version != (3, 12):
        return  # the readers, once
    tags = pprof("-tags", dump, cwd=tmp_path)
    assert "thread: " in tags and "leaky-handler-0" in tags, tags
    assert "task: " in tags and "hoarder" in tags, tags
    out = run_heapspy("report", str(dump), "--by", "thread")
    assert out.returncode == 0, out.stderr
    assert "values of the label 'thread'" in out.stdout and "leaky-handler-" in out.stdout


@pytest.mark.parametrize("interp", [p for p in _varied() if p.values[0].version == (3, 12)])
def test_task_alloc_fires_in_exact_mode(interp: Interpreter, spawn: Spawn, tmp_path: Path) -> None:
    """task-alloc in exact mode: tracemalloc keeps live blocks only, the task figures
    come from the label samples beside it (sampled estimates, as in sampled mode)."""
    target = spawn(interp, "bulk_task.py")
    rule = parse_rule("task-alloc>200MiB,cooldown=1h")
    session = Session.attach(
        target.pid,
        AttachConfig(
            rate=1,
            interval=0.2,
            dump_dir=tmp_path,
            final_dump=False,
            collect_budget=1,
            dump_on=(rule,),
        ),
    )
    try:
        deadline = time.monotonic() + 60
        assert _next_line(target, session, deadline) == "ALLOCATED"
        assert _next_line(target, session, deadline) == "SEEN"  # four collections later
        while not list(tmp_path.glob("*task-alloc*.pb.gz")) and time.monotonic() < deadline:
            session.run(0.1)
        dumps = list(tmp_path.glob("*task-alloc*.pb.gz"))
    finally:
        target.proc.kill()  # no detach of a 300 MiB heap to wait for
        session.detach()
    (dump,) = dumps
    assert dump.name.endswith("-task-alloc_200MiB-bulk-import.pb.gz")
    offender = json.loads(sidecar_path(dump).read_text())["offender"]
    assert offender["name"] == "bulk-import" and offender["sampled"]
    assert 300 * 2**20 <= offender["bytes"] < 302 * 2**20  # and what else it allocated
