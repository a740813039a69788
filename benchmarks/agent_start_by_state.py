"""How long the agent takes to start for each thing a target's main thread may be doing.

Attach latency (Session.attach: inspection to the agent's acknowledgement) against the
probe target in each mode, on one pre-3.14 interpreter (ptrace) and on 3.14 (PEP 768):
busy loop, 10 ms sleep loop, lock wait (ptrace nudges it), idle asyncio loop, 8 spinning
threads, 4 allocating worker threads, and on 3.14 a sleeping main thread reached through
--thread. Blocked-forever states (sleep(3) loop, accept) are reported as what they do:
start when the call returns, or time out.
Run: .venv/bin/python benchmarks/agent_start_by_state.py [N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from interpreters import find_interpreters  # noqa: E402

from heapspy.config import AttachConfig  # noqa: E402
from heapspy.errors import AgentTimeout  # noqa: E402
from heapspy.session import Session  # noqa: E402

SLEEP_LOOP = textwrap.dedent(
    """
    import os, time
    print("READY", os.getpid(), flush=True)
    while True:
        time.sleep(0.01)
    """
)


def _start(argv: tuple[str, ...], *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    env = dict(os.environ, HEAPSPY_PROBE="/dev/null")
    proc = subprocess.Popen([*argv, *args], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()


def _measure(argv: tuple[str, ...], args: list[str], n: int, **kw: object) -> str:
    proc, ready = _start(argv, *args)
    config = AttachConfig(final_dump=False, dump_dir=Path(tempfile.mkdtemp()), **kw)  # type: ignore[arg-type]
    if kw.get("thread") == "worker":
        config = AttachConfig(
            final_dump=False, dump_dir=config.dump_dir, thread=int(ready[2]), attach_timeout=5
        )
    try:
        lat = []
        for _ in range(n):
            try:
                session = Session.attach(proc.pid, config)
            except AgentTimeout:
                return f"timed out after {config.attach_timeout:g} s"
            assert session.info is not None
            lat.append(session.info.latency_ms)
            session.detach()
        lat.sort()
        return f"median {statistics.median(lat):7.1f} ms   max {lat[-1]:7.1f} ms"
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    os.environ.setdefault("HEAPSPY_RUNTIME_DIR", tempfile.mkdtemp(prefix="heapspy-bench-"))
    probe = str(ROOT / "tests" / "targets" / "probe_target.py")
    sleeper = Path(tempfile.mkdtemp()) / "sleep_loop.py"
    sleeper.write_text(SLEEP_LOOP)
    chosen = [i for i in find_interpreters() if i.label in ("3.12-pyenv", "3.14-debian")]
    for interp in chosen:
        print(f"{interp.label}:")
        cases: list[tuple[str, list[str], dict[str, object]]] = [
            ("busy loop", [probe, "busy"], {}),
            ("10 ms sleep loop", [str(sleeper)], {}),
            ("idle asyncio loop", [probe, "asyncio"], {}),
            ("4 allocating workers", [probe, "workers"], {}),
            ("8 spinning threads", [probe, "threads"], {}),
            ("sleep(3) loop", [probe, "sleep"], {"attach_timeout": 4.0}),
            ("blocked in accept", [probe, "accept"], {"attach_timeout": 2.0}),
        ]
        if interp.version < (3, 14):
            cases.insert(3, ("waiting on a lock (nudged)", [probe, "lock"], {}))
        else:
            cases.append(
                ("sleeping main, --thread worker", [probe, "sleep-worker"], {"thread": "worker"})
            )
        for name, args, kw in cases:
            runs = 1 if "sleep(3)" in name or "accept" in name else n
            print(f"  {name:<32} {_measure(interp.argv, args, runs, **kw)}")


if __name__ == "__main__":
    main()
