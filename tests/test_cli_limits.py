"""Values the command line and the daemon's config file must refuse alike, each with
one line and exit 2 (never a traceback; never accepted by one and refused by the other)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import run_heapspy

from heapspy.daemon.config import load_config
from heapspy.errors import UsageError

HUGE = "9" * 400


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
    out = run_heapspy("attach", "1", option, value)
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    with pytest.raises(UsageError, match=expected) as info:
        load_config(_daemon_watch(tmp_path, f"{key} = {toml_value}"))
    assert f'key "{key}"' in info.value.message
