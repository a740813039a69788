"""What a whole heapspy session costs a running program, end to end, in paired blocks.

    .venv/bin/python benchmarks/session_cost.py [--interpreters 3.11,3.14]
        [--workloads deltablue,richards,json_dumps,raytrace,go,deepcopy] [--rounds 30]
        [--block 0.1] [--settle 3] [--rate 512KiB] [--interval 1]
        [--arms null,shim,collect,session] [--json out.json]

Why: ``shim_overhead.py`` measures the hooks alone, but a user pays for the whole
session: the hooks, the agent thread waking every interval to drain the shim, encode and
send what changed (competing for the GIL), the gc timer, heartbeats. Comparing attached
and unattached windows seconds apart (``overhead.py``) drowns that in this machine's
speed swings (its null control spans 0.97-1.03). Here one session is attached, as a user
attaches it (``Session.attach`` at the default rate and interval, no census), to one
long-running target per workload, and the target itself switches the session's cost off
and on between short blocks of the same calls (``Agent.park``, benchmarks only: the
shim's hooks out or in with its tables kept, interval collections and the gc timer
skipped or made), in ABBA order (BAAB every other round). Heartbeats continue in both
halves (the connection must stay up; a few microseconds every 0.5 s).

Three columns, each a ratio time(off) / time(on) of the same calls, i.e. throughput, by
the wall clock and by the process's CPU time (all threads: the agent's work is in it; a
loaded machine's waits for a core are not, which makes it the steadier figure here):
``null`` switches nothing (off vs off: the method's own noise, which should sit within
+-1 %), ``shim`` the hooks alone (the agent parked), ``session`` everything. Per workload
the geometric mean over rounds with a 95 % interval; then the geometric mean over
workloads, its interval combined from theirs. Measured after ``--settle`` seconds of the
session running (stacks interned, first collections done): steady state, every interval's
work included (``collections`` counts those made inside measured blocks; ``agent ms/s``
is the agent thread's own CPU time per second of blocks with the session on, and with it
parked: heartbeats only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# column: the agent's level (Agent.park) in the "on" half; --arms picks some
LEVELS = {"null": "off", "shim": "shim", "collect": "collect", "session": "on"}
ARMS = {"null": "off", "shim": "shim", "session": "on"}
DEFAULT_WORKLOADS = "deltablue,richards,json_dumps,raytrace,go,deepcopy"


# --- inside the target (Python 3.8+, run with --child) ------------------------------


def _agent() -> Any:
    """The session's agent once it runs a sampled collector, else None."""
    module = sys.modules.get("heapspy_agent.agent")
    agent = getattr(module, "_active", None)
    if agent is None or agent.collector is None or not hasattr(agent, "park"):
        return None
    return agent if agent.census is None else None


