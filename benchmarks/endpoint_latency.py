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
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
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


def _get(url: str) -> tuple[int, bytes]:
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    took = time.perf_counter() - t0
    if status != 200 or took > 0.5:  # what makes a round slow, to look into
        log(f"  {url}: {status} in {took * 1000:.0f} ms {body[:200]!r}")
    return status, body


def _scrape(url: str, pids: list[int]) -> tuple[float, int, int]:
    """One full scrape as the fleet's scrapers make it, one request after another:
    ``/metrics`` (Prometheus), then every worker's ``/debug/pprof/heap?pid=N`` (Alloy,
    Parca). Returns the wall time, the requests that failed, and the workers that
    ``/metrics`` showed up."""
    t0 = time.perf_counter()
    status, body = _get(f"{url}/metrics")
    failed = int(status != 200)
    up = body.decode().count("\nheapspy_up{")
    for pid in pids:
        status, _ = _get(f"{url}/debug/pprof/heap?pid={pid}")
        failed += int(status != 200)
    return time.perf_counter() - t0, failed, up


def daemon_scrape(
    python: list[str],
    workers: int,
    rounds: int,
    every: float,
    census: bool,
    work: Path,
    keep_log: Path | None = None,
) -> None:
    """A daemon watching ``workers`` real workers (the watch's defaults: census at attach
    unless ``census`` is False), scraped in full every ``every`` seconds."""
    tag = f"endpointbench{uuid.uuid4().hex[:8]}"
    procs = [subprocess.Popen([*python, "-c", WORKER, tag]) for _ in range(workers)]
    pids = [p.pid for p in procs]
    config = work / "heapspy.toml"
    config.write_text(
        '[daemon]\nscan_interval = "0.5s"\nsettle = "0s"\nlisten = "127.0.0.1:0"\n'
        f'[[watch]]\nname = "bench"\ncmdline = "{tag}"\ndump_dir = "{work / "dumps"}"\n'
        f"final_dump = false\ncensus = {'true' if census else 'false'}\n"
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
            if sum(f"attached to {p} " in text for p in pids) == workers:
                break
            if time.monotonic() - start > 600 or daemon.poll() is not None:
                raise RuntimeError("the daemon did not attach to every worker:\n" + text[-3000:])
            time.sleep(0.5)
        log(
            f"daemon attached to {workers} workers in {time.monotonic() - start:.1f} s "
            f"(census at attach: {'on' if census else 'off'}), {_load()}"
        )
        match = re.search(r"serving (http://\S+)/debug", log_path.read_text())
        assert match
        url = match[1]
        times = []
        for i in range(rounds):
            if i:
                time.sleep(max(0.0, every - times[-1]))
            load = _load()
            cpu = _cpu(daemon.pid)
            took, failed, up = _scrape(url, pids)
            cpu = _cpu(daemon.pid) - cpu
            times.append(took)
            log(
                f"round {i + 1}: /metrics + {workers} heap profiles in {took * 1000:.0f} ms "
                f"(the daemon's CPU meanwhile {cpu * 1000:.0f} ms), "
                f"{failed} failed, {up} workers up on /metrics; {load}"
            )
        log(
            f"full scrape of {workers} workers: median {statistics.median(times) * 1000:.0f} ms, "
            f"worst {max(times) * 1000:.0f} ms over {rounds} rounds every {every:g} s"
        )
        lost = [
            line
            for line in log_path.read_text().splitlines()
            if any(w in line for w in ("stopped answering", "not profiled", "detaching", "exited"))
        ]
        log(f"sessions ended during the run: {len(lost)}" + "".join(f"\n  {x}" for x in lost))
    finally:
        daemon.terminate()
        daemon.wait(timeout=120)
        if keep_log is not None:
            keep_log.write_bytes(log_path.read_bytes())
        for p in procs:
            p.kill()
            p.wait()


def _cpu(pid: int) -> float:
    """CPU seconds the process has used (every thread): what a round costs the daemon,
    whatever else the machine runs."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} (5 min {five:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stacks", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=8, help="full scrapes of the daemon")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between scrapes")
    parser.add_argument("--no-census", action="store_true", help="no census at attach")
    parser.add_argument("--keep-log", type=Path, help="copy the daemon's log here")
    parser.add_argument("--python", default="3.11")
    args = parser.parse_args()
    interp = pick_interpreters([args.python])[0]
    with tempfile.TemporaryDirectory(prefix="heapspy-endpoint-") as tmp:
        if args.stacks:  # --stacks 0: only the daemon's part
            one_session(list(interp.argv), args.stacks, args.requests, Path(tmp))
        if args.workers:
            daemon_scrape(
                list(interp.argv),
                args.workers,
                args.rounds,
                args.every,
                not args.no_census,
                Path(tmp),
                args.keep_log,
            )


if __name__ == "__main__":
    main()
