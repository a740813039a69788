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
from typing import Callable

from heapspy.config import AttachConfig
from heapspy.session import Progress, Session
from heapspy.units import format_bytes


def _say(line: str) -> None:
    print(f"heapspy: {line}", file=sys.stderr, flush=True)


def run_foreground(
    pid: int,
    config: AttachConfig,
    *,
    progress: Progress | None = None,
    attached: Callable[[], None] | None = None,
    quiet: bool = False,
    say: Callable[[str], None] = _say,
) -> Session:
    """Attach, run until ``config.duration``, a signal or the agent's end, and detach.

    ``attached`` runs once the agent has acknowledged (the CLI clears its spinner there).
    The daemon reads the ``attached to PID`` and ``detached from PID (why)`` lines, so
    their wording is part of the interface.
    """
    current: list[Session] = []
    early: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGUSR1:
            if current:
                current[0].request_dump("signal")
            return
        reason = "interrupted" if signum == signal.SIGINT else "terminated"
        if current:
            current[0].request_stop(reason)
        else:
            early.append(reason)

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    previous = {s: signal.signal(s, on_signal) for s in signals}
    try:
        try:
            session = Session.attach(pid, config, progress=progress)
        finally:
            if attached is not None:
                attached()
        current.append(session)
        info = session.info
        assert info is not None
        if not quiet:
            say(
                f"attached to {pid} (Python {info.python}) via {info.method} in "
                f"{info.latency_ms:.0f} ms; {info.mode} mode"
            )
            for note in info.notes:
                say(f"note: {note}")
        if early:
            session.request_stop(early[0])
        try:
            reason = session.run(config.duration)
        finally:
            session.detach()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not quiet:
        agg = session.aggregator
        say(
            f"detached from {pid} ({reason or session.end_reason}); live heap "
            f"{format_bytes(agg.heap_estimate())} over {agg.intervals} intervals"
        )
    return session
