"""`heapspy status`: the live sessions of this user, from real sessions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from interpreters import Interpreter, py314
from support import Target, run_heapspy, wait_for

from heapspy.registry import runtime_dir
from heapspy.reporters.status import render_text, session_status

Spawn = Callable[..., Target]


def _hold(pid: int, dumps: Path, *extra: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-m", "heapspy", "attach", str(pid), "--dump-dir", str(dumps),
         "--no-final-dump", *extra],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert holder.stderr is not None
    line = holder.stderr.readline()
    assert "attached to" in line, line + holder.stderr.read()
    return holder


def _end(holder: subprocess.Popen[str]) -> None:
    holder.send_signal(signal.SIGTERM)
    try:
        assert holder.wait(timeout=20) == 0
    finally:
        holder.kill()
        holder.communicate()


@pytest.mark.parametrize(
    "pick",
    [
        pytest.param(lambda: None, id="default"),
        pytest.param(py314, id="pep768", marks=pytest.mark.py314),
    ],
)
def test_status_lists_live_sessions_and_follows_them(
    pick: Callable[[], Interpreter | None], spawn: Spawn, tmp_path: Path
) -> None:
    interp = pick()
    sampled = spawn(interp, "probe_target.py", "busy")
    exact = spawn(None, "probe_target.py", "busy")
    a = _hold(sampled.pid, tmp_path / "a", "--rate", "64KiB")
    b = _hold(exact.pid, tmp_path / "b", "--rate", "1")
    try:
        out = run_heapspy("status", "--format", "json")
        assert out.returncode == 0, out.stderr
        rows = {r["target_pid"]: r for r in json.loads(out.stdout)}
        assert set(rows) == {sampled.pid, exact.pid}
        ra, rb = rows[sampled.pid], rows[exact.pid]
        assert (ra["holder_pid"], rb["holder_pid"]) == (a.pid, b.pid)
        assert f"heapspy attach {sampled.pid}" in ra["holder_command"]
        assert (ra["mode"], ra["rate"]) == ("sampled", 64 * 1024)
        assert rb["mode"] == "exact"
        assert ra["dump_dir"] == str(tmp_path / "a") and ra["dumps"] == 0
        assert ra["python"].startswith(interp.version_text if interp else "3.")

        # the table says the same, one line per session
        text = run_heapspy("status").stdout.splitlines()
        assert text[0].split() == [
            "TARGET", "HOLDER", "PYTHON", "MODE", "RATE", "UP", "RSS", "LIVE", "HEAP", "DUMPS"
        ]  # fmt: skip
        line = next(x for x in text if x.startswith(f"{sampled.pid} "))
        assert f" {a.pid} " in line and " 64KiB " in line and "sampled/" in line
        assert next(x for x in text if x.startswith(f"{exact.pid} ")).split()[4] == "exact"

        # a live change of rate and a dump show up in the status
        assert run_heapspy("rate", str(sampled.pid), "1MiB").returncode == 0
        assert run_heapspy("dump", str(sampled.pid)).returncode == 0
        one = json.loads(run_heapspy("status", str(sampled.pid), "--format", "json").stdout)
        assert len(one) == 1 and one[0]["rate"] == 1 << 20 and one[0]["dumps"] == 1
        assert Path(one[0]["last_dump"]).parent == tmp_path / "a"
    finally:
        _end(a)
        _end(b)
    assert wait_for(lambda: session_status(sampled.pid) is None, 10)
    out = run_heapspy("status")
    assert out.returncode == 0 and out.stdout == "No heapspy sessions (for this user).\n"
    gone = run_heapspy("status", str(sampled.pid))
    assert gone.returncode == 13 and f"No heapspy session holds process {sampled.pid}" in (
        gone.stderr
    )


def test_stale_and_stuck_holders(spawn: Spawn, tmp_path: Path) -> None:
    """A lock file left by a dead holder is not a session; a holder that does not
    answer is listed as such instead of hanging the listing."""
    target = spawn(None, "probe_target.py", "busy")
    stale = runtime_dir() / "999999999.lock"
    stale.write_text('{"holder_pid": 1, "started": 0, "command": "gone"}')
    holder = _hold(target.pid, tmp_path)
    try:
        os.kill(holder.pid, signal.SIGSTOP)  # holds the lock and the socket, answers nothing
        t0 = time.monotonic()
        out = run_heapspy("status")
        assert out.returncode == 0, out.stderr
        assert time.monotonic() - t0 < 10
        lines = out.stdout.splitlines()
        assert len(lines) == 2, out.stdout  # the header and the stuck one; not the stale file
        assert lines[1].startswith(f"{target.pid} ") and "not answering" in lines[1]
        os.kill(holder.pid, signal.SIGCONT)
        assert wait_for(lambda: "not answering" not in run_heapspy("status").stdout, 10)
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        _end(holder)
        stale.unlink()


def test_render_text_columns() -> None:
    assert render_text([]) == "No heapspy sessions (for this user).\n"


def test_status_rejects_a_bad_format() -> None:
    out = run_heapspy("status", "--format", "yaml")
    assert out.returncode == 2 and "choose one of text, json" in out.stderr
