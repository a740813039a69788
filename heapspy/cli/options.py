"""Option values shared by several commands, parsed into plain data once.

The checks themselves live in ``heapspy.config`` so that the daemon's config file is
held to the same rules without importing the command line.
"""

from __future__ import annotations

from heapspy.config import (
    check_duration,
    check_frames,
    check_idle_report,
    check_keep,
    check_native_frames,
    check_rate,
)
from heapspy.units import parse_duration


def rate(text: str) -> int:
    return check_rate(text)


def duration(text: str | None, what: str = "duration") -> float | None:
    return check_duration(text, what)


def idle_report(text: str, interval: float) -> float:
    """``--idle-report``: "0" (off) or a duration from the interval up to a minute."""
    return check_idle_report(parse_duration(text, "--idle-report"), interval, "--idle-report")


def frames(value: int) -> int:
    return check_frames(value, "--frames")


def keep(value: int | None) -> int | None:
    return check_keep(value, "--keep")


def native_frames(native: bool, value: bool) -> bool:
    return check_native_frames(native, value, "--native-frames", "--native")
