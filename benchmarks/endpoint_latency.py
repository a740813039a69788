#!/usr/bin/env python3
"""How fast the HTTP endpoint answers: ``/debug/pprof/heap`` for a session holding
10,000 stacks, ``/metrics``, and a daemon serving many workers (issue goals: a current
profile of 10,000 stacks in <= 100 ms; 50 workers behind one daemon scraped in <= 1 s).

    .venv/bin/python benchmarks/endpoint_latency.py [--stacks 10000] [--workers 50]
        [--requests 40] [--python 3.11]

The target generates ``--stacks`` distinct functions that each keep one 2 KiB block, at
``--rate 64`` (bytes) so that every stack is sampled; heapspy attaches with ``--listen``. Then
it times requests one after another and prints the median, the 95th percentile and a
95 % interval of the median (order statistics). The daemon part starts ``--workers``
small workers, waits until the daemon has attached to all, and times full scrapes of
``/metrics`` (every worker's series) and of each worker's heap profile.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from harness import ROOT, log, pick_interpreters

STACKS_TARGET = """
import os, sys, time
n, go = int(sys.argv[1]), sys.argv[2]
KEEP = []
src = "\\n".join("def f%d(keep):\\n    keep.append(bytearray(2048))" % i for i in range(n))
ns = {}
exec(compile(src, "generated.py", "exec"), ns)
print("READY", os.getpid(), flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
for i in range(n):
    ns["f%d" % i](KEEP)
print("DONE", flush=True)
churn = []
while True:  # a little churn: every interval changes something, so nothing is cached
    ns["f0"](churn)
    churn.clear()
    time.sleep(0.01)
"""

WORKER = (
    "import sys, time\nwhile True:\n    x = [str(i) for i in range(1000)]\n    time.sleep(0.01)\n"
)


def _median_ci(values: list[float]) -> tuple[float, float, float]:
    """Median and a distribution-free 95 % interval for it (binomial order statistics)."""
    xs = sorted(values)
    n = len(xs)
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)))
    hi = min(n - 1, int(math.ceil(n / 2 + half)))
    return statistics.median(xs), xs[lo], xs[hi]


def _timed_get(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        size = len(r.read())
    return time.perf_counter() - start, size


def _report(what: str, times: list[float], size: int) -> None:
    med, lo, hi = _median_ci(times)
    p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
    log(
        f"{what}: median {med * 1000:.1f} ms (95% CI {lo * 1000:.1f}-{hi * 1000:.1f}), "
        f"p95 {p95 * 1000:.1f} ms, {size / 1024:.0f} KiB, n={len(times)}"
    )


def one_session(python: list[str], stacks: int, requests: int, work: Path) -> None:
    go = work / "go"
    target = subprocess.Popen(
        [*python, "-c", STACKS_TARGET, str(stacks), str(go)], stdout=subprocess.PIPE, text=True
    )
    assert target.stdout is not None
    target.stdout.readline()
    heapspy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "heapspy",
            "attach",
            str(target.pid),
            "--rate",
            "64",
            "--interval",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--dump-dir",
            str(work),
            "--quiet",
            "--no-census",
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert heapspy.stderr is not None
        match = re.search(r"serving (http://\S+)/debug", heapspy.stderr.readline())
        assert match, "no serving line"
        url = match[1]
        while "heapspy_up" not in urllib.request.urlopen(f"{url}/metrics").read().decode():
            time.sleep(0.1)
        go.touch()
        target.stdout.readline()
        # wait until the session holds every stack: the profile stops growing
        previous = -1
        while True:
            time.sleep(1.5)
            _, size = _timed_get(f"{url}/debug/pprof/heap")
            if size == previous:
                break
            previous = size
        _timed_get(f"{url}/debug/pprof/heap")
        heap = [_timed_get(f"{url}/debug/pprof/heap") for _ in range(requests)]
        _report(
            f"/debug/pprof/heap, {stacks} stacks, within one interval (encoded once, shared)",
            [t for t, _ in heap],
            heap[-1][1],
        )
        fresh = []
        for _ in range(max(5, requests // 3)):
            time.sleep(1.1)  # a new interval: the profile is encoded again
            fresh.append(_timed_get(f"{url}/debug/pprof/heap"))
        _report(
            f"/debug/pprof/heap, {stacks} stacks, each after a new interval (encoded afresh)",
            [t for t, _ in fresh],
            fresh[-1][1],
        )
        metrics = [_timed_get(f"{url}/metrics") for _ in range(requests)]
        _report("/metrics, one worker", [t for t, _ in metrics], metrics[-1][1])
    finally:
        heapspy.terminate()
        heapspy.wait(timeout=60)
        target.kill()
        target.wait()


def daemon_scrape(python: list[str], workers: int, requests: int, work: Path) -> None:
    tag = f"endpointbench{uuid.uuid4().hex[:8]}"
    procs = [subprocess.Popen([*python, "-c", WORKER, tag]) for _ in range(workers)]
    config = work / "heapspy.toml"
    config.write_text(
        '[daemon]\nscan_interval = "0.5s"\nsettle = "0s"\nlisten = "127.0.0.1:0"\n'
        "max_attaching = 4\n"
        f'[[watch]]\nname = "bench"\ncmdline = "{tag}"\ndump_dir = "{work / "dumps"}"\n'
        "final_dump = false\n"
    )
    log_path = work / "daemon.log"
    with open(log_path, "w") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "heapspy", "daemon", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        start = time.monotonic()
        while True:
            text = log_path.read_text()
            if sum(f"attached to {p.pid} " in text for p in procs) == workers:
                break
            if time.monotonic() - start > 600 or daemon.poll() is not None:
                raise RuntimeError("the daemon did not attach to every worker:\n" + text[-3000:])
            time.sleep(0.5)
        log(f"daemon attached to {workers} workers in {time.monotonic() - start:.1f} s")
        match = re.search(r"serving (http://\S+)/debug", log_path.read_text())
        assert match
        url = match[1]
        _timed_get(f"{url}/metrics")
        scrapes = [_timed_get(f"{url}/metrics") for _ in range(requests)]
        _report(f"/metrics, {workers} workers", [t for t, _ in scrapes], scrapes[-1][1])
        rounds = []
        for _ in range(max(3, requests // 10)):
            t0 = time.perf_counter()
            for p in procs:
                _timed_get(f"{url}/debug/pprof/heap?pid={p.pid}")
            rounds.append(time.perf_counter() - t0)
        _report(f"every worker's heap profile, {workers} in a row", rounds, 0)
    finally:
        daemon.terminate()
        daemon.wait(timeout=120)
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stacks", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--python", default="3.11")
    args = parser.parse_args()
    interp = pick_interpreters([args.python])[0]
    with tempfile.TemporaryDirectory(prefix="heapspy-endpoint-") as tmp:
        if args.stacks:  # --stacks 0: only the daemon's part
            one_session(list(interp.argv), args.stacks, args.requests, Path(tmp))
        if args.workers:
            daemon_scrape(list(interp.argv), args.workers, args.requests, Path(tmp))


if __name__ == "__main__":
    main()
