"""What ``--native-frames`` adds to one native sample: the frame-pointer walk, its
readability probes and the interning (Cargo-free/native_frames.c).

    .venv/bin/python benchmarks/native_frames_cost.py [--interpreters 3.11,3.14]
        [--rounds 6] [--calls 20000]

A small C library built with frame pointers frees what it allocates, through a short
chain (two C frames under ctypes: the walk ends within the hook's page, no probe) and a
deep one (40 frames of 512 bytes each: the walk crosses pages, probed with
process_vm_readv, and stops at 32 frames). Every allocation is sampled (rate 64 bytes,
4 KiB blocks). Per interpreter, in one process, rounds alternate native sampling without
and with frames (ABAB / BABA), each timed in the thread's CPU seconds; printed: the
median nanoseconds per sampled malloc+free of each, and their difference, the cost of
recording the frames of one sample.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

LIBRARY = r"""
#include <stdlib.h>
static void touch(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }
__attribute__((noinline)) void *inner(size_t n) { void *p = malloc(n); touch(p); return p; }
__attribute__((noinline)) void shallow(size_t n, int k) {
    for (int i = 0; i < k; i++) free(inner(n));
}
__attribute__((noinline)) void *rec(size_t n, int d) {
    volatile char pad[512];
    pad[0] = (char)d;
    void *p = d == 0 ? inner(n) : rec(n, d - 1);
    touch((void *)pad);
    return p;
}
__attribute__((noinline)) void deep(size_t n, int k) {
    for (int i = 0; i < k; i++) free(rec(n, 40));
}
"""


def child(lib: str, shim_path: str, rounds: int, calls: int) -> int:
    import ctypes  # noqa: PLC0415

    sys.path[:0] = [str(ROOT / "agent")]
    from heapspy_agent.shim import Shim  # noqa: PLC0415

    c = ctypes.PyDLL(lib)
    shim = Shim.load(shim_path or None)
    out: dict[str, dict[str, list[float]]] = {}
    for chain in ("shallow", "deep"):
        fn = getattr(c, chain)
        fn.argtypes = [ctypes.c_size_t, ctypes.c_int]
        for rnd in range(rounds):
            for frames in (False, True) if rnd % 2 == 0 else (True, False):
                shim.start(64)  # every 4 KiB block sampled
                shim.native_start(frames=frames)
                fn(4096, calls // 10)  # warm: the frames interned once
                t0 = time.thread_time()
                fn(4096, calls)
                elapsed = time.thread_time() - t0
                shim.stop()
                key = "frames" if frames else "no frames"
                out.setdefault(chain, {}).setdefault(key, []).append(elapsed / calls * 1e9)
    json.dump(out, sys.stdout)
    return 0


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--interpreters", default="3.11,3.14")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--shim", default="")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.shim, args.rounds, args.calls)
    from harness import log, pick_interpreters  # noqa: PLC0415

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log("no C compiler")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = Path(tmp) / "chain.c", Path(tmp) / "libchain.so"
        src.write_text(LIBRARY)
        subprocess.run(
            [cc, "-O2", "-fno-builtin", "-fno-omit-frame-pointer", "-shared", "-fPIC",
             "-o", str(lib), str(src)],
            check=True,
        )  # fmt: skip
        for interp in pick_interpreters(args.interpreters.split(",")):
            out = subprocess.run(
                [*interp.argv, __file__, "--child", str(lib), "--shim", args.shim,
                 "--rounds", str(args.rounds), "--calls", str(args.calls)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            result = json.loads(out.stdout)
            print(f"== {interp.label}: ns per sampled malloc+free, median of {args.rounds} ==")
            print(f"{'chain':10s}{'no frames':>12s}{'frames':>12s}{'added':>10s}")
            for chain, cols in result.items():
                off, on = median(cols["no frames"]), median(cols["frames"])
                print(f"{chain:10s}{off:12.0f}{on:12.0f}{on - off:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
