from __future__ import annotations

import pytest

from heapspy.errors import UsageError
from heapspy.units import format_bytes, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512KiB", 524288),
        ("64k", 65536),
        ("1", 1),
        ("0", 0),
        ("1.5GiB", 1610612736),
        ("2MB", 2097152),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1", "5 parsecs", ""])
def test_parse_size_rejects_with_example(text: str) -> None:
    with pytest.raises(UsageError, match="e.g. 512KiB"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"), [("10s", 10), ("15m", 900), ("250ms", 0.25), ("2", 2)]
)
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == expected


def test_format_bytes() -> None:
    assert format_bytes(100) == "100 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(-3 * 1024**3) == "-3.0 GiB"
    assert format_bytes(0) == "0 B"
    assert format_bytes(1) == "1 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1024) == "1.0 KiB"
    assert format_bytes(10 * 2**20 + 2**19) == "10.5 MiB"
    assert format_bytes(5 * 2**40) == "5.0 TiB"  # report's totals of a long churn
    assert format_bytes(3 * 2**50) == "3.0 PiB"


def test_format_bytes_signed() -> None:
    """Growth, as diff and top show it: a sign on either side of zero, none on zero."""
    assert format_bytes(2048, signed=True) == "+2.0 KiB"
    assert format_bytes(-512, signed=True) == "-512 B"
    assert format_bytes(0, signed=True) == "0 B"


HUGE = "9" * 400


@pytest.mark.parametrize("text", [HUGE, HUGE + "GiB", HUGE + "." + HUGE, "5000000TiB"])
def test_a_huge_size_is_a_usage_error_not_an_overflow(text: str) -> None:
    with pytest.raises(UsageError, match="too large"):
        parse_size(text, "--rate")


def test_a_huge_duration_is_a_usage_error_not_an_overflow() -> None:
    with pytest.raises(UsageError, match="too long"):
        parse_duration(HUGE + "d", "--duration")
