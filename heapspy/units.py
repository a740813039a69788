"""Parsing and printing byte sizes and durations the way users type them."""

from __future__ import annotations

import re
from decimal import Decimal

from heapspy.errors import UsageError

# Past these a value is a typo, and converting it would overflow: float("1" * 400) is inf,
# and int(inf) raises OverflowError. Sizes in the shim are 64-bit.
MAX_SIZE = 1 << 62  # 4 EiB
MAX_SECONDS = 100 * 365 * 86400.0  # a century

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")
_SECONDS = {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str, what: str = "size") -> int:
    """``512KiB``, ``1.5GiB``, ``64k``, ``100`` → bytes (binary multiples throughout)."""
    match = _SIZE.match(str(text))
    if not match:
        raise UsageError(
            f"Invalid {what} {text!r}: expected a number of bytes with an optional "
            "KiB, MiB, GiB or TiB suffix, e.g. 512KiB."
        )
    unit = (match[2] or "").lower()[:1]
    value = Decimal(match[1]) * _UNITS[unit]  # exact at any length, unlike float
    if value > MAX_SIZE:
        raise UsageError(f"The {what} {text!r} is too large: at most {MAX_SIZE} bytes (4 EiB).")
    return int(value)


def parse_duration(text: str, what: str = "duration") -> float:
    """``10s``, ``15m``, ``250ms``, ``2h``, ``30`` (seconds) → seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise UsageError(
            f"Invalid {what} {text!r}: expected a number with an optional unit "
            "ms, s, m, h or d, e.g. 10s or 15m."
        )
    seconds = float(Decimal(match[1]) * Decimal(str(_SECONDS[match[2] or ""])))
    if seconds > MAX_SECONDS:
        raise UsageError(f"The {what} {text!r} is too long: at most a century.")
    return seconds


def format_bytes(n: float, *, signed: bool = False) -> str:
    """Bytes as every report, table and message shows them: ``512 B``, ``1.5 KiB``,
    ``-3.0 GiB``; one decimal above a KiB, so columns of them line up. ``signed`` puts
    a ``+`` before growth (``+2.0 KiB``; zero has no sign)."""
    sign = "-" if n < 0 else ("+" if signed and n > 0 else "")
    n = abs(n)
    if n < 1024:
        return f"{sign}{n:.0f} B"
    for unit in _BYTE_UNITS:
        n /= 1024
        if n < 1024 or unit == _BYTE_UNITS[-1]:
            break
    return f"{sign}{n:.1f} {unit}"


def size_text(n: int) -> str:
    """Bytes as the command line reads them back exactly: ``512KiB``, ``3MiB``, ``1000``."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def format_age(seconds: float) -> str:
    """How long, as tables show it: ``45s``, ``12m``, ``3h05m``, ``4d``."""
    whole = max(0, int(seconds))
    if whole < 120:
        return f"{whole}s"
    if whole < 7200:
        return f"{whole // 60}m"
    if whole < 172800:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d"
