"""The target's memory cgroup: reading v1 and v2, the cgroup/psi rules, and the
last-chance dump written before a real OOM kill."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from gotool import require_go, top
from interpreters import Interpreter, find_interpreters, py314
from support import Target, wait_for

from heapspy.cgroup import locate, parse_membership, read_state
from heapspy.errors import UsageError
from heapspy.oomwatch import EARLY, CgroupWatch
from heapspy.rules import Observation, RuleEngine, parse_rule

V2 = Path(__file__).resolve().parent / "data" / "cgroup_v2"
V1_ROOT = Path("/sys/fs/cgroup/memory")
MiB = 1 << 20


def _v2_copy(tmp_path: Path) -> tuple[Path, str]:
    """The captured v2 tree copied (so a test may change it) and mountinfo pointing at it."""
    mnt = tmp_path / "cgroup2"
    shutil.copytree(V2 / "mnt", mnt)
    mountinfo = (V2 / "mountinfo").read_text().replace("/sys/fs/cgroup", str(mnt))
    return mnt, mountinfo


def test_v2_is_located_and_read_from_the_kernels_files(tmp_path: Path) -> None:
    mnt, mountinfo = _v2_copy(tmp_path)
    cg = locate(1, mountinfo, (V2 / "proc_pid_cgroup").read_text())
    assert cg is not None
    assert (cg.version, cg.name, cg.directory) == (
        2,
        "/system.slice/api.service",
        mnt / "system.slice" / "api.service",
    )
    state = read_state(cg)
    assert state is not None
    assert state.usage == 503316480
    assert state.working_set == 503316480 - 33554432  # inactive file cache is not counted
    assert state.limit == 512 * MiB
    assert state.events == {"high": 0, "max": 12, "oom": 1, "oom_kill": 1}
    assert (state.psi_some, state.psi_full) == (3.21, 1.10)
    assert state.psi_source.endswith("api.service/memory.pressure")
    assert state.used_fraction == pytest.approx(448 / 512)


def test_v2_limit_is_the_tightest_on_the_way_to_the_root(tmp_path: Path) -> None:
    mnt, mountinfo = _v2_copy(tmp_path)
    (mnt / "system.slice" / "memory.max").write_text("268435456\n")
    (mnt / "system.slice" / "api.service" / "memory.max").write_text("max\n")
    cg = locate(1, mountinfo, (V2 / "proc_pid_cgroup").read_text())
    assert cg is not None
    state = read_state(cg)
    assert state is not None and state.limit == 256 * MiB


def test_membership_names_that_climb_out_are_refused(tmp_path: Path) -> None:
    _, mountinfo = _v2_copy(tmp_path)
    assert locate(1, mountinfo, "0::/../../etc\n") is None
    assert parse_membership("4:memory:/a/b\n0::/c\n") == ("/c", "/a/b")
    assert parse_membership("garbage\n") == (None, None)


def test_last_chance_fires_near_the_limit_and_when_the_kernel_reclaims(tmp_path: Path) -> None:
    mnt, mountinfo = _v2_copy(tmp_path)
    service = mnt / "system.slice" / "api.service"
    cg = locate(1, mountinfo, (V2 / "proc_pid_cgroup").read_text())
    assert cg is not None
    state = read_state(cg)
    assert state is not None
    watch = CgroupWatch(cg, state, _baseline=dict(state.events), _seen=dict(state.events))
    assert watch.poll(0.0) is None  # 87.5 % of the limit, no new events
    (service / "memory.events").write_text("low 0\nhigh 0\nmax 15\noom 1\noom_kill 1\n")
    why = watch.poll(10.0)
    assert why is not None and "max 12->15" in why and "memory.events" in why
    assert watch.poll(20.0) is None  # cooling down
    watch2 = CgroupWatch(cg, state, _baseline=dict(state.events), _seen={"max": 15, "oom": 1})
    (service / "memory.current").write_text(str(502 * MiB + 33554432))
    why = watch2.poll(0.0)
    assert why is not None and "(98%)" in why
    (service / "memory.events").write_text("low 0\nhigh 0\nmax 15\noom 3\noom_kill 2\n")
    assert watch2.oom_kills() == 1


def test_far_from_the_limit_a_poll_rides_on_the_next_wake_near_it_keeps_time(
    tmp_path: Path,
) -> None:
    """A session's loop wakes for its agent's frames: far from the limit the cgroup's poll
    may come up to EARLY before it is due (then), and the loop wakes for it by itself only
    EARLY after; near the limit it keeps FAST_POLL's time exactly."""
    mnt, mountinfo = _v2_copy(tmp_path)
    current = mnt / "system.slice" / "api.service" / "memory.current"
    cg = locate(1, mountinfo, (V2 / "proc_pid_cgroup").read_text())
    assert cg is not None
    current.write_text(str(100 * MiB))  # far: 20 % of 512 MiB (less the inactive cache)
    state = read_state(cg)
    assert state is not None
    watch = CgroupWatch(cg, state, _seen=dict(state.events))
    assert watch.poll(100.0) is None
    assert (watch.next_poll, watch.due) == (101.0, 101.0 + EARLY)
    current.write_text(str(101 * MiB))
    watch.poll(100.5)  # not due yet, even early: not read
    assert watch.state.usage == 100 * MiB
    watch.poll(101.0 - EARLY)  # at a frame that came a little early: read then
    assert watch.state.usage == 101 * MiB
    current.write_text(str(480 * MiB))  # near: 87 %
    watch.poll(102.0)
    assert watch.state.usage == 480 * MiB and watch.due == watch.next_poll == 102.25
    current.write_text(str(481 * MiB))
    watch.poll(102.25 - 0.01)
    assert watch.state.usage == 480 * MiB  # near: never early
    watch.poll(102.25)
    assert watch.state.usage == 481 * MiB


