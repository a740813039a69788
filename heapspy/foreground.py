"""One session run in the foreground of this process, from attach to detach.

Shared by ``heapspy attach`` (and ``heapspy dump`` without a session) and by the daemon's
forked children, so that both say the same lines and obey the same signals: SIGINT and
SIGTERM detach cleanly (final dump included), SIGUSR1 writes a dump. The handlers only
record the request; the session loop acts on it between two steps. The previous
handlers are put back when the session ends.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any, Callable

from heapspy.census import CensusOptions, ProgressSink
from heapspy.config import AttachConfig
from heapspy.errors import ProtocolViolation
from heapspy.printable import printable
from heapspy.session import Progress, Session
from heapspy.units import format_bytes

# What a caller that runs sessions (the daemon's child) learns of each, as data: the
# lines on stderr are for people and carry text from the target, so nothing is decided
# from them. ("attached", {...}) once the agent has acknowledged; ("ended", {...}) after
# the detach, with ``by_user`` true only when `heapspy detach` asked for it.
Events = Callable[[str, dict[str, Any]], None]


def _say(line: str) -> None:
    print(f"heapspy: {printable(line)}", file=sys.stderr, flush=True)


class SignalRequests:
    """SIGINT and SIGTERM as a request to stop (SIGUSR1, if asked, as a request for a
    dump), made to the session once there is one and remembered until then; the previous
    handlers come back on exit. Handlers only record: the session loop acts."""

    def __init__(self, dumps: bool = True, early: Callable[[str], None] | None = None) -> None:
        self.signals = (signal.SIGINT, signal.SIGTERM, *((signal.SIGUSR1,) if dumps else ()))
        self.session: Session | None = None
        self.reason = ""  # why a stop was asked for; "" while none was
        self._previous: dict[int, Any] = {}
        self._early = early  # told, once, of a stop asked for before there is a session

    def __enter__(self) -> SignalRequests:
        self._previous = {s: signal.signal(s, self._on_signal) for s in self.signals}
        return self

    def __exit__(self, *_exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGUSR1:
            if self.session is not None:
                self.session.request_dump("signal")
            return
        first = not self.reason
        self.reason = self.reason or ("interrupted" if signum == signal.SIGINT else "terminated")
        if self.session is not None:
            self.session.request_stop(self.reason)
        elif first and self._early is not None:
            self._early(self.reason)

    def follow(self, session: Session) -> None:
        """Direct requests to ``session`` from now on, and pass on one made before."""
        self.session = session
        if self.reason:
            session.request_stop(self.reason)


def run_foreground(
    pid: int,
    config: AttachConfig,
    *,
    progress: Progress | None = None,
    attached: Callable[[], None] | None = None,
    quiet: bool = False,
    say: Callable[[str], None] = _say,
    events: Events | None = None,
    start_time: int | None = None,
    census_progress: ProgressSink | None = None,
    census_end: Callable[[], None] | None = None,
) -> Session:
    """Attach, run until ``config.duration``, a signal or the agent's end, and detach.

    ``attached`` runs once the agent has acknowledged (the CLI clears its spinner there).
    ``events`` hears of the attach and the end as data (see ``Events``). A session the
    agent ended by breaking the protocol raises ``ProtocolViolation`` after its detach
    (final dump included). ``start_time``: see ``Session.attach``. ``census_progress``
    hears how the census at attach goes, ``census_end`` that it ended.
    """

    def early(why: str) -> None:
        # A Ctrl-C while the agent is on its way must not go unanswered for seconds.
        if attached is not None:
            attached()  # clears a progress line
        say(
            f"{why}: detaching as soon as the agent has started (within "
            f"{config.attach_timeout:g} s), which leaves the process as it was"
        )

    with SignalRequests(early=None if quiet else early) as requests:
        try:
            session = Session.attach(pid, config, progress=progress, start_time=start_time)
        finally:
            if attached is not None:
                attached()
        requests.follow(session)
        return run_attached(
            session,
            config,
            quiet=quiet,
            say=say,
            events=events,
            census_progress=census_progress,
            census_end=census_end,
        )


def run_attached(
    session: Session,
    config: AttachConfig,
    *,
    quiet: bool = False,
    say: Callable[[str], None] = _say,
    events: Events | None = None,
    census_progress: ProgressSink | None = None,
    census_end: Callable[[], None] | None = None,
) -> Session:
    """``run_foreground`` from the attach on: what the daemon runs for a session its
    attach helper handed over (``heapspy.daemon.handoff``); stop requests come through
    ``session.request_stop``."""
    pid = session.target.pid
    info = session.info
    assert info is not None
    if events is not None:
        events("attached", {"pid": pid, "mode": info.mode, "method": info.method})
    if not quiet:
        say(
            f"attached to {pid} (Python {info.python}) via {info.method} in "
            f"{info.latency_ms:.0f} ms; {info.mode} mode"
        )
        for note in info.notes:
            say(f"note: {note}")
    if not config.census:
        session.skip_census("attached with --no-census")
    elif session.start_census(CensusOptions(), census_progress, census_end) and not quiet:
        say(
            "taking a census of the heap at attach in the background (--no-census skips "
            "it; Ctrl-C ends the session, keeping what it has counted)"
        )
    try:
        reason = session.run(config.duration)
    finally:
        session.detach()
    if not quiet:
        agg = session.aggregator
        found = session.census_summary
        before = "" if found is None else f"; heap at attach {format_bytes(found['bytes'])}"
        say(
            f"detached from {pid} ({reason or session.end_reason}); live heap "
            f"{format_bytes(agg.heap_estimate())} over {agg.intervals} intervals{before}"
        )
    if events is not None:
        events(
            "ended",
            {
                "reason": reason or session.end_reason,
                "by_user": session.detached_by_user,
                "violation": session.violation or None,
                # the agent sent more than a session keeps: the daemon waits longest
                "dropped_stacks": session.aggregator.dropped_stacks,
            },
        )
    if session.violation:
        final = [d for d in session.dumps if d.endswith("-final.pb.gz")]
        raise ProtocolViolation(
            f"The agent in process {pid} broke the protocol ({session.violation}); heapspy "
            "ended the session" + (f" and wrote its final dump: {final[-1]}." if final else ".")
        )
    return session
