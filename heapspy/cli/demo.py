"""`heapspy demo`: the whole job on a bundled example, as `make demo` runs it."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from heapspy.cli import options
from heapspy.config import DEFAULT_RATE_TEXT
from heapspy.demo import LEAK_FUNCTION, DemoResult, default_config, run_demo
from heapspy.reporters.flamegraph import FlamegraphConfig, write_flamegraph
from heapspy.reporters.report import ReportConfig, build_report
from heapspy.reporters.top import TopTable
from heapspy.scaling import format_error, relative_error
from heapspy.units import format_bytes, size_text


def demo(
    seconds: str = typer.Option("6s", "--duration", "-d", help="How long to profile."),
    dump_dir: Path = typer.Option(
        Path("heapspy-dumps"), "--dump-dir", help="Where the demo's dump is written."
    ),
    rate: str = typer.Option(
        DEFAULT_RATE_TEXT,
        "--rate",
        "-r",
        metavar="SIZE",
        help="As for attach: mean bytes between samples; 1 = exact (tracemalloc).",
    ),
) -> None:
    """Start a bundled worker that leaks, attach to it, dump, and show the leak.

    The worker (heapspy.examples.leaky_worker) keeps lines in Shipper.buffer_line and
    churns short-lived dicts in parse_record. The top of the live heap should be the
    former. The dump is also written as a flame graph (x.pb.gz -> x.html). The worker
    counts what it keeps while heapspy watches, so you can see the estimate beside the
    truth, and how a lower --rate tightens it.

    Examples:

      heapspy demo
      heapspy demo --duration 10s --rate 64KiB
    """
    config = default_config(dump_dir, options.duration(seconds) or 6.0, options.rate(rate))
    result = run_demo(config)
    print(f"Profiled the example worker (pid {result.pid}).")
    print("Largest live allocation sites:")
    print(TopTable(result.top, result.sampled).output())
    print(truth_line(result, config.rate))
    for path in result.dumps:
        print()
        print(build_report(ReportConfig(Path(path), top=5)).output(), end="")
        print()
        page = write_flamegraph(FlamegraphConfig(dump=Path(path))).output
        print(f"Read it again with: heapspy report {path}")
        print(f"               or: go tool pprof -top -sample_index=inuse_space {path}")
        print(f"As a flame graph (open in a browser; works offline): {page}")


FINER = 64 * 1024  # the finer rate the demo suggests


def truth_line(result: DemoResult, rate: int) -> str:
    """heapspy's figure for the leak beside what the worker counted it kept."""
    leak = result.leak
    if result.kept is None or leak is None:
        return "(the worker did not say how much it kept: nothing to compare with)"
    said = f"The worker counted {format_bytes(result.kept)} kept in {LEAK_FUNCTION} while attached"
    if not result.sampled:
        return f"{said} ({result.kept:,} bytes); heapspy (exact): {leak.inuse_bytes:,} bytes."
    error = format_error(relative_error(leak.inuse_bytes, leak.inuse_bytes_var or 0.0))
    finer = ""
    if rate > FINER:  # the error goes with sqrt(rate) for blocks much smaller than it
        finer = f"; --rate {size_text(FINER)} would narrow it ~{math.sqrt(rate / FINER):.1f}x"
    return (
        f"{said}; heapspy estimated {format_bytes(leak.inuse_bytes)} {error} (the truth lies "
        f"within the ±95% error in 19 runs out of 20{finer})."
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