def test_the_monitor_wakes_a_following_session_only_when_its_cgroup_needs_it(
    tmp_path: Path,
) -> None:
    """Far from the limit a session that follows its cgroup has no poll of its own to
    wake for (due: never); the process's monitor reads the cgroup and wakes it once it
    comes near the limit, or when the kernel reclaims, and the next poll then reads it
    whenever it comes. Meanwhile the monitor's readings are its state, and a poll reads
    nothing (64 sessions of one unit each read it every second)."""
    mnt, mountinfo = _v2_copy(tmp_path)
    service = mnt / "system.slice" / "api.service"
    (service / "memory.current").write_text(str(100 * MiB))  # far: 20 % of 512 MiB
    cg = locate(1, mountinfo, (V2 / "proc_pid_cgroup").read_text())
    assert cg is not None
    state = read_state(cg)
    assert state is not None
    watch = CgroupWatch(cg, state, _seen=dict(state.events))
    woken = threading.Event()
    watch.follow(woken.set)
    try:
        assert watch.poll(time.monotonic()) is None
        assert watch.due == math.inf and watch.next_poll < math.inf
        assert woken.wait(30)  # the monitor's first reading of a cgroup wakes it once
        woken.clear()
        assert watch.poll(time.monotonic()) is None  # the alerted poll: far, no dump
        polled = watch.next_poll
        (service / "memory.current").write_text(str(150 * MiB))  # still far
        assert wait_for(lambda: watch.state.usage == 150 * MiB, 30)  # the monitor's reading
        assert not woken.is_set()
        # far and followed, a poll (the loop woke for something else) reads nothing
        assert watch.poll(time.monotonic() + 60) is None and watch.next_poll == polled
        (service / "memory.current").write_text(str(502 * MiB + 32 * MiB))  # 98 %
        assert woken.wait(30)
        why = watch.poll(time.monotonic())  # not due by time: alerted
        assert why is not None and "(98%)" in why, why
        assert watch.due < math.inf  # near: it keeps FAST_POLL's time itself
    finally:
        watch.unfollow()
    assert watch.due < math.inf


