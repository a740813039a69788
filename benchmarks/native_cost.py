"""What sampling native allocations costs, on allocation-heavy native workloads.

    .venv/bin/python benchmarks/native_cost.py [--interpreters 3.11,3.14] [--rounds 20]
        [--block 0.05] [--rate 512KiB] [--json results.json]
    .venv/bin/python benchmarks/native_cost.py --instructions [--calls 30]
    ... [--native-frames]: native sampling with each sample's native call stack too

Paired inside one process per interpreter, as ``shim_overhead.py`` does (this machine's
speed swings by +-20 % over seconds): for each workload a block of N calls runs with the
shim sampling Python's domains only (A), then with native sampling too (B: the RAW
domain hooked, the libraries' allocator entries redirected), in ABBA / BAAB order, every
round, timed in the thread's CPU seconds (see ``_block``). The shim is started and
stopped around each block (outside its timing); the
``none`` column pairs A with A: the method's own noise. Printed: throughput B / A per
workload (geometric mean over rounds), the geometric mean over workloads and its 95 %
interval from the per-round geometric means. 1.000 = no cost; the goal is >= 0.97.

``--instructions`` counts instead of timing (valgrind's cachegrind, deterministic up to
addresses; the hash seed is fixed; this machine's load cannot move it): per workload four runs of
a fresh interpreter, with and without the workload's calls, with the Python domains
sampled and with native sampling too; printed: the instructions native sampling adds to
the calls, in percent of the calls' own (start-up, set-up and native mode's start and
stop, once per session, subtracted).

Workloads: ``json`` (the C accelerator: dumps and loads of a nested document), ``zlib``
(compress objects made and used: their state through PyMem_RawMalloc), ``sqlite3``
(an in-memory database: inserts, an index, a query; libsqlite3's malloc without the
GIL), ``etree`` (xml.etree's C parser on a 200 KB document: expat's malloc), and
``python`` (lists, dicts and strings only: what the MEM/OBJ wrappers add).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from shim_overhead import _calls_for, geomean, summarise  # noqa: E402

NONE = "none"
NATIVE = "native"


def _block(body: Callable[[], object], n: int) -> float:
    """CPU seconds this thread spent on n calls: on this shared 2-core machine (load
    average 25-75 while other jobs run) wall time mostly measures the waits for a core.
    Every workload runs in the calling thread (sqlite3 releases the GIL, not the thread)."""
    t0 = time.thread_time()
    for _ in range(n):
        body()
    return time.thread_time() - t0


def workloads() -> dict[str, Callable[[], object]]:
    import sqlite3  # noqa: PLC0415 - only inside the measured interpreter
    import xml.etree.ElementTree as ET  # noqa: PLC0415
    import zlib  # noqa: PLC0415

    doc = {"items": [{"id": i, "name": f"item{i}", "tags": ["a", "b"], "v": i * 0.5}
                     for i in range(300)]}  # fmt: skip
    text = json.dumps(doc)
    payload = bytes(range(256)) * 400
    xml = "<root>" + "".join(f'<e k="{i}">t{i}</e>' for i in range(6000)) + "</root>"

    def json_work() -> object:
        return json.loads(json.dumps(json.loads(text)))

    def zlib_work() -> object:
        c = zlib.compressobj(6)
        data = c.compress(payload) + c.flush()
        d = zlib.decompressobj()
        return d.decompress(data)

    def sqlite_work() -> object:
        db = sqlite3.connect(":memory:")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
        db.executemany("INSERT INTO t (name, blob) VALUES (?, ?)",
                       ((f"n{i}", b"x" * 200) for i in range(300)))  # fmt: skip
        db.execute("CREATE INDEX i ON t (name)")
        rows = db.execute("SELECT name FROM t WHERE id % 7 = 0").fetchall()
        db.close()
        return rows

    def etree_work() -> object:
        return len(ET.fromstring(xml))

    def python_work() -> object:
        return [{"k": str(i), "v": [i, i + 1]} for i in range(2000)]

    return {"json": json_work, "zlib": zlib_work, "sqlite3": sqlite_work,
            "etree": etree_work, "python": python_work}  # fmt: skip


def child(args: argparse.Namespace) -> int:
    sys.path[:0] = [str(ROOT / "agent")]
    from heapspy_agent.shim import Shim  # noqa: PLC0415

    shim = Shim.load(args.shim or None)
    bodies = workloads()
    calls = {name: _calls_for(body, args.block) for name, body in bodies.items()}
    ratios: dict[str, dict[str, list[float]]] = {NONE: {}, NATIVE: {}}
    samples = {NONE: 0, NATIVE: 0}
    for rnd in range(args.rounds):
        order = (False, True, True, False) if rnd % 2 == 0 else (True, False, False, True)
        for name, body in bodies.items():
            for col in (NONE, NATIVE):
                off = on = 0.0
                for b in order:
                    shim.start(args.rate)
                    if b and col == NATIVE:
                        shim.native_start(frames=args.native_frames)
                    _block(body, max(1, calls[name] // 4))  # warm, untimed
                    elapsed = _block(body, calls[name])
                    native = shim.native_totals()
                    if b and col == NATIVE and native is not None:
                        samples[col] += native.sampled_count
                    shim.stop()
                    if b:
                        on += elapsed
                    else:
                        off += elapsed
                ratios[col].setdefault(name, []).append(off / on)
    json.dump({"calls": calls, "ratios": ratios, "samples": samples}, sys.stdout)
    return 0


def count_child(args: argparse.Namespace) -> int:
    """One cachegrind run: ``--calls`` calls of one workload, sampled at ``--rate``."""
    sys.path[:0] = [str(ROOT / "agent")]
    from heapspy_agent.shim import Shim  # noqa: PLC0415

    shim = Shim.load(args.shim or None)
    body = workloads()[args.workload]
    shim.start(args.rate)
    if args.native_on:
        shim.native_start(frames=args.native_frames)
    for _ in range(args.calls):
        body()
    shim.stop()
    return 0


_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions(interp: Any, args: argparse.Namespace, workload: str, calls: int,
                 native: bool) -> int:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--trace-children=yes",
             f"--cachegrind-out-file={tmp}/cg.%p.out", *interp.argv, __file__, "--count-child",
             "--workload", workload, "--calls", str(calls), "--rate", str(args.rate),
             "--shim", args.shim, *(["--native-on"] if native else []),
             *(["--native-frames"] if args.native_frames else [])],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # same dicts and sets every run
        )  # fmt: skip
    found = _IREFS.findall(out.stderr)  # the interpreter's, after any wrapper's
    assert found, out.stderr[-2000:]
    return int(found[-1].replace(",", ""))


def count_main(args: argparse.Namespace) -> int:
    from harness import log, pick_interpreters  # noqa: PLC0415

    names = list(workloads())
    results: dict[str, dict[str, float]] = {}
    for interp in pick_interpreters(args.interpreters.split(",")):
        lines = [
            f"== {interp.label}: instructions native sampling"
            f"{' with native frames' if args.native_frames else ''} adds, in % of the "
            f"workload's own ({args.calls} calls, rate {args.rate}; cachegrind) ==",
            f"{'workload':14s}{'workload Ir':>16s}{'native +Ir':>14s}{'cost':>9s}",
        ]
        results[interp.label] = {}
        for name in names:
            # start-up, set-up and the native start and stop themselves (the scan of the
            # loaded libraries, once per session) are subtracted: runs without calls
            base = instructions(interp, args, name, 0, False)
            base_on = instructions(interp, args, name, 0, True)
            off = instructions(interp, args, name, args.calls, False)
            on = instructions(interp, args, name, args.calls, True)
            added = (on - base_on) - (off - base)
            cost = 100.0 * added / max(1, off - base)
            results[interp.label][name] = cost
            lines.append(f"{name:14s}{off - base:16,d}{added:14,d}{cost:8.2f}%")
            log(f"{interp.label} {name}: {cost:.2f} %")
        print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def render(label: str, result: dict[str, Any], rounds: int, block: float) -> str:
    cols = list(result["ratios"])
    names = sorted(next(iter(result["ratios"].values())))
    lines = [
        f"== {label}: throughput native on / off (Python domains sampled in both), "
        f"paired ABBA/BAAB blocks of ~{block * 1000:.0f} ms, {rounds} rounds ==",
        f"{'workload':14s}" + "".join(f"{c:>12s}" for c in cols),
    ]
    lines += [
        f"{w:14s}" + "".join(f"{geomean(result['ratios'][c][w]):12.3f}" for c in cols)
        for w in names
    ]
    sums = {c: summarise(result["ratios"][c]) for c in cols}
    lines.append(f"{'geomean':14s}" + "".join(f"{sums[c][0]:12.3f}" for c in cols))
    lines.append(f"{'95% interval':14s}" + "".join(
        f"{f'{lo:.3f}-{hi:.3f}':>12s}" for _, lo, hi in (sums[c] for c in cols)))  # fmt: skip
    lines.append(f"{'native samples':14s}" + "".join(f"{result['samples'][c]:12d}" for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--interpreters", default="3.11,3.14")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=float, default=0.05)
    parser.add_argument("--rate", default="512KiB")
    parser.add_argument("--shim", default="")
    parser.add_argument("--json", default="")
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="", help=argparse.SUPPRESS)
    parser.add_argument("--native-on", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--native-frames",
        action="store_true",
        help="native sampling records each sample's native call stack too",
    )
    args = parser.parse_args(argv)
    from heapspy.units import parse_size  # noqa: PLC0415

    args.rate = parse_size(str(args.rate), "--rate")
    if args.child:
        return child(args)
    if args.count_child:
        return count_child(args)
    if args.instructions:
        return count_main(args)
    from harness import log, pick_interpreters  # noqa: PLC0415

    results = {}
    for interp in pick_interpreters(args.interpreters.split(",")):
        log(f"{interp.label}: {args.rounds} rounds")
        t0 = time.monotonic()
        out = subprocess.run(
            [*interp.argv, __file__, "--child", "--rounds", str(args.rounds),
             "--block", str(args.block), "--rate", str(args.rate), "--shim", args.shim,
             *(["--native-frames"] if args.native_frames else [])],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # same dicts and sets every run
        )  # fmt: skip
        result = json.loads(out.stdout)
        results[interp.label] = result
        print(render(interp.label, result, args.rounds, args.block))
        log(f"{interp.label}: {time.monotonic() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    finite = all(math.isfinite(summarise(r["ratios"][NATIVE])[0]) for r in results.values())
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
