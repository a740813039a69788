from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from heapspy.daemon.config import load_config
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


HUGE = "9" * 400
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text", [HUGE, HUGE + "GiB", HUGE + "." + HUGE, "5000000TiB"])
def test_a_huge_size_is_a_usage_error_not_an_overflow(text: str) -> None:
    with pytest.raises(UsageError, match="too large"):
        parse_size(text, "--rate")


def test_a_huge_duration_is_a_usage_error_not_an_overflow() -> None:
    with pytest.raises(UsageError, match="too long"):
        parse_duration(HUGE + "d", "--duration")


def _daemon_watch(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "heapspy.toml"
    path.write_text(f'[[watch]]\nname = "api"\ncmdline = "gunicorn"\n{line}\n')
    return path


@pytest.mark.parametrize(
    ("option", "value", "key", "toml_value", "expected"),
    [
        ("--rate", HUGE, "rate", HUGE, "too large"),  # an integer in TOML: no overflow either
        ("--rate", HUGE, "rate", f'"{HUGE}KiB"', "too large"),
        ("--max-bytes", "0", "max_bytes", '"0"', "must be positive"),
        ("--max-bytes", "0", "max_bytes", "0", "must be positive"),
    ],
)
def test_the_cli_and_the_daemon_config_refuse_the_same_values(
    tmp_path: Path, option: str, value: str, key: str, toml_value: str, expected: str
) -> None:
    """Exit 2 and one line, from `heapspy attach` and from the daemon's config alike
    (never an OverflowError traceback; never accepted by one and refused by the other)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "agent")])}
    out = subprocess.run(
        [sys.executable, "-m", "heapspy", "attach", str(os.getpid()), option, value],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    with pytest.raises(UsageError, match=expected) as info:
        load_config(_daemon_watch(tmp_path, f"{key} = {toml_value}"))
    assert f'key "{key}"' in info.value.message
