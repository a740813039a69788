"""Dumps on demand: through a live session, without one, and on SIGUSR1."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from support import Target, run_heapspy

from heapspy.dumps import PATTERN
from heapspy.pprof import read_profile

Spawn = Callable[..., Target]


def test_dump_through_a_live_session_and_on_sigusr1(spawn: Spawn, tmp_path: Path) -> None:
    target = spawn(None, "probe_target.py", "busy")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "heapspy",
            "attach",
            str(target.pid),
            "--dump-dir",
            str(tmp_path),
            "--no-final-dump",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert holder.stderr is not None
        assert "attached to" in holder.stderr.readline()
        out = run_heapspy("dump", str(target.pid))
        assert out.returncode == 0, out.stderr
        path = Path(out.stdout.strip())
        assert path.parent == tmp_path and PATTERN.match(path.name) and "-on-demand" in path.name
        holder.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not list(tmp_path.glob("*-signal.pb.gz")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(tmp_path.glob("*-signal.pb.gz"))
        holder.terminate()
        assert holder.wait(timeout=15) == 0
    finally:
        holder.kill()
        holder.communicate()
    assert len(list(tmp_path.glob("heap-*.pb.gz"))) == 2  # --no-final-dump honoured


def test_dump_without_a_session_attaches_briefly(spawn: Spawn, tmp_path: Path) -> None:
    target = spawn(None, "probe_target.py", "busy")
    out = run_heapspy(
        "dump", str(target.pid), "--duration", "1s", "--dump-dir", str(tmp_path), "--frames", "1"
    )
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.exists() and path.name.endswith("-on-demand.pb.gz")
    assert target.state()["modules"] == []
    depths = {len(s.stack) for s in read_profile(path).samples}
    assert depths == {1}, depths  # the default 64 gives 1-3 here (<module>, churn, ...)
