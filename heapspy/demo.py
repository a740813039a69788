"""The built-in example: start a leaking worker, attach, dump, and show what was found."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from heapspy.config import AttachConfig
from heapspy.errors import HeapspyError
from heapspy.model import TopRow
from heapspy.session import Session


@dataclass(frozen=True)
class DemoResult:
    pid: int
    dumps: tuple[str, ...]
    top: tuple[TopRow, ...]
    sampled: bool  # the figures are sampling estimates


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
    worker = start_worker()
    try:
        time.sleep(0.5)  # let it build up some heap first
        session = Session.attach(worker.pid, config)
        try:
            session.run(config.duration)
        finally:
            session.detach()
        top = tuple(session.aggregator.top_sites(8))
        return DemoResult(worker.pid, tuple(session.dumps), top, session.aggregator.sampled)
    finally:
        worker.kill()
        worker.wait()


def default_config(dump_dir: Path, seconds: float) -> AttachConfig:
    return AttachConfig(duration=seconds, dump_dir=dump_dir)
