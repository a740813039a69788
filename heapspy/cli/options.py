"""Option values shared by several commands, parsed into plain data once."""

from __future__ import annotations

from heapspy.errors import UsageError
from heapspy.units import parse_duration, parse_size


def rate(text: str) -> int:
    value = parse_size(text, "sampling rate")
    if value < 0:
        raise UsageError("The sampling rate cannot be negative.")
    return value


def duration(text: str | None, what: str = "duration") -> float | None:
    if text is None:
        return None
    value = parse_duration(text, what)
    if value <= 0:
        raise UsageError(f"The {what} must be positive, got {text!r}.")
    return value


def frames(value: int) -> int:
    if not 1 <= value <= 512:
        raise UsageError(f"--frames must be between 1 and 512, got {value}.")
    return value


def keep(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise UsageError(f"--keep must be at least 1, got {value}.")
    return value
