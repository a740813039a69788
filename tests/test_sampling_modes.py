"""Rates through a real attach: sampled, totals only, exact, live changes, fallback."""

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
from interpreters import Interpreter, interpreter_params, numpy_site
from support import Target

from heapspy import control
from heapspy.config import AttachConfig
from heapspy.dumps import sidecar_path
from heapspy.errors import SamplingUnavailable
from heapspy.pprof import read_profile
from heapspy.reporters.report import ReportConfig, build_report
from heapspy.sampling import Sampling
from heapspy.session import Session

Spawn = Callable[..., Target]
PAIR = [p for p in interpreter_params() if p.values[0].label in ("3.11-pyenv", "3.14-debian")]


@pytest.mark.parametrize("interp", PAIR)
def test_rate_zero_keeps_exact_totals_only(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    target = spawn(interp, "probe_target.py", "busy")
    session = Session.attach(target.pid, AttachConfig(rate=0, dump_dir=tmp_path, interval=0.3))
    try:
        session.run(duration=1.2)
    finally:
        session.detach()
    assert session.aggregator.sampling == Sampling("totals", 0)
    assert session.info is not None and session.info.mode == "totals"
    assert all(not s.alloc_objects for s in session.aggregator.sites.values())
    totals = session.aggregator.totals
    assert totals["allocations"] > 1000 and totals["allocated_bytes"] > 100_000
    assert totals["sampled_count"] == 0
    # its dump's period is 1, as an exact dump's: the sidecar tells them apart
    (dump,) = tmp_path.glob("*-final.pb.gz")
    report = build_report(ReportConfig(dump=dump)).text()
    assert "Sampling: totals only" in report and "Sampling: exact" not in report


@pytest.mark.parametrize("interp", PAIR)
def test_exact_mode_has_totals_and_names(interp: Interpreter, spawn: Spawn, tmp_path: Path) -> None:
    target = spawn(interp, "probe_target.py", "busy")
    session = Session.attach(target.pid, AttachConfig(rate=1, dump_dir=tmp_path, interval=0.3))
    try:
        session.run(duration=1.2)
    finally:
        session.detach()
    assert session.aggregator.sampling == Sampling("exact", 1)
    assert session.aggregator.totals["allocations"] > 1000
    top = session.aggregator.top(1)[0][0]
    assert top.startswith("retain_blocks (probe_target.py:")  # named from the source
    assert target.state()["tracing"] is False


def test_rate_changes_on_a_live_session(spawn: Spawn, tmp_path: Path) -> None:
    target = spawn(None, "probe_target.py", "busy")
    holder = subprocess.Popen(
        [sys.executable, "-m", "heapspy", "attach", str(target.pid), "--dump-dir", str(tmp_path)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert holder.stderr is not None
        assert "sampled mode" in holder.stderr.readline()
        out = subprocess.run(
            [sys.executable, "-m", "heapspy", "rate", str(target.pid), "64KiB"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert "now samples every 64.0 KiB" in out.stderr
        status = control.request(target.pid, "status")["status"]
        assert status["mode"] == "sampled"
        bad = subprocess.run(
            [sys.executable, "-m", "heapspy", "rate", str(target.pid), "1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert bad.returncode == 2 and "rates of 0 or 2 bytes and up" in bad.stderr
        subprocess.run([sys.executable, "-m", "heapspy", "detach", str(target.pid)], check=True)
        assert holder.wait(timeout=15) == 0
    finally:
        holder.kill()
        holder.communicate()
    assert status["rate"] == 64 * 1024
    (dump,) = tmp_path.glob("*-final.pb.gz")
    assert read_profile(dump).period == 64 * 1024  # the rate in force at the end
    sidecar = json.loads(sidecar_path(dump).read_text())
    assert sidecar["rate"] == 64 * 1024
    (attached, first), (when, rate) = sidecar["rate_changes"]  # at attach, then the change
    assert first == 512 * 1024 and attached <= when
    assert rate == 64 * 1024 and abs(when - time.time()) < 60


def test_fallback_and_require_sampling(
    spawn: Spawn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEAPSPY_NO_SHIM", "1")  # as if installed without a compiler
    target = spawn(None, "probe_target.py", "busy")
    session = Session.attach(target.pid, AttachConfig(dump_dir=tmp_path, final_dump=False))
    session.detach()
    assert session.info is not None and session.info.mode == "exact"
    notes = session.info.notes
    assert any("shim is not available" in n and "--require-sampling" in n for n in notes)
    with pytest.raises(SamplingUnavailable, match="shim is not available"):
        Session.attach(target.pid, AttachConfig(dump_dir=tmp_path, require_sampling=True))
    assert target.state()["modules"] == []
    assert os.environ["HEAPSPY_NO_SHIM"] == "1"


@pytest.mark.parametrize("rate", [64 * 1024, 1], ids=["sampled", "exact"])
@pytest.mark.parametrize(
    "interp", [p for p in interpreter_params() if p.values[0].version in ((3, 9), (3, 14))]
)
def test_same_qualified_name_in_both_modes(
    interp: Interpreter, rate: int, spawn: Spawn, tmp_path: Path
) -> None:
    """co_qualname (3.11+), co_name qualified from the source (older), or the source
    alone (exact mode) must all say Shipper.buffer_line."""
    target = spawn(interp, "method_target.py")
    config = AttachConfig(rate=rate, dump_dir=tmp_path, final_dump=False, interval=0.3)
    session = Session.attach(target.pid, config)
    try:
        # until a live site is seen (a loaded machine may give the target little time)
        deadline = time.monotonic() + 30
        agg = session.aggregator
        while (agg.intervals < 3 or not agg.top(1)) and time.monotonic() < deadline:
            session.run(duration=0.3)
    finally:
        session.detach()
    assert session.aggregator.top(1)[0][0].startswith("Shipper.buffer_line (method_target.py:")


@pytest.mark.parametrize(
    ("when", "rate"), [("early", 64 * 1024), ("late", 64 * 1024), ("early", 1)],
    ids=["sampled-early", "sampled-late", "exact"],
)  # fmt: skip
@pytest.mark.parametrize("interp", PAIR)
def test_numpy_arrays_are_counted_and_the_handler_restored(
    interp: Interpreter, spawn: Spawn, tmp_path: Path, when: str, rate: int
) -> None:
    """48 MiB of NumPy buffers at hold_arrays show up in sampled mode (NumPy imported
    before the attach, or after it: hooked at a later interval) and in exact mode (NumPy
    reports them to tracemalloc; the totals' hook is on NumPy too), and detach gives NumPy
    its own handler back. Tolerance: ~4.5 sd of the estimate at 64 KiB (16 KiB blocks)."""
    site = numpy_site(interp)
    target = spawn(interp, "numpy_worker.py", when, env={"PYTHONPATH": str(site)})
    config = AttachConfig(rate=rate, dump_dir=tmp_path, interval=0.3, final_dump=False)
    session = Session.attach(target.pid, config)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and session.aggregator.totals.get("numpy") != "hooked":
            session.run(duration=0.3)
        assert session.aggregator.totals.get("numpy") == "hooked", session.aggregator.totals
        os.kill(target.pid, signal.SIGUSR1)  # build now
        while time.monotonic() < deadline and target.state()["kept_bytes"] < 48 << 20:
            session.run(duration=0.3)
        session.run(duration=1.0)  # two more intervals after the build
    finally:
        session.detach()
    assert session.aggregator.sampling == Sampling.of_rate(rate)
    assert not any("NumPy" in n for n in (session.info.notes if session.info else []))
    held = sum(
        site.live(session.aggregator.sampling.period)[1]
        for site in session.aggregator.sites.values()
        if any(f.function == "hold_arrays" for f in site.stack)
    )
    assert abs(held - (48 << 20)) <= 0.15 * (48 << 20), held / 2**20
    state = target.state()
    assert state["modules"] == [] and state["handler"] == "default_allocator"


def test_costly_collection_stretches_the_interval(
    spawn: Spawn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Exact mode on a big heap costs seconds of CPU per snapshot: the agent keeps its
    collecting within a CPU budget by collecting less often (here a tiny budget makes a
    small heap "big"); the default budget leaves a cheap session at its interval."""
    target = spawn(None, "probe_target.py", "busy")
    tight = AttachConfig(rate=1, dump_dir=tmp_path, interval=0.2, collect_budget=0.0005)
    session = Session.attach(target.pid, tight)
    try:
        with caplog.at_level("WARNING", logger="heapspy"):
            session.run(duration=3.0)
        facts = dict(session.aggregator.facts)
        intervals = session.aggregator.intervals
        status = session.status()
    finally:
        session.detach()
    spent = float(facts["collect_cpu"])
    assert spent > 0
    assert facts["interval"] >= max(1.0, spent / 0.0005 * 0.99), facts
    assert status["interval"] == facts["interval"]
    assert intervals <= 4, intervals  # 15 at 0.2 s without the budget
    assert "the agent now collects every" in caplog.text
    assert target.state()["tracing"] is False

    session = Session.attach(target.pid, AttachConfig(rate=1, dump_dir=tmp_path))
    try:
        session.run(duration=3.5)
    finally:
        session.detach()
    # ~10 ms of CPU per collection here: 1 s, or a little more on a loaded machine whose
    # caches make a collection cost over 20 ms (seen once); the tiny budget gave ~20 s
    assert 1.0 <= session.aggregator.facts["interval"] <= 1.5, session.aggregator.facts
    assert session.aggregator.intervals >= 3
