"""How long the ptrace injector stops a target, and how soon the queued source runs.

Run: ``python benchmarks/attach_latency_ptrace.py [--runs N] [--interpreters 3.11,3.14]``.
For every CPython 3.8-3.13 found (as in the tests; 3.14 only when asked for) and every
main-thread state below, a fresh target from ``tests/targets/`` gets N injections one
after another. "stopped" is
how long the main thread was held (``InjectionReport.stopped_s``); "start" is from the
call to ``inject_pending_call`` to the first statement of the injected source, which
records ``time.monotonic()`` (the clock is system-wide, so both processes read the same
one). ``inject_pending_call`` itself is "call" (ELF facts cached).

States: busy main thread; main thread in a 10 ms sleep loop; main thread waiting on an
Event (futex, with the nudge); main thread in ``accept()`` (the source runs only when a
connection arrives: "start" is measured from the connection, made 50 ms after the
injection); an idle asyncio loop (likewise); a busy main thread with 8 spinning threads
on this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from interpreters import Interpreter, find_interpreters  # noqa: E402

from heapspy.inject.ptrace import inject_pending_call  # noqa: E402
from heapspy.target.process import inspect_target  # noqa: E402

TARGETS = REPO / "tests" / "targets"

SOURCE = (
    "try:\n"
    " import time as _t\n"
    " _n = _t.monotonic()\n"
    " with open({path!r}, 'a') as _f: _f.write(repr(_n) + '\\n')\n"
    " del _t, _n, _f\n"
    "except BaseException: pass\n"
)

# label, script, args (STOP is replaced by a stop-file path), needs a connection to run
SCENARIOS = [
    ("busy", "busy.py", ["STOP"], False),
    ("sleep 10 ms loop", "sleeper.py", ["STOP", "0.01"], False),
    ("futex wait + nudge", "lock_waiter.py", ["event"], False),
    ("accept (from connect)", "accept_server.py", [], True),
    ("asyncio idle (from connect)", "asyncio_idle.py", [], True),
    ("busy + 8 spinning threads", "busy.py", ["STOP", "8"], False),
]


def ran_at(path: Path, n: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().split() if path.exists() else []
        if len(lines) >= n:
            return float(lines[n - 1])
        if time.monotonic() > deadline:
            raise SystemExit(f"injection {n} did not run within {timeout:g} s")
        time.sleep(0.0002)


def poke(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"ping\n")
        s.recv(100)


def scenario(
    interp: Interpreter, script: str, args: list[str], connect: bool, runs: int, tmp: Path
) -> tuple[list[float], list[float], list[float]]:
    name = f"{interp.label}-{script}-{'-'.join(args)}"
    stop, out = tmp / f"stop-{name}", tmp / f"out-{name}"
    argv = [str(stop) if a == "STOP" else a for a in args]
    proc = subprocess.Popen(
        interp.command(str(TARGETS / script), *argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stopped: list[float] = []
    start: list[float] = []
    call: list[float] = []
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        port = int(ready[2]) if connect else 0
        time.sleep(0.2)  # steady state
        target = inspect_target(proc.pid)
        source = SOURCE.format(path=str(out)).encode()
        for i in range(1, runs + 1):
            began = time.monotonic()
            report = inject_pending_call(target, source)
            call.append(time.monotonic() - began)
            stopped.append(report.stopped_s)
            if connect:
                time.sleep(0.05)
                began = time.monotonic()
                poke(port)
            start.append(ran_at(out, i, 20.0) - began)
            time.sleep(0.005)
    finally:
        stop.touch()
        proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()
    return stopped, start, call


def ms(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[int(0.9 * (len(values) - 1))]
    return f"{statistics.median(values) * 1e3:8.2f} {p90 * 1e3:8.2f} {values[-1] * 1e3:8.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--interpreters", default="", help="labels or versions, comma separated")
    args = parser.parse_args()
    wanted = [w.strip() for w in args.interpreters.split(",") if w.strip()]
    interps = [
        i
        for i in find_interpreters()
        if (i.label in wanted or i.version_text in wanted) or (not wanted and i.version <= (3, 13))
    ]
    if not interps:
        print("no CPython 3.8-3.13 found", file=sys.stderr)
        return 1
    print(f"ptrace injection on {os.cpu_count()} CPUs, {args.runs} injections per row (ms)")
    header = "stopped: median  p90  max | start: median  p90  max | call median"
    print(f"{'interpreter':20s} {'main thread':28s} {header}")
    summary: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="heapspy-bench-") as d:
        for interp in interps:
            for label, script, argv, connect in SCENARIOS:
                runs = min(args.runs, 8) if "8 spinning" in label else args.runs
                stopped, start, call = scenario(interp, script, argv, connect, runs, Path(d))
                summary.setdefault(label, []).append(statistics.median(start))
                summary.setdefault("stopped", []).extend(stopped)
                print(
                    f"{interp.label:20s} {label:28s} {ms(stopped)}   {ms(start)}   "
                    f"{statistics.median(call) * 1e3:8.2f}"
                )
    print()
    print(f"all rows: stopped median {statistics.median(summary.pop('stopped')) * 1e3:.2f} ms")
    for label, medians in summary.items():
        print(
            f"start medians, {label:28s}: {min(medians) * 1e3:7.2f} to "
            f"{max(medians) * 1e3:7.2f} ms across interpreters"
        )
    print(json.dumps({k: [round(v * 1e3, 2) for v in vs] for k, vs in summary.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
