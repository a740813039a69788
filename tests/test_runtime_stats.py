"""Runtime statistics from a real target on every interpreter: GC counts and time,
thread names, asyncio tasks per loop; in the sidecar, the report and /metrics' source;
and the GC timer removed at detach."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from interpreters import Interpreter, interpreter_params
from support import run_heapspy

from heapspy.runtime_stats import RuntimeStats


@pytest.mark.parametrize("interp", interpreter_params())
def test_gc_threads_and_tasks_reach_the_sidecar_and_report(
    interp: Interpreter, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    target = subprocess.Popen(
        [*interp.argv, str(Path(__file__).parent / "targets" / "runtime_worker.py")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert target.stdout is not None
        assert target.stdout.readline().startswith("READY")
        out = run_heapspy(
            "attach",
            str(target.pid),
            "--duration",
            "3",
            "--interval",
            "0.5",
            "--dump-dir",
            str(tmp_path),
            "--quiet",
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        (sidecar,) = tmp_path.glob("heap-*-final.json")
        facts = json.loads(sidecar.read_text())["facts"]
        stats = RuntimeStats.from_facts(facts)
        assert stats is not None
        assert {"event-loop", "cycle-maker", "idle-worker", "MainThread"} <= set(
            stats.thread_names
        ), stats.thread_names
        assert stats.threads == 5  # the three, the main thread and the agent's own
        assert sum(stats.gc_collections) > 0 and stats.gc_collected and sum(stats.gc_collected) > 0
        assert stats.gc_seconds is not None and stats.gc_seconds > 0
        assert stats.asyncio_tasks == (8,), facts  # 7 waiting + the main task of asyncio.run
        report = run_heapspy("report", str(sidecar.with_suffix(".pb.gz")), timeout=60)
        assert report.returncode == 0, report.stderr
        assert "Runtime: GC " in report.stdout and "8 asyncio tasks in 1 loop" in report.stdout
        series = json.loads(sidecar.read_text())
        column = series["series_columns"].index("asyncio_tasks")
        assert any(row[column] == 8 for row in series["rss_series"])
        os.kill(target.pid, signal.SIGUSR1)
        assert target.stdout.readline().strip() == "CALLBACKS 0"
    finally:
        target.kill()
        target.communicate()
