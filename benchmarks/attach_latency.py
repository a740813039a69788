"""Attach latency, command start to the agent's acknowledgement, on a busy target.

For every interpreter found (see tests/interpreters.py) it starts the busy probe target,
attaches and detaches N times through the core API and prints the median and p90 of
``Session.attach`` (inspection, placement, injection, agent start and handshake), then
times the whole CLI (`python -m heapspy attach PID --duration 0.1`) to show heapspy's
own start-up. Run: .venv/bin/python benchmarks/attach_latency.py [N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from interpreters import find_interpreters  # noqa: E402

from heapspy.config import AttachConfig  # noqa: E402
from heapspy.session import Session  # noqa: E402


def _start(argv: tuple[str, ...]) -> subprocess.Popen[str]:
    env = dict(os.environ, HEAPSPY_PROBE="/dev/null")
    proc = subprocess.Popen(
        [*argv, str(ROOT / "tests" / "targets" / "probe_target.py"), "busy"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline().startswith("READY")
    return proc


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    os.environ.setdefault("HEAPSPY_RUNTIME_DIR", tempfile.mkdtemp(prefix="heapspy-bench-"))
    config = AttachConfig(final_dump=False, dump_dir=Path(tempfile.mkdtemp()))
    print(f"{'interpreter':<22} {'median ms':>10} {'p90 ms':>8} {'max ms':>8} {'CLI s':>7}")
    for interp in find_interpreters():
        proc = _start(interp.argv)
        try:
            lat = []
            for _ in range(n):
                session = Session.attach(proc.pid, config)
                assert session.info is not None
                lat.append(session.info.latency_ms)
                session.detach()
                time.sleep(0.05)
            t0 = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "heapspy", "attach", str(proc.pid), "--duration", "0.1",
                 "--no-final-dump", "-q"],
                check=True,
            )
            cli = time.monotonic() - t0
        finally:
            proc.kill()
            proc.wait()
        lat.sort()
        p90 = lat[int(0.9 * (len(lat) - 1))]
        print(
            f"{interp.label:<22} {statistics.median(lat):>10.1f} {p90:>8.1f} {lat[-1]:>8.1f} "
            f"{cli:>7.2f}"
        )


if __name__ == "__main__":
    main()
