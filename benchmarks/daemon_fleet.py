"""A daemon watching N small workers, for the daemon benchmarks (memory, CPU).

The daemon is the one of the checkout given by ``--tree`` (default: this one), so the
same benchmark measures another version (``git archive REV | tar -x -C DIR``; copy the
shim into DIR/agent/heapspy_agent/). Readiness is the daemon's own "attached to" line
for every worker, whatever runs the sessions (processes or threads).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
from harness import ROOT

# idle-ish: wakes 100 times a second and allocates a little each time
WORKER = (
    "import sys, time\nwhile True:\n    x = [str(i) for i in range(100)]\n    time.sleep(0.01)\n"
)


@dataclass
class Fleet:
    daemon: psutil.Process
    workers: list[subprocess.Popen[bytes]]
    log: Path
    attach_seconds: float  # from the daemon's start to the last worker attached

    def processes(self) -> list[psutil.Process]:
        """The daemon and every process it runs now (session processes, helpers)."""
        return [self.daemon, *self.daemon.children(recursive=True)]


def _attached(log: Path, pids: list[int]) -> int:
    text = log.read_text(errors="replace")
    return sum(1 for p in pids if re.search(rf"\] attached to {p} ", text))


@contextmanager
def fleet(
    python: list[str],
    n: int,
    tree: Path = ROOT,
    census: bool = False,
    scan_interval: str = "0.5s",
    timeout: float = 600.0,
    max_attaching: int | None = None,
) -> Iterator[Fleet]:
    """Start ``n`` workers and a daemon (``tree``'s) watching them; yield once every one
    is attached. ``census``: the census at attach (the default in a real config) — off
    by default so that what is measured is the steady state, not a one-off walk."""
    tag = f"hs-fleet-{uuid.uuid4().hex[:8]}"
    workers = [subprocess.Popen([*python, "-c", WORKER, tag]) for _ in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "heapspy.toml"
        config.write_text(
            f'[daemon]\nscan_interval = "{scan_interval}"\nsettle = "0.5s"\n'
            + (f"max_attaching = {max_attaching}\n" if max_attaching is not None else "")
            + f'[[watch]]\nname = "w"\ncmdline = "{tag}"\ndump_dir = "{tmp}/dumps"\n'
            f'final_dump = false\ncensus = {"true" if census else "false"}\n'
            'attach_timeout = "60s"\n'
        )
        log = Path(tmp) / "daemon.log"
        env = {**os.environ, "PYTHONPATH": f"{tree}:{tree / 'agent'}"}
        start = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "heapspy", "daemon", "--config", str(config)],
                cwd=tree, stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        try:
            pids = [w.pid for w in workers]
            while _attached(log, pids) < n:
                if proc.poll() is not None or time.monotonic() - start > timeout:
                    raise SystemExit(
                        f"only {_attached(log, pids)} of {n} attached:\n"
                        + log.read_text()[-3000:]
                    )
                time.sleep(0.2)
            yield Fleet(psutil.Process(proc.pid), workers, log, time.monotonic() - start)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for w in workers:
                w.kill()
                w.wait()


def load() -> str:
    """The machine's load, to print beside every figure (it is shared)."""
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} cores"
