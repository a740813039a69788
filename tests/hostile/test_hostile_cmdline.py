"""Command lines are written by any local user: the daemon's scan reads and matches only
their first CMDLINE_CAP bytes, with RE2 (linear time), so no process can stall it.

How long a scan takes is a figure, in benchmarks/scan_hostile.py; here the bounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from untrusted_user import as_untrusted

from heapspy.daemon.config import load_config
from heapspy.daemon.match import CMDLINE_CAP, ProcessFacts, matches
from heapspy.daemon.regex import compile_watch_regex

EXAMPLE = Path(__file__).resolve().parents[2] / "systemd" / "heapspy.toml"
# The kernel takes at most 128 KiB per argument and ~2 MiB in all (with the environment)
ARG = ("celery " * (120_000 // 7)).strip()
PADDING = [ARG] * 16  # 1.9 MiB of 'celery celery ...': the worst text for 'celery .* worker'
SCAN = """if True:
    import json, sys
    from pathlib import Path
    from heapspy.daemon.config import load_config
    from heapspy.daemon.discover import scan
    found = scan(load_config(Path(sys.argv[1])).watches).values()
    print(json.dumps({f.pid: (f.watch, len(f.cmdline.encode())) for f in found}))
"""
IDLE = "import time; print('READY', flush=True); time.sleep(300)"


def _start(*argv: str) -> subprocess.Popen[str]:
    prefix = as_untrusted() if os.geteuid() == 0 else ()
    proc = subprocess.Popen(
        [*prefix, "/usr/bin/python3.11", "-c", IDLE, *argv],
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
    )
    assert proc.stdout is not None and proc.stdout.readline().startswith("READY")
    return proc


@pytest.fixture
def hostile() -> Iterator[tuple[subprocess.Popen[str], subprocess.Popen[str]]]:
    """Two processes with ~2 MiB command lines: 'worker' only past the cap, and a real
    celery worker's command line followed by the padding."""
    if not os.path.exists("/usr/bin/python3.11"):
        pytest.skip("needs Debian's /usr/bin/python3.11")
    late = _start(*PADDING, "worker")
    early = _start("celery", "-A", "app", "worker", *PADDING)
    yield late, early
    for proc in (late, early):
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_2mib_command_line_is_read_and_matched_only_up_to_the_cap(
    hostile: tuple[subprocess.Popen[str], subprocess.Popen[str]],
) -> None:
    late, early = hostile
    with open(f"/proc/{late.pid}/cmdline", "rb") as f:
        assert len(f.read()) > 1_900_000  # the kernel really holds ~2 MiB
    facts = ProcessFacts(psutil.Process(late.pid))
    assert len(facts.cmdline.encode()) <= CMDLINE_CAP
    assert facts.argv[:2] == ["/usr/bin/python3.11", "-c"]
    celery = next(w for w in load_config(EXAMPLE).watches if w.name == "celery")
    assert celery.selectors.cmdline == "celery .* worker"
    # 'worker' lies beyond the cap: not seen, so not taken (and never scanned for)
    assert not matches(celery.selectors, facts)
    # a worker's own command line is within the cap, whatever follows it
    assert matches(celery.selectors, ProcessFacts(psutil.Process(early.pid)))
    # the daemon's scan (from another process: a scan skips its own descendants)
    found = json.loads(
        subprocess.run(
            [sys.executable, "-c", SCAN, str(EXAMPLE)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
    )
    assert str(early.pid) in found and str(late.pid) not in found
    watch, length = found[str(early.pid)]
    assert watch == "celery" and length <= CMDLINE_CAP


def test_watch_regexes_run_in_a_linear_time_engine() -> None:
    # Python's re backtracks: 'celery .* worker' is quadratic in 'celery celery ...'
    # (205 KiB took 8.8 s). RE2 has no backtracking, hence none of its syntax either:
    pattern = compile_watch_regex("celery .* worker")
    assert type(pattern).__module__.startswith("re2")
    assert pattern.search("celery -A app worker -l info")
    with pytest.raises(ValueError, match="RE2 syntax"):
        compile_watch_regex("(a)\\1")  # a backreference
