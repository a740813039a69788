"""`heapspy top`: live views, from a session of its own and from one held elsewhere."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from interpreters import Interpreter, py314
from support import Target, run_heapspy, wait_for

from heapspy.reporters.status import session_status
from heapspy.units import parse_size

Spawn = Callable[..., Target]
# value, sampling error (sampled mode only), growth since start and since last, objects, function
ROW = re.compile(
    r"^\s+(\S+ \S+)\s+(?:(?:±\S+|-|\?)\s+)?(\S+(?: \S+)?)\s+(\S+(?: \S+)?)\s+(\d+)\s+(.+)$"
)


def _screens(text: str) -> list[list[str]]:
    return [s.splitlines() for s in text.split("heapspy top  pid ")[1:]]


def _rows(screen: list[str]) -> dict[str, tuple[int, str]]:
    """function -> (value in bytes, growth since start as printed)."""
    out = {}
    for line in screen[4:]:
        m = ROW.match(line)
        if m:
            out[m[5]] = (parse_size(m[1].replace(" ", "")), m[2])
    return out


def _heap(screen: list[str]) -> int:
    return parse_size(screen[1].split("live heap ")[1].split(" (")[0].replace(" ", ""))


@pytest.mark.parametrize(
    "pick",
    [
        pytest.param(lambda: None, id="default"),
        pytest.param(py314, id="pep768", marks=pytest.mark.py314),
    ],
)
def test_top_attaches_itself_shows_growth_and_leaves_clean(
    pick: Callable[[], Interpreter | None], spawn: Spawn
) -> None:
    target = spawn(pick(), "probe_target.py", "grow")
    threads = target.threads()
    out = run_heapspy("top", str(target.pid), "--every", "0.6s", "--duration", "4s", "-n", "5")
    assert out.returncode == 0, out.stderr
    screens = _screens(out.stdout)
    assert len(screens) >= 5, out.stdout
    assert all(s[0].startswith(f"{target.pid}  ") for s in screens)
    assert "sampled every 512KiB" in screens[-1][0]
    last = _rows(screens[-1])
    leader = next(iter(last))  # the largest live function comes first
    assert leader.startswith("grow_cache (probe_target.py:"), screens[-1]
    live, since_start = last[leader]
    assert 10 << 20 < live < 60 << 20  # ~6.4 MiB/s for 4 s, sampled
    # sampled: each value with its error, ~1.96·sqrt((1-p)/samples) of 64 KiB blocks
    assert screens[-1][3].split()[:2] == ["live", "±95%"], screens[-1]
    error = re.search(r"±(\d+)%", next(line for line in screens[-1] if leader in line))
    assert error and 5 <= int(error[1]) <= 60, screens[-1]
    assert since_start.startswith("+") or since_start == "new"
    heaps = [_heap(s) for s in screens]
    assert heaps[-1] > heaps[1]
    # churn is freed at once: at most a sample caught mid-call when the agent collected
    assert all(v < live / 10 for f, (v, _) in last.items() if f.startswith("churn"))
    # the session is gone and the target as it was
    assert session_status(target.pid) is None
    assert wait_for(lambda: target.threads() == threads, 10)
    state = target.state()
    assert state["modules"] == [] and state["tracing"] is False


def test_top_reads_a_held_session_and_leaves_it_running(spawn: Spawn, tmp_path: Path) -> None:
    target = spawn(None, "probe_target.py", "grow")
    holder = subprocess.Popen(
        [sys.executable, "-m", "heapspy", "attach", str(target.pid), "--dump-dir",
         str(tmp_path), "--no-final-dump"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert holder.stderr is not None
        assert "attached to" in holder.stderr.readline()
        time.sleep(1.5)
        out = run_heapspy(
            "top", str(target.pid), "--every", "0.5s", "--duration", "1.6s",
            "--order", "alloc_space", "-n", "3",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        screens = _screens(out.stdout)
        assert len(screens) >= 3
        assert "allocated" in screens[-1][3]
        names = list(_rows(screens[-1]))
        assert 2 <= len(names) <= 3  # -n 3; the churn and the growth at least
        # churn's list comprehension is a frame of its own before 3.12
        assert any(n.startswith(("churn (", "churn.<locals>.<listcomp> (")) for n in names)
        assert any(n.startswith("grow_cache (") for n in names), screens[-1]
        first = _rows(screens[0])
        for name, (value, _growth) in _rows(screens[-1]).items():
            if name in first:
                assert value >= first[name][0]  # allocated since attach only grows
        status = session_status(target.pid)
        assert status is not None and status.status["holder_pid"] == holder.pid
    finally:
        holder.terminate()
        assert holder.wait(timeout=20) == 0
        holder.communicate()


def test_top_on_a_terminal_redraws_and_stops_on_ctrl_c(spawn: Spawn) -> None:
    target = spawn(None, "probe_target.py", "grow")
    pid, fd = pty.fork()
    if pid == 0:  # the child: heapspy top on a terminal
        os.execv(sys.executable, [sys.executable, "-m", "heapspy", "top", str(target.pid),
                                  "--every", "0.5s"])  # fmt: skip
    out = b""
    deadline = time.monotonic() + 30
    try:
        while out.count(b"\x1b[H\x1b[2J") < 3 and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                out += os.read(fd, 65536)
        assert out.count(b"\x1b[H\x1b[2J") >= 3, out[-2000:]
        os.kill(pid, signal.SIGINT)
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert os.waitstatus_to_exitcode(status) == 0, out[-2000:]
    assert b"grow_cache (probe_target.py:" in out
    assert wait_for(lambda: session_status(target.pid) is None, 10)
    assert target.state()["modules"] == []


def test_top_rejects_bad_options(spawn: Spawn) -> None:
    target = spawn(None, "probe_target.py", "busy")
    bad = run_heapspy("top", str(target.pid), "--order", "inuse_objects")
    assert bad.returncode == 2 and "use inuse_space or alloc_space" in bad.stderr
    bad = run_heapspy("top", str(target.pid), "--every", "soon")
    assert bad.returncode == 2 and "--every" in bad.stderr
    assert target.state()["modules"] == []  # refused before attaching
