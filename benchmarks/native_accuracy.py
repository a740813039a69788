"""How often a native leak's estimate falls within its own ±95 % error bar.

    .venv/bin/python benchmarks/native_accuracy.py [--interpreters 3.11] [--trials 40]
        [--rate 512KiB] [--mib 20]

Each trial, in one process per interpreter: the shim is started afresh (random seed),
native sampling on, and a C library (tests/native_lib/leak.c, built here) leaks MIB MiB
in 64 KiB blocks through ctypes (without the GIL: the samples get the calling line's
stack when ctypes takes the GIL back), then the estimate of that line's live bytes is
compared with the truth and with its ±95 % bar (heapspy.scaling, as `heapspy report`
prints it). Printed: the coverage (ideally ~95 %), the mean and spread of the error.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

BLOCK = 64 * 1024


def child(args: argparse.Namespace) -> int:
    import ctypes  # noqa: PLC0415

    sys.path[:0] = [str(ROOT / "agent")]
    from heapspy_agent.shim import Shim  # noqa: PLC0415

    shim = Shim.load(args.shim or None)
    lib = ctypes.CDLL(args.lib)
    lib.leak.restype = ctypes.c_void_p
    lib.leak.argtypes = [ctypes.c_size_t]
    blocks = args.mib * 1024 * 1024 // BLOCK
    line = sys._getframe().f_lineno + 7  # the lib.leak call below
    out = []
    for _ in range(args.trials):
        shim.start(args.rate)
        shim.native_start()
        drained = {}
        for _ in range(blocks):
            lib.leak(BLOCK)
        drain = shim.drain()
        ids = {s.stack_id for s in drain.new_stacks if s.frames and s.frames[-1].line == line}
        for c in drain.changed:
            if c.stack_id in ids:
                drained[c.stack_id] = (c.est_live_count, c.est_live_bytes)
        out.append([sum(v[0] for v in drained.values()), sum(v[1] for v in drained.values())])
        shim.stop()
        lib.release_all()
    json.dump({"trials": out, "truth": blocks * BLOCK}, sys.stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--interpreters", default="3.11")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--rate", default="512KiB")
    parser.add_argument("--mib", type=int, default=20)
    parser.add_argument("--shim", default="")
    parser.add_argument("--lib", default="")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from heapspy.units import parse_size  # noqa: PLC0415

    args.rate = parse_size(str(args.rate), "--rate")
    if args.child:
        return child(args)
    from harness import log, pick_interpreters  # noqa: PLC0415

    from heapspy.scaling import relative_error, sampling_variance  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "libleak.so"
        subprocess.run(
            ["cc", "-O2", "-fno-builtin", "-shared", "-fPIC", "-pthread", "-o", str(lib),
             str(ROOT / "tests" / "native_lib" / "leak.c")],
            check=True,
        )  # fmt: skip
        for interp in pick_interpreters(args.interpreters.split(",")):
            out = subprocess.run(
                [*interp.argv, __file__, "--child", "--trials", str(args.trials),
                 "--rate", str(args.rate), "--mib", str(args.mib), "--shim", args.shim,
                 "--lib", str(lib)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            result = json.loads(out.stdout)
            truth = result["truth"]
            errors, inside = [], 0
            for objects, nbytes in result["trials"]:
                _, var = sampling_variance(objects, nbytes, args.rate)
                bar = relative_error(nbytes, var) or 0.0
                errors.append((nbytes - truth) / truth)
                inside += abs(nbytes - truth) <= bar * nbytes
            n = len(errors)
            log(f"{interp.label}: {n} trials")
            print(
                f"{interp.label}: {args.mib} MiB leaked through ctypes at rate {args.rate}: "
                f"within its ±95 % bar in {inside}/{n} trials ({100 * inside / n:.0f} %), "
                f"mean error {100 * statistics.fmean(errors):+.1f} %, "
                f"spread {100 * statistics.stdev(errors):.1f} % "
                f"(expected √(rate/bytes) = {100 * math.sqrt(args.rate / truth):.1f} %)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