def test_cgroup_and_psi_rules() -> None:
    rule = parse_rule("cgroup>90%")
    assert (rule.kind, rule.percent, rule.name) == ("cgroup", 90.0, "cgroup>90%")
    assert parse_rule("psi>20").percent == 20.0
    assert parse_rule("psi-full > 5.5%,cooldown=1m").cooldown == 60.0
    for bad in ("cgroup>150%", "cgroup>0%", "psi>x"):
        with pytest.raises(UsageError):
            parse_rule(bad)
    engine = RuleEngine([parse_rule("cgroup>90%"), parse_rule("psi>20%")], 0.0)
    assert engine.observe(Observation(1.0, None, 0, cgroup_used=0.5, psi_some=1.0)) == []
    fired = engine.observe(Observation(2.0, None, 0, cgroup_used=0.95, psi_some=25.0))
    assert [r.kind for r in fired] == ["cgroup", "psi"]
    assert engine.observe(Observation(3.0, None, 0, cgroup_used=None, psi_some=None)) == []


# --- a real v1 memory cgroup, a real OOM kill -------------------------------------


def _v1_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a memory cgroup"
    if not (V1_ROOT / "memory.limit_in_bytes").is_file():
        return "no cgroup v1 memory controller at /sys/fs/cgroup/memory"
    return None


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    problem = _v1_available()
    if problem:
        pytest.skip(problem)
    group = V1_ROOT / f"heapspy-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        wait_for(lambda: not (group / "cgroup.procs").read_text().strip(), 10)
        group.rmdir()


def _interpreters() -> list[Interpreter]:
    found = {i.version: i for i in find_interpreters()}
    chosen = [found[v] for v in ((3, 8), (3, 11)) if v in found]
    return chosen


@pytest.mark.privileged
@pytest.mark.slow
@pytest.mark.parametrize("which", ["ptrace", "pep768"])
def test_last_chance_dump_is_written_before_the_oom_kill_and_names_the_leak(
    which: str, memory_cgroup: Path, spawn, tmp_path: Path
) -> None:
    if which == "pep768":
        interp = py314()
    else:
        options = _interpreters()
        if not options:
            pytest.skip("no pyenv interpreter before 3.14")
        interp = options[-1]
    limit = 160 * MiB
    (memory_cgroup / "memory.limit_in_bytes").write_text(str(limit))
    go = tmp_path / "go"
    enter = f'echo $$ > {memory_cgroup}/cgroup.procs && exec "$@"'
    target: Target = spawn(
        interp, "cgroup_leaker.py", str(go), "12", prefix=("sh", "-c", enter, "sh")
    )
    assert str(target.pid) in (memory_cgroup / "cgroup.procs").read_text().split()
    dumps = tmp_path / "dumps"
    heapspy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "heapspy",
            "attach",
            str(target.pid),
            "--rate",
            "64KiB",
            "--interval",
            "0.5",
            "--dump-dir",
            str(dumps),
            "--dump-on",
            "cgroup>50%",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert heapspy.stderr is not None
        line = heapspy.stderr.readline()
        assert "attached to" in line, line + heapspy.stderr.read()
        go.touch()
        out, err = heapspy.communicate(timeout=120)
    finally:
        if heapspy.poll() is None:
            heapspy.kill()
            heapspy.communicate()
    assert target.proc.wait(timeout=10) == -signal.SIGKILL, err
    assert "OOM killer" in err, line + err
    names = sorted(p.name for p in dumps.glob("*.pb.gz"))
    last = [n for n in names if n.endswith("-last-chance.pb.gz")]
    assert last, names
    assert any(n.endswith("-cgroup_50.pb.gz") for n in names), names
    require_go()
    rows = top(dumps / last[0], "-sample_index=inuse_space")
    assert "hoard_blocks" in rows[0].name, rows[:3]
    side = json.loads((dumps / last[0]).with_suffix("").with_suffix(".json").read_text())
    assert side["cgroup"]["version"] == 1 and side["cgroup"]["limit"] == limit
    assert side["cgroup"]["working_set"] >= limit * 0.8
    final = [n for n in names if n.endswith("-final.pb.gz")]
    assert final, names
    final_side = json.loads((dumps / final[0]).with_suffix("").with_suffix(".json").read_text())
    assert final_side["cgroup"]["events"]["oom_kill"] >= 1