def _block(body: Callable[[], object], n: int) -> tuple[float, float]:
    """Wall time and the process's CPU time (every thread: the agent's work included)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        body()
    return time.perf_counter() - t0, time.process_time() - c0


def _thread_cpu(native_id: int) -> float:
    """Seconds a thread of this process has run on a CPU (Linux's schedstat)."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def child(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(HERE))
    import overhead_driver  # noqa: PLC0415 - only inside the measured interpreter

    arms = {arm: LEVELS[arm] for arm in args.arms.split(",")}
    bodies = overhead_driver.prepare(args.bench_dir, [args.workload])
    if not bodies:
        return 3
    body = bodies[args.workload]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.block:
        body()
        n += 1
    calls = max(1, round(n * args.block / (time.perf_counter() - t0)))
    print("ready", os.getpid(), flush=True)
    deadline = time.monotonic() + 120
    agent = None
    while agent is None and time.monotonic() < deadline:
        body()  # Python keeps running, so the attach can start the agent
        agent = _agent()
    if agent is None:
        print("error no sampled session started within 120 s", flush=True)
        return 4
    settle = time.monotonic() + args.settle
    while time.monotonic() < settle:
        body()
    ratios: dict[str, list[float]] = {arm: [] for arm in arms}
    cpu_ratios: dict[str, list[float]] = {arm: [] for arm in arms}
    collections = 0
    tid = getattr(agent.thread, "native_id", 0) or 0
    # the agent thread's CPU time and the wall time, in session-on and in off blocks
    agent_cpu = {"on": 0.0, "off": 0.0}
    wall = {"on": 0.0, "off": 0.0}
    for rnd in range(args.rounds):
        order = (False, True, True, False) if rnd % 2 == 0 else (True, False, False, True)
        for arm, level in arms.items():
            off = on = cpu_off = cpu_on = 0.0
            for hooked in order:
                agent.park(level if hooked else "off")
                seq = agent.seq
                before = _thread_cpu(tid)
                elapsed, cpu = _block(body, calls)
                state = "on" if hooked and arm == "session" else "off" if not hooked else ""
                if state:
                    agent_cpu[state] += _thread_cpu(tid) - before
                    wall[state] += elapsed
                if hooked:
                    on += elapsed
                    cpu_on += cpu
                    collections += agent.seq - seq if arm == "session" else 0
                else:
                    off += elapsed
                    cpu_off += cpu
            ratios[arm].append(off / on)
            cpu_ratios[arm].append(cpu_off / cpu_on)
    agent.park("on")
    totals = agent.collector.shim.totals()
    result = {
        "calls": calls,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "collections": collections,
        "stacks": totals.stacks,
        "sampled": totals.sampled_count,
        "interval": agent.interval,
        "collect_cpu": agent._last_collect_cpu,
        # ms of the agent thread's CPU per second of wall time, session on / parked
        "agent_ms_per_s": {k: 1000 * agent_cpu[k] / wall[k] if wall[k] else 0.0 for k in wall},
    }
    print("result " + json.dumps(result), flush=True)
    sys.stdin.readline()  # the controller detaches first, then closes our stdin
    return 0


# --- the controller (the repository's venv) ------------------------------------------


def interval(logs: list[float]) -> tuple[float, float]:
    """Mean of logs and its standard error."""
    mean = statistics.fmean(logs)
    se = statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else math.nan
    return mean, se


def render(label: str, results: dict[str, dict[str, Any]], load: str, key: str) -> str:
    arms = list(next(iter(results.values()))[key])
    clock = "CPU time of the process" if key == "cpu_ratios" else "wall clock"
    lines = [
        f"== {label}: throughput session on / off by the {clock} (1.000 = no slowdown), "
        f"geometric mean and 95 % interval; load average {load} ==",
        f"{'':12s}" + "".join(f"{arm:>22s}" for arm in arms)
        + f"{'collections':>13s}{'agent ms/s on, off':>20s}",
    ]
    combined: dict[str, list[tuple[float, float]]] = {arm: [] for arm in arms}
    for workload, result in results.items():
        cells = ""
        for arm in arms:
            mean, se = interval([math.log(r) for r in result[key][arm]])
            combined[arm].append((mean, se))
            lo, hi = math.exp(mean - 1.96 * se), math.exp(mean + 1.96 * se)
            cells += f"{math.exp(mean):10.3f} ({lo:.3f}-{hi:.3f})"
        ms = result.get("agent_ms_per_s", {})
        agent = f"{ms.get('on', 0.0):10.2f}{ms.get('off', 0.0):10.2f}"
        lines.append(f"{workload:12s}{cells}{result['collections']:13d}{agent}")
    cells = ""
    for arm in arms:
        k = len(combined[arm])
        mean = sum(m for m, _ in combined[arm]) / k
        se = math.sqrt(sum(s * s for _, s in combined[arm])) / k
        lo, hi = math.exp(mean - 1.96 * se), math.exp(mean + 1.96 * se)
        cells += f"{math.exp(mean):10.3f} ({lo:.3f}-{hi:.3f})"
    lines.append(f"{'geomean':12s}{cells}")
    return "\n".join(lines)


def measure(interp: Any, workload: str, args: argparse.Namespace, site: Path,
            bench_dir: Path) -> dict[str, Any] | None:
    from harness import Target, log  # noqa: PLC0415

    import heapspy.channel  # noqa: PLC0415
    from heapspy.config import AttachConfig  # noqa: PLC0415
    from heapspy.errors import HeapspyError  # noqa: PLC0415
    from heapspy.session import Session  # noqa: PLC0415

    heapspy.channel.AGENT_TIMEOUT = max(heapspy.channel.AGENT_TIMEOUT, 30.0)  # loaded box
    env = dict(os.environ, PYTHONPATH=str(site))
    target = Target(
        interp.command(
            str(Path(__file__).resolve()), "--child", "--bench-dir", str(bench_dir),
            "--workload", workload, "--rounds", str(args.rounds), "--block", str(args.block),
            "--settle", str(args.settle), "--arms", args.arms,
        ),
        env=env,
    )  # fmt: skip
    try:
        ready = target.line("ready", 120)
        if ready is None:
            raise target.failure(f"{workload}: the target did not start")
        config = AttachConfig(
            rate=args.rate, interval=args.interval, final_dump=False, census=False,
            dump_dir=Path(args.dump_dir),
        )  # fmt: skip
        try:
            session = Session.attach(target.proc.pid, config)
        except HeapspyError as exc:
            raise target.failure(f"{workload}: attach failed: {exc.message}") from None
        try:
            timeout = 60 + args.rounds * len(args.arms.split(",")) * 4 * args.block * 20
            line = target.line("result ", timeout, session=session)
        finally:
            session.detach()
        if line is None:
            raise target.failure(f"{workload}: no result")
        result: dict[str, Any] = json.loads(line.split(" ", 1)[1])
        return result
    except RuntimeError as exc:
        log(str(exc))
        return None
    finally:
        target.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--interpreters", default="3.11,3.14")
    parser.add_argument("--workloads", default=DEFAULT_WORKLOADS)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=float, default=0.1, help="seconds per block")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds attached first")
    parser.add_argument("--rate", default="512KiB")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument(
        "--arms",
        default=",".join(ARMS),
        help="columns among null,shim,collect,session (collect: the hooks and the interval"
        " collections, no gc timer)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bench-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    sys.path.insert(0, str(HERE))
    import tempfile  # noqa: PLC0415

    from harness import log, pick_interpreters  # noqa: PLC0415
    from overhead import provision_pyperformance  # noqa: PLC0415

    from heapspy.units import parse_size  # noqa: PLC0415

    args.rate = parse_size(args.rate, "rate")
    site, bench_dir = provision_pyperformance(ROOT / ".cache" / "bench")
    out: dict[str, Any] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="heapspy-session-cost-") as tmp:
        args.dump_dir = tmp
        for interp in pick_interpreters(args.interpreters.split(",")):
            before = f"{os.getloadavg()[0]:.1f}"
            results = {}
            for workload in args.workloads.split(","):
                log(f"{interp.label}: {workload}, {args.rounds} rounds")
                result = measure(interp, workload, args, site, bench_dir)
                if result is not None:
                    results[workload] = result
            if results:
                load = f"{before}-{os.getloadavg()[0]:.1f}"
                for key in ("ratios", "cpu_ratios"):
                    print(render(interp.label, results, load, key) + "\n", flush=True)
                out[interp.label] = results
    print(f"done in {time.monotonic() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0 if out else 1


if __name__ == "__main__":
    sys.exit(main())
