"""Target program for ``benchmarks/overhead.py``: pyperformance workloads in a loop.

    python overhead_driver.py --bench-dir DIR [--workloads a,b] [--slice 0.15] [--probe]

Runs allocation-heavy benchmark bodies from the ``pyperformance`` package (their sources,
``DIR/bm_*/run_benchmark.py``) round-robin in the main thread, forever, and prints one
line per time slice on stdout so that a controller can compute throughput while it
attaches and detaches profilers to this very process:

    ready PID NAME...                 once, after every workload was set up
    skip NAME REASON                  a workload that could not be loaded here
    slice NAME CALLS T0 T1 CPU PRESENT
                                      CALLS calls completed in [T0, T1] (monotonic clock),
                                      using CPU seconds in all of this process's threads;
                                      PRESENT: what looked like a profiler at T1
                                      (tracemalloc, memray, thread:NAME; "-": nothing)

Each module is loaded from its file with importlib under its own name, so its
``if __name__ == "__main__"`` block (pyperf's Runner, which would fork worker processes)
never runs; the entry functions are the ones that block benchmarks, with smaller inputs
where a comment says so. Only the stdlib and pyperf (``pyperf.perf_counter``; pure
Python) are needed. The driver exits when its parent goes away. Python 3.8+.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
from types import ModuleType
from typing import Any, Callable

Body = Callable[[], object]


def _load(bench_dir: str, name: str) -> ModuleType:
    path = os.path.join(bench_dir, "bm_" + name, "run_benchmark.py")
    spec = importlib.util.spec_from_file_location("bm_" + name, path)
    if spec is None or spec.loader is None:
        raise ImportError("no benchmark source at " + path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class _Capture:
    """Stands in for ``pyperf.Runner`` where a benchmark builds its inputs inside a
    function that takes the runner (chaos): records what would be benchmarked."""

    def __init__(self) -> None:
        self.metadata: dict[str, Any] = {}
        self.calls: list[tuple[str, Callable[..., object], tuple[Any, ...]]] = []

    def bench_func(self, name: str, func: Callable[..., object], *args: Any, **_: Any) -> None:
        self.calls.append((name, func, args))


# One function per workload: given the loaded module, return the body of one iteration.
# Arguments are pyperformance's defaults unless a comment says otherwise: where one call
# takes more than ~20 ms it is made smaller, because exact tracing slows some workloads
# 50-100x and an attached phase must still complete a few calls of every workload.


def _deltablue(m: ModuleType) -> Body:
    return lambda: m.delta_blue(100)


def _richards(m: ModuleType) -> Body:
    richards = m.Richards()
    return lambda: richards.run(1)


def _json_dumps(m: ModuleType) -> Body:
    data = [(obj, range(count)) for obj, count in (getattr(m, case) for case in m.CASES)]
    return lambda: m.bench_json_dumps(data)


def _json_loads(m: ModuleType) -> Body:
    objs = (json.dumps(m.DICT), json.dumps(m.TUPLE), json.dumps(m.DICT_GROUP))
    return lambda: m.bench_json_loads(objs)


def _chaos(m: ModuleType) -> Body:
    runner = _Capture()
    args = argparse.Namespace(
        thickness=m.DEFAULT_THICKNESS,
        width=m.DEFAULT_WIDTH,
        height=m.DEFAULT_HEIGHT,
        iterations=1000,  # pyperformance: 5000
        filename=None,
        rng_seed=m.DEFAULT_RNG_SEED,
    )
    m.main(runner, args)
    _, func, fargs = runner.calls[0]
    return lambda: func(*fargs)


def _go(m: ModuleType) -> Body:
    vars(m)["GAMES"] = 20  # pyperformance: 200 playouts per move
    return m.versus_cpu  # type: ignore[no-any-return]


def _raytrace(m: ModuleType) -> Body:
    return lambda: m.bench_raytrace(1, 20, 20, None)  # pyperformance: 100 x 100 pixels


def _deepcopy(m: ModuleType) -> Body:
    # pyperformance times three functions separately; one iteration runs each once.
    def body() -> None:
        m.benchmark(1)
        m.benchmark_reduce(100)
        m.benchmark_memo(10)

    return body


def _pprint(m: ModuleType) -> Body:
    printable = m.printable[:500]  # pyperformance: 100,000 elements
    printer = m.p

    def body() -> None:
        if hasattr(printer, "_safe_repr"):
            printer._safe_repr(printable, {}, None, 0)
        printer.pformat(printable)

    return body


def _logging(m: ModuleType) -> Body:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream=stream)
    logger = logging.getLogger("benchlogger")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)

    def body() -> None:
        m.bench_silent(50, logger, stream)
        m.bench_simple_output(50, logger, stream)
        m.bench_formatted_output(50, logger, stream)

    return body


def _xml_etree(m: ModuleType) -> Body:
    # pyperformance times parse (x30), iterparse (x10), generate (x10) and process (x2)
    # separately, ~0.5 s in all; one iteration here does each once, on the same tree.
    import xml.etree.ElementTree as etree

    root = m.build_xml_tree(etree)
    data = etree.tostring(root)
    fd, path = tempfile.mkstemp(prefix="heapspy-bench-", suffix=".xml")
    os.close(fd)
    _cleanup.append(path)
    etree.ElementTree(root).write(path)

    def body() -> None:
        etree.parse(path).getroot()  # parse
        etree.fromstring(data)
        events = [(event, elem.tag) for event, elem in etree.iterparse(path, ("start", "end"))]
        if len(events) != 2 * int(root.get("nb-elems")):  # iterparse
            raise RuntimeError("iterparse check failed")
        etree.tostring(m.build_xml_tree(etree))  # generate
        m.process(etree, xml_root=root)  # process

    return body


WORKLOADS: dict[str, Callable[[ModuleType], Body]] = {
    "deltablue": _deltablue,
    "richards": _richards,
    "json_dumps": _json_dumps,
    "json_loads": _json_loads,
    "chaos": _chaos,
    "go": _go,
    "raytrace": _raytrace,
    "deepcopy": _deepcopy,
    "pprint": _pprint,
    "logging": _logging,
    "xml_etree": _xml_etree,
}

_cleanup: list[str] = []


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def prepare(bench_dir: str, names: list[str]) -> dict[str, Body]:
    """Load and set up each workload, run it once; skip (and say why) those that fail."""
    bodies: dict[str, Body] = {}
    for name in names:
        try:
            if name not in WORKLOADS:
                raise KeyError(f"unknown workload (known: {', '.join(WORKLOADS)})")
            body = WORKLOADS[name](_load(bench_dir, name))
            body()  # warm-up, and proof that it runs on this interpreter
        except Exception as exc:  # noqa: BLE001 - any failure means: skip, with the reason
            reason = f"{type(exc).__name__}: {exc}"
            _emit(f"skip {name} {' '.join(reason.split())}")
            if os.environ.get("HEAPSPY_BENCH_VERBOSE"):
                traceback.print_exc()
            continue
        bodies[name] = body
    return bodies


def present() -> str:
    """What of a profiler is in this process now: so the controller can tell that a
    detached profiler has really gone before it measures a baseline."""
    found = []
    if tracemalloc.is_tracing():
        found.append("tracemalloc")
    memray = sys.modules.get("memray")
    if memray is not None and getattr(memray, "_last_tracker", None) is not None:
        found.append("memray")
    main = threading.main_thread()
    # Dummy-N: native threads that once ran Python (memray's injector), gone or idle.
    found += [
        "thread:" + "_".join(t.name.split())
        for t in threading.enumerate()
        if t is not main and not t.name.startswith("Dummy-")
    ]
    return ",".join(found) or "-"


def loop(bodies: dict[str, Body], slice_seconds: float) -> None:
    """Round-robin over the workloads, each for about slice_seconds (at least one call)."""
    parent = os.getppid()
    clock, cpu = time.monotonic, time.process_time
    while True:
        for name, body in bodies.items():
            c0, t0 = cpu(), clock()
            n = 0
            while True:
                body()
                n += 1
                t1 = clock()
                if t1 - t0 >= slice_seconds:
                    break
            c1 = cpu()
            _emit(f"slice {name} {n} {t0:.6f} {t1:.6f} {c1 - c0:.6f} {present()}")
        if os.getppid() != parent:
            return


def probe(bodies: dict[str, Body]) -> None:
    for name, body in bodies.items():
        t0 = time.perf_counter()
        body()
        _emit(f"probe {name} {(time.perf_counter() - t0) * 1000:.2f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench-dir", required=True, help="pyperformance's benchmarks folder")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--slice", type=float, default=0.15, help="seconds per workload turn")
    parser.add_argument("--probe", action="store_true", help="time one call of each; exit")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    bodies = prepare(args.bench_dir, names)
    try:
        if args.probe:
            probe(bodies)
            return 0
        _emit(f"ready {os.getpid()} {' '.join(bodies)}")
        if bodies:
            loop(bodies, args.slice)
        return 0
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    finally:
        for path in _cleanup:
            with contextlib.suppress(OSError):
                os.unlink(path)


if __name__ == "__main__":
    sys.exit(main())
