"""A live view of the heap: the top allocation sites now, from a session's aggregator.

The same ``TopView`` comes from a session in this process (``heapspy top`` attached
itself) or from another one over its control socket (a hand-started or daemon-held
session), so one renderer serves both; growth is worked out by the viewer, between the
views it has seen, which keeps sessions free of per-viewer state.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Protocol

from heapspy import control
from heapspy.errors import NoSession, UsageError
from heapspy.model import TYPE, TopRow
from heapspy.sampling import Sampling, read_sampling

if TYPE_CHECKING:
    from heapspy.aggregate import Aggregator

ORDERS = ("inuse_space", "alloc_space")


@dataclass(frozen=True)
class TopView:
    time: float
    sampling: Sampling
    intervals: int
    heap: int  # estimated live Python heap
    rss: int | None
    rows: tuple[TopRow, ...]
    runtime: dict[str, Any] | None = None  # the agent's latest runtime facts
    memory: dict[str, Any] | None = None  # where the RSS is (heapspy/rss.py), <= 10 s old
    by: str = ""  # rows are the values of this label (model.LABEL_KEYS), not functions

    @property
    def sampled(self) -> bool:
        """Estimates with sampling errors, not exact values."""
        return self.sampling.estimates

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "sampling": self.sampling.to_json()}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> TopView:
        # fields a session of an older heapspy does not send keep their defaults
        fields = TopRow.__dataclass_fields__
        rows = tuple(TopRow(**{k: r[k] for k in fields if k in r}) for r in body["rows"])
        return cls(
            time=float(body["time"]),
            sampling=read_sampling(body),
            intervals=int(body["intervals"]),
            heap=int(body["heap"]),
            rss=None if body.get("rss") is None else int(body["rss"]),
            rows=rows,
            runtime=body["runtime"] if isinstance(body.get("runtime"), dict) else None,
            memory=body["memory"] if isinstance(body.get("memory"), dict) else None,
            by=body["by"] if isinstance(body.get("by"), str) else "",
        )


class Running(Protocol):
    """What ``watch_session`` needs of a session: its aggregator, and running it for a
    while. A protocol, not ``Session``, so that the session (which answers ``top`` over
    its control socket with ``top_view``) and this module do not import each other."""

    @property
    def aggregator(self) -> Aggregator: ...

    def run(self, duration: float | None = None) -> str: ...

    def memory_for_view(self) -> dict[str, Any] | None: ...

    def types_for_view(self) -> None: ...


def check_order(name: str) -> str:
    if name not in ORDERS:
        raise UsageError(f"Unknown order {name!r}: use {' or '.join(ORDERS)}.")
    return name


def top_view(agg: Aggregator, n: int, order: str = "inuse_space", by: str = "") -> TopView:
    last = agg.series[-1] if agg.series else None
    return TopView(
        time=time.time(),
        sampling=agg.sampling,
        intervals=agg.intervals,
        heap=agg.heap_estimate(),
        rss=last.rss if last else None,
        rows=tuple(agg.top_sites(n, order, by)),
        runtime=dict(agg.facts),
        by=by,
    )


def remote_view(pid: int, n: int, order: str, by: str = "") -> TopView:
    """The view from the session (of another process) that holds ``pid``."""
    extra = {"by": by} if by else {}  # a session of an older heapspy knows no "by"
    reply = control.request(pid, "top", timeout=10.0, n=n, order=order, **extra)
    if not reply.get("ok"):
        raise NoSession(f"The session holding {pid} did not answer `top`: {reply.get('error')}")
    return TopView.from_json(reply["view"])


def watch_remote(
    pid: int, n: int, order: str, every: float, show: Callable[[TopView], None],
    duration: float | None = None, stop: Callable[[], bool] = lambda: False, by: str = "",
) -> None:  # fmt: skip
    """Show the held session's view every ``every`` seconds until ``duration``, ``stop()``
    or the session's end (NoSession)."""
    t0 = time.monotonic()
    while not stop():
        show(remote_view(pid, n, order, by))
        left = None if duration is None else duration - (time.monotonic() - t0)
        if left is not None and left <= 0:
            return
        deadline = time.monotonic() + (every if left is None else min(every, left))
        while time.monotonic() < deadline and not stop():
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def watch_session(
    session: Running, n: int, order: str, every: float, show: Callable[[TopView], None],
    duration: float | None = None, by: str = "",
) -> str:  # fmt: skip
    """Run a session of this process, showing its view every ``every`` seconds; returns
    why it ended (the session's ``run`` reasons, or "duration elapsed")."""
    t0 = time.monotonic()
    while True:
        left = None if duration is None else duration - (time.monotonic() - t0)
        if left is not None and left <= 0:
            return "duration elapsed"
        reason = session.run(every if left is None else min(every, left))
        if by == TYPE:
            session.types_for_view()
        view = top_view(session.aggregator, n, order, by)
        show(replace(view, memory=session.memory_for_view()))
        if reason != "duration elapsed":
            return reason
