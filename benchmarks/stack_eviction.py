"""What a long session costs the target when its code is generated per request.

    .venv/bin/python benchmarks/stack_eviction.py [--interpreters 3.11,3.14]
        [--rate 4KiB] [--interval 0.05] [--intervals 3600] [--json FILE]
        [--unattached --requests N]

``benchmarks/targets/codegen_server.py`` serves requests without pause, each running a
freshly compiled template function (``render_N`` in ``template_N.py``) whose data is freed
when it returns, as template engines, ORMs and validation libraries do. heapspy attaches
at ``--rate`` and collects every ``--interval`` seconds; the run lasts ``--intervals``
collections: 3600 is an hour of collections at the default 1 s interval, compressed.

Every tenth of the run it prints, over time: requests served, the samples the shim took,
the stacks in its table and how many it has evicted, samples that found the table full,
the shim's own libc memory, the generated code objects still alive in the target (only
the profiler can hold them: the target drops each after its request), and the target's
RSS, with pymalloc's arenas and the bytes in its allocated blocks (its own account: the
agent's ``memstats`` while attached). ``--unattached`` runs the same target without
heapspy until it has served ``--requests`` (the control: what the interpreter keeps by
itself). The goal (issue 12): flat: what the agent holds follows what is live, not every
stack ever seen. Without eviction the table holds every request's stack until it is full
(65536 stacks), each pinning its code object, and every later sample lands in the
overflow stack. Prints figures; this is not a timed test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import Target, log, pick_interpreters  # noqa: E402
from interpreters import Interpreter  # noqa: E402

from heapspy.config import AttachConfig  # noqa: E402
from heapspy.session import Session  # noqa: E402
from heapspy.units import parse_size  # noqa: E402

TARGET = Path(__file__).resolve().parent / "targets" / "codegen_server.py"
MIB = 1 << 20


def report(target: Target, session: Session | None) -> dict[str, Any]:
    target.send("report\n")
    text = target.line("REPORT ", 60, session)
    if text is None:
        raise target.failure("the target did not report")
    return dict(json.loads(text[7:]))


def pymalloc(session: Session | None, seen: dict[str, Any]) -> tuple[int, int]:
    """(arenas, bytes in allocated blocks): the target's own account when no hook hides
    it, else the agent's (the shim steps its hooks aside for the call); -1 if neither."""
    if seen.get("arenas") is not None:
        return int(seen["arenas"]), int(seen["allocated"])
    if session is not None and session.channel is not None:
        account = session.channel.call("memstats", glibc=False).get("pymalloc") or {}
        return int(account.get("arenas", -1)), int(account.get("allocated_bytes", -1))
    return -1, -1


def run_unattached(interp: Interpreter, interval: float, requests: int) -> list[dict[str, Any]]:
    target = Target([*interp.argv, str(TARGET)])
    rows: list[dict[str, Any]] = []
    try:
        if target.line("READY", 30) is None:
            raise target.failure("the target did not start")
        mark = 0
        while True:
            time.sleep(interval * 10)
            seen = report(target, None)
            if seen["requests"] >= mark or seen["requests"] >= requests:
                arenas, allocated = pymalloc(None, seen)
                row = {"requests": seen["requests"], "alive_code": seen["alive_code"],
                       "rss": seen["rss"], "arenas": arenas, "allocated": allocated}  # fmt: skip
                rows.append(row)
                log(
                    f"  {row['requests']:8d} requests  code alive {row['alive_code']:6d}  "
                    f"RSS {row['rss'] / MIB:6.1f} MiB  pymalloc {arenas} arenas, "
                    f"{allocated / MIB:.1f} MiB allocated"
                )
                mark += max(1, requests // 10)
            if seen["requests"] >= requests:
                return rows
    finally:
        target.close()


def run_one(
    interp: Interpreter, rate: int, interval: float, intervals: int
) -> list[dict[str, Any]]:
    target = Target([*interp.argv, str(TARGET)])
    rows: list[dict[str, Any]] = []
    try:
        if target.line("READY", 30) is None:
            raise target.failure("the target did not start")
        config = AttachConfig(
            rate=rate,
            interval=interval,
            final_dump=False,
            dump_dir=Path("/tmp"),
            collect_budget=1.0,
        )
        session = Session.attach(target.proc.pid, config)
        agg = session.aggregator
        try:
            step = max(1, intervals // 10)
            mark = 0
            while agg.intervals < intervals:
                session.run(duration=interval)
                if agg.intervals >= mark:
                    t = agg.totals
                    seen = report(target, session)
                    row = {
                        "intervals": agg.intervals,
                        "requests": seen["requests"],
                        "samples": int(t.get("sampled_count", 0)),
                        "stacks": int(t.get("stacks", 0)),
                        "evicted": int(t.get("evicted_stacks", 0)),
                        "overflow": int(t.get("overflow_samples", 0)),
                        "shim_memory": int(t.get("shim_memory", 0)),
                        "alive_code": seen["alive_code"],
                        "rss": seen["rss"],
                        "heapspy_sites": len(agg.sites) + len(agg.retired),
                    }
                    row["arenas"], row["allocated"] = pymalloc(session, seen)
                    rows.append(row)
                    text = (
                        "  {intervals:5d} intervals {requests:8d} requests {samples:9d} samples "
                        "{stacks:6d} stacks {evicted:8d} evicted {overflow:7d} overflow "
                        "shim {shim:6.2f} MiB  code alive {alive_code:6d}  RSS {rss_mib:6.1f} MiB  "
                        "pymalloc {arenas} arenas, {alloc_mib:.1f} MiB allocated"
                    )
                    log(
                        text.format(
                            shim=row["shim_memory"] / MIB,
                            rss_mib=row["rss"] / MIB,
                            alloc_mib=row["allocated"] / MIB,
                            **row,
                        )
                    )
                    mark += step
        finally:
            session.detach()
    finally:
        target.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interpreters", default="3.11,3.14")
    parser.add_argument("--rate", default="4KiB")
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--intervals", type=int, default=3600)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--unattached", action="store_true", help="the control: no heapspy")
    parser.add_argument("--requests", type=int, default=100_000, help="with --unattached")
    args = parser.parse_args()
    rate = parse_size(args.rate)
    results: dict[str, Any] = {}
    for interp in pick_interpreters(args.interpreters.split(",")):
        if args.unattached:
            log(f"{interp}: unattached, {args.requests} requests")
            results[str(interp)] = run_unattached(interp, args.interval, args.requests)
            continue
        log(f"{interp}: rate {args.rate}, {args.intervals} intervals of {args.interval} s")
        results[str(interp)] = run_one(interp, rate, args.interval, args.intervals)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
