"""Sessions that last weeks: the shim evicts stacks with nothing live that have gone quiet
(their code objects released), heapspy keeps what they allocated; and the error bars
follow each sample's own rate across ``heapspy rate``.

One real target per test (``tests/targets/codegen.py``), driven through the Session API
so that the test can wait for the events themselves (an eviction, a rate change, a phase
of the target's allocations done) rather than for time to pass.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any, Callable

from support import Target

from heapspy.config import AttachConfig
from heapspy.dumps import sidecar_path
from heapspy.pprof import VARIANCE_LABELS, read_profile
from heapspy.reporters.dump import Dump
from heapspy.reporters.sites import Site, site_variances
from heapspy.scaling import sampling_variance
from heapspy.session import Session

KiB = 1024
MiB = 1024 * KiB


def _run_until(session: Session, cond: Callable[[], bool], what: str, limit: float = 60) -> None:
    """Serve the agent until ``cond`` holds (a generous limit: only a hung session hits it)."""
    waited = 0.0
    while not cond():
        assert waited < limit, f"the session never saw {what}"
        session.run(duration=0.2)
        waited += 0.2


def _sites_named(session: Session, prefix: str) -> list[Any]:
    return [s for s in session.aggregator.all_sites() if s.stack[-1].function.startswith(prefix)]


def _weight(size: int, rate: int) -> float:
    return 1.0 / -math.expm1(-size / rate)


def test_quiet_stacks_are_evicted_and_their_figures_kept(
    spawn: Callable[..., Target], tmp_path: Path
) -> None:
    target = spawn(None, "codegen.py", "requests")
    config = AttachConfig(rate=4 * KiB, dump_dir=tmp_path, interval=0.1, collect_budget=1.0)
    session = Session.attach(target.pid, config)
    agg = session.aggregator
    try:
        # freshly generated handlers free everything they allocate: evicted once quiet
        _run_until(session, lambda: int(agg.totals.get("evicted_stacks", 0)) > 50, "evictions")
        assert any(s.stack[-1].function.startswith("handler_") for s in agg.retired.values())
        # steady() runs (counted from now: the session sees everything it allocates), goes
        # quiet, is evicted, comes back under a new id: one site, all of it
        os.kill(target.pid, signal.SIGUSR1)  # steady on
        _run_until(session, lambda: bool(_sites_named(session, "steady")), "steady")
        os.kill(target.pid, signal.SIGUSR1)  # steady off
        _run_until(
            session,
            lambda: any(s.stack[-1].function == "steady" for s in agg.retired.values()),
            "steady evicted",
        )
        os.kill(target.pid, signal.SIGUSR1)  # steady on again
        _run_until(
            session,
            lambda: any(s.carried[0] for s in _sites_named(session, "steady")),
            "its return",
        )
        os.kill(target.pid, signal.SIGUSR1)  # off: what it allocated is then final
        truth = target.state()
        session.run(duration=0.5)
        status = session.status()
    finally:
        session.detach()
    stacks_now = int(agg.totals["stacks"])
    assert status["evicted_stacks"] > 50 and status["overflow_samples"] == 0
    # the shim holds what is live and recent, not every request's stack and code object
    assert stacks_now < truth["requests"] / 2, (stacks_now, truth["requests"])
    assert truth["alive_code"] < truth["requests"] / 2, truth
    (dump,) = tmp_path.glob("*-final.pb.gz")
    profile = read_profile(dump)
    names = profile.sample_type_names
    steady = [s for s in profile.samples if s.stack[-1].function == "steady"]
    assert len(steady) == 1  # its ids, before and after eviction, in one sample
    sample = steady[0]
    a_objects, a_bytes = names.index("alloc_objects"), names.index("alloc_space")
    expected = truth["steady_calls"] * truth["steady_size"]
    variance = sample.recorded_variance(a_objects, a_bytes)
    assert variance is not None
    # the estimate of everything steady() allocated, before and after its eviction, is
    # within 5 standard deviations of the truth (the run before the eviction alone is
    # about half of it, far outside)
    assert abs(sample.values[a_bytes] - expected) <= 5 * math.sqrt(variance[1]) + 1, (
        sample.values[a_bytes],
        expected,
        variance,
    )
    assert sample.values[names.index("inuse_space")] == 0
    sidecar = json.loads(sidecar_path(dump).read_text())
    assert sidecar["evicted_stacks"] > 50
    # the evicted handlers' figures are in the dump: what they allocated, nothing live
    handlers = [s for s in profile.samples if s.stack[-1].function.startswith("handler_")]
    assert len(handlers) > 50 and all(s.values[names.index("inuse_space")] == 0 for s in handlers)
    assert sidecar["dropped"]["overflow_samples"] == 0


def test_error_bars_follow_each_samples_rate(spawn: Callable[..., Target], tmp_path: Path) -> None:
    target = spawn(None, "codegen.py", "rate")
    session = Session.attach(
        target.pid, AttachConfig(rate=4 * KiB, dump_dir=tmp_path, interval=0.2)
    )
    agg = session.aggregator
    try:
        session.run(duration=0.3)  # a first point of the series at 4 KiB
        os.kill(target.pid, signal.SIGUSR1)  # phase 1 at 4 KiB
        size = 0

        def phase_done(phase: int) -> Callable[[], bool]:
            def done() -> bool:
                state = target.state()
                return bool(state["kept"]) and state["phase"] == phase

            return done

        _run_until(session, phase_done(1), "phase 1")
        size = target.state()["small_size"]
        session.run(duration=0.5)  # its last samples drained
        assert session.set_rate(MiB).get("ok")
        session.run(duration=0.5)
        (site,) = _sites_named(session, "make_small")
        first = site.alloc_objects  # raw samples taken at 4 KiB
        os.kill(target.pid, signal.SIGUSR1)  # phase 2 at 1 MiB
        _run_until(session, lambda: target.state()["kept"] > 30000, "phase 2")
        session.run(duration=0.5)
        (site,) = _sites_named(session, "make_small")
        second = site.alloc_objects - first
        row = next(r for r in agg.top_sites(20) if r.function.startswith("make_small"))
    finally:
        session.detach()
    assert site.alloc_bytes == (first + second) * size  # one size: raw counts are exact
    per_sample = (
        size
        * size
        * (
            first * _weight(size, 4 * KiB) * (_weight(size, 4 * KiB) - 1)
            + second * _weight(size, MiB) * (_weight(size, MiB) - 1)
        )
    )
    # what `top` and `attach` show
    assert math.isclose(row.inuse_bytes_var or 0.0, per_sample, rel_tol=1e-6)
    assert math.isclose(row.alloc_bytes_var or 0.0, per_sample, rel_tol=1e-6)
    # the same from the dump: its labels, the report's error bars, the live total's
    (dump,) = tmp_path.glob("*-final.pb.gz")
    loaded = Dump.load(dump)
    profile = loaded.profile
    # (the dump may split the stack's live samples by type: the parts' variances add up)
    samples = [s for s in profile.samples if s.stack[-1].function == "make_small"]
    names = profile.sample_type_names
    inuse = names.index("inuse_space")
    labelled = sum(s.label(VARIANCE_LABELS[inuse]) or 0 for s in samples)
    assert math.isclose(labelled, per_sample, rel_tol=1e-6)
    flat = site_variances(profile, inuse)
    (key,) = [k for k in flat if isinstance(k, Site) and k.function == "make_small"]
    assert math.isclose(flat[key][0], per_sample, rel_tol=1e-6)
    # the old way, every sample at the final rate, is far off here: the test can tell
    objects = sum(s.values[names.index("inuse_objects")] for s in samples)
    old = sampling_variance(objects, sum(s.values[inuse] for s in samples), MiB)
    assert old[1] > 3 * per_sample
    # the sidecar: both rates, when each came in, and each point's own rate
    sidecar = json.loads(sidecar_path(dump).read_text())
    assert [rate for _, rate in sidecar["rate_changes"]] == [4 * KiB, MiB]
    assert sidecar["rate"] == MiB and profile.period == MiB
    column = sidecar["series_columns"].index("rate")
    rates = [point[column] for point in sidecar["rss_series"]]
    assert rates[0] == 4 * KiB and rates[-1] == MiB
    assert loaded.totals.live_error is not None
