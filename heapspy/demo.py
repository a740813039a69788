"""The built-in example: start a leaking worker, attach, dump, and show what was found."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from heapspy.config import DEFAULT_RATE, AttachConfig
from heapspy.errors import HeapspyError
from heapspy.model import TopRow
from heapspy.session import Session


@dataclass(frozen=True)
class DemoResult:
    pid: int
    dumps: tuple[str, ...]
    top: tuple[TopRow, ...]
    sampled: bool  # the figures are sampling estimates
    kept: int | None = None  # what the worker counted it kept while attached (the truth)

    @property
    def leak(self) -> TopRow | None:
        """heapspy's figures for the worker's leak, Shipper.buffer_line."""
        return next((r for r in self.top if r.function.startswith(LEAK_FUNCTION + " ")), None)


LEAK_FUNCTION = "Shipper.buffer_line"


def start_worker(python: str = sys.executable) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [python, "-m", "heapspy.examples.leaky_worker"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise HeapspyError("The example worker did not start.")
    return proc


def run_demo(config: AttachConfig) -> DemoResult:
    """Attach to a fresh worker for ``config.duration``. The worker counts the bytes it
    keeps from just after the attach until just before the detach, which is what heapspy
    sees of its leak: the demo can show the estimate beside the truth."""
    worker = start_worker()
    try:
        time.sleep(0.5)  # let it build up some heap first
        session = Session.attach(worker.pid, config)
        kept = None
        try:
            worker.send_signal(signal.SIGUSR1)  # count from now
            session.run(config.duration)
            worker.send_signal(signal.SIGUSR2)  # stop leaking, say what was kept
            kept = _kept(worker)
        finally:
            session.detach()
        agg = session.aggregator
        top = tuple(agg.top_sites(8))
        return DemoResult(worker.pid, tuple(session.dumps), top, agg.sampling.estimates, kept)
    finally:
        worker.kill()
        worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()


def _kept(worker: subprocess.Popen[str]) -> int | None:
    """The worker's ``KEPT <bytes>`` line; None if it does not come within 5 s."""
    assert worker.stdout is not None
    ready, _, _ = select.select([worker.stdout], [], [], 5.0)
    line = worker.stdout.readline() if ready else ""
    return int(line.split()[1]) if line.startswith("KEPT ") else None


def default_config(dump_dir: Path, seconds: float, rate: int = DEFAULT_RATE) -> AttachConfig:
    return AttachConfig(duration=seconds, dump_dir=dump_dir, rate=rate)
