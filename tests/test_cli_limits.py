"""Values the command line and the daemon's config file must refuse alike, each with
one line and exit 2 (never a traceback; never accepted by one and refused by the other),
and a malformed command on a session's control socket."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from support import Target, run_heapspy

from heapspy import control
from heapspy.config import AttachConfig
from heapspy.daemon.config import load_config
from heapspy.errors import UsageError
from heapspy.session import Session

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
        ("--idle-report", "2m", "idle_report", '"2m"', "and 60 s, got 120 s"),
        ("--idle-report", "500ms", "idle_report", "0.5", "and 60 s, got 0.5 s"),
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


def test_a_malformed_control_command_is_answered_not_fatal(
    spawn: Callable[..., Target], tmp_path: Path
) -> None:
    """A control client (same user or root) sending a rate that is not a number gets an
    error reply; the session goes on (it once ended with a ValueError traceback)."""
    target = spawn(None, "probe_target.py", "asyncio")
    session = Session.attach(target.pid, AttachConfig(dump_dir=tmp_path, final_dump=False))
    replies: list[dict[str, Any]] = []

    def client() -> None:
        replies.append(control.request(target.pid, "rate", rate="lots"))
        replies.append(control.request(target.pid, "status"))

    thread = threading.Thread(target=client)
    try:
        thread.start()
        while thread.is_alive():
            session.run(duration=0.1)
    finally:
        thread.join()
        session.detach()
    assert replies[0]["ok"] is False and "malformed command" in replies[0]["error"]
    assert replies[1]["ok"] is True and replies[1]["status"]["pid"] == target.pid
