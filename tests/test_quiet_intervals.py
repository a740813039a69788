"""Quiet intervals (``idle_report``): while nothing live changes, the agent still collects
every interval but sends only every ``idle_report``, the collections merged; anything
live that changes goes out within one interval; nothing is lost on the way.

One real target (``tests/targets/quiet_worker.py``) driven through the Session API: it
grows, then churns (allocations freed at once), then stops; each step waits for the
frames themselves. At 4 KiB every 64 KiB block is sampled (a miss has probability
e^-16), so the dump's count of churn()'s allocations is exactly the target's own.
"""

from __future__ import annotations

import functools
import json
import os
import signal
from pathlib import Path
from typing import Any, Callable

from heapspy_agent import protocol
from support import Target

from heapspy.config import AttachConfig
from heapspy.dumps import sidecar_path
from heapspy.pprof import read_profile
from heapspy.session import Session

KiB = 1024
LIMIT = 60.0  # only a broken or hung session waits this long


def _run_until(session: Session, cond: Callable[[], bool], what: str) -> None:
    waited = 0.0
    while not cond():
        assert waited < LIMIT, f"the session never saw {what}"
        session.run(duration=0.2)
        waited += 0.2


def _more(agg: Any, reports: int) -> bool:
    return bool(agg.reports > reports)


def _alloc_objects(dump: Path, function: str) -> int:
    profile = read_profile(dump)
    index = profile.sample_type_names.index("alloc_objects")
    return sum(int(s.values[index]) for s in profile.samples if s.stack[-1].function == function)


def test_quiet_collections_are_merged_live_changes_sent_at_once(
    spawn: Callable[..., Target], tmp_path: Path
) -> None:
    target = spawn(None, "quiet_worker.py")
    interval, idle_report = 0.25, 2.0
    config = AttachConfig(
        rate=4 * KiB, dump_dir=tmp_path, interval=interval, idle_report=idle_report, census=False
    )
    session = Session.attach(target.pid, config)
    agg = session.aggregator
    seqs: list[int] = []  # the seq of each SAMPLES frame, as the session folded them in
    session.on_samples = lambda s: seqs.append(s.aggregator.last_seq)
    beats: list[int] = []  # the agent's heartbeats: after how many frames each came
    assert session.channel is not None
    handler = session.channel.on_frame

    def counting(kind: int, body: dict[str, Any]) -> None:
        if kind == protocol.HEARTBEAT:
            beats.append(len(seqs))
        handler(kind, body)

    session.channel.on_frame = counting

    def gaps() -> list[int]:
        return [b - a for a, b in zip(seqs, seqs[1:])]

    try:
        # growing: every collection has live changes, every one is sent
        os.kill(target.pid, signal.SIGUSR1)
        _run_until(session, lambda: target.state()["grow"] > 0, "grow start")
        start = len(seqs)

        def every_interval() -> bool:
            run = 0
            for g in gaps()[start:]:
                run = run + 1 if g == 1 else 0
                if run >= 4:
                    return True
            return False

        _run_until(session, every_interval, "a frame every interval")
        grow_site = [s for s in agg.sites.values() if s.stack[-1].function == "grow"]
        assert grow_site and grow_site[0].inuse_objects > 0
        # churning only: allocations come and go, nothing live changes: one frame stands
        # for about idle_report / interval collections
        os.kill(target.pid, signal.SIGUSR1)
        _run_until(session, lambda: target.state()["phase"] == 2, "churn alone")
        start = len(seqs)
        _run_until(session, lambda: sum(g >= 3 for g in gaps()[start:]) >= 3, "merged frames")
        assert max(gaps()[start:]) <= round(idle_report / interval) + 1, gaps()
        assert agg.intervals >= agg.reports + 6, (agg.intervals, agg.reports)
        # and no heartbeat between them: the agent beats only after idle_report of
        # silence (it beat after every second of it: once or more between each two)
        assert len([b for b in beats if b > start]) <= 1, (beats, start, seqs)
        # stopped: a dump now has every allocation, held back or not yet collected (the
        # last churns came after the last live change: some are held back)
        os.kill(target.pid, signal.SIGUSR1)
        _run_until(session, lambda: target.state()["settled"], "the end of allocations")
        truth = target.state()
        on_demand = Path(session.write_dump("on-demand"))
        assert _alloc_objects(on_demand, "churn") == truth["churn"], truth
        status = session.status()
        assert status["idle_report"] == idle_report and status["reports"] == agg.reports
        side = json.loads(sidecar_path(on_demand).read_text())
        reporting = side["reporting"]
        assert reporting["idle_report"] == idle_report, reporting
        assert reporting["intervals"] >= reporting["reports"] + 6, reporting
    finally:
        session.detach()
    # the final dump: the same, and the frames' seq never went backwards
    (final,) = tmp_path.glob("*-final.pb.gz")
    assert _alloc_objects(final, "churn") == truth["churn"]
    assert _alloc_objects(final, "grow") >= truth["grow"]  # list growth may add a sample
    assert all(g >= 1 for g in gaps()), seqs


def test_a_site_that_allocates_now_and_then_stays_between_reports(
    spawn: Callable[..., Target], tmp_path: Path
) -> None:
    """With quiet intervals a freed stack is evicted only after more collections than
    idle_report spans: an eviction is sent at once, so a site allocating every few
    intervals was evicted and sent again between two reports (an idle-ish worker's
    frames were mostly evictions). Here pulse() allocates every 4 intervals: its stack
    was evicted after each pulse (3 unchanged collections), and now stays."""
    target = spawn(None, "quiet_worker.py")
    config = AttachConfig(
        rate=4 * KiB, dump_dir=tmp_path, interval=0.25, idle_report=2.0, census=False
    )
    session = Session.attach(target.pid, config)
    agg = session.aggregator
    pulse_ids: set[int] = set()  # every stack id pulse() had
    evicted: set[int] = set()
    assert session.channel is not None
    handler = session.channel.on_frame

    def noting(kind: int, body: dict[str, Any]) -> None:
        if kind in (protocol.SAMPLES, protocol.STACKS):
            evicted.update(body.get("evicted", ()))
            for stack in body.get("stacks", ()):
                if stack["frames"][-1][0] == "pulse":  # root first
                    pulse_ids.add(stack["id"])
        handler(kind, body)

    session.channel.on_frame = noting
    try:
        os.kill(target.pid, signal.SIGHUP)
        _run_until(session, lambda: target.state()["pulse"] >= 6, "six pulses")
        reports = agg.reports
        _run_until(session, functools.partial(_more, agg, reports + 1), "two more reports")
    finally:
        session.detach()
    assert pulse_ids and not pulse_ids & evicted, (pulse_ids, evicted)
    assert len(pulse_ids) == 1, pulse_ids
