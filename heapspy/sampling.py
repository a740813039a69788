"""The sampling mode as heapspy's readers meet it: in a dump's sidecar, a session's reply,
or only as a profile's period (a dump copied alone, Go's profiles).

The value is ``heapspy_agent.schema.Sampling``, defined once for both ends of the wire;
this module reads it back from what heapspy wrote, including what older versions wrote
(a ``mode`` and a ``rate``, where rate 0 in "sampled" mode meant totals only).
"""

from __future__ import annotations

from typing import Any

from heapspy_agent.protocol import ProtocolError
from heapspy_agent.schema import DEFAULT_FRAMES, EXACT, MODES, SAMPLED, TOTALS, Sampling

__all__ = ["EXACT", "MODES", "SAMPLED", "TOTALS", "Sampling", "read_sampling"]


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def read_sampling(record: Any, period: int = 1) -> Sampling:
    """The sampling a sidecar, status or view records: its ``sampling`` object, else an
    older heapspy's ``mode`` and ``rate``; with neither, what the profile's period says
    (above 1: sampled at that rate; else every allocation recorded)."""
    if isinstance(record, dict):
        found = record.get("sampling")
        if isinstance(found, dict):
            try:
                return Sampling.from_json(found)
            except ProtocolError:
                pass
        mode, rate = record.get("mode"), _count(record.get("rate"))
        frames = _count(record.get("frames")) or DEFAULT_FRAMES
        if mode == EXACT:
            return Sampling(EXACT, 1, frames)
        if mode in (SAMPLED, TOTALS) and rate is not None and rate != 1:
            return Sampling.of_rate(rate, frames)
    if period > 1:
        return Sampling(SAMPLED, period)
    return Sampling(EXACT, 1)
