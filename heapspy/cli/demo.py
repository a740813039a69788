"""`heapspy demo`: the whole job on a bundled example, as `make demo` runs it."""

from __future__ import annotations

from pathlib import Path

import typer

from heapspy.cli import options
from heapspy.cli.render import top_table
from heapspy.demo import default_config, run_demo
from heapspy.flamegraph import FlamegraphConfig, write_flamegraph
from heapspy.report import ReportConfig, build_report, render_text


def demo(
    seconds: str = typer.Option("6s", "--duration", "-d", help="How long to profile."),
    dump_dir: Path = typer.Option(
        Path("heapspy-dumps"), "--dump-dir", help="Where the demo's dump is written."
    ),
) -> None:
    """Start a bundled worker that leaks, attach to it, dump, and show the leak.

    The worker (heapspy.examples.leaky_worker) keeps lines in Shipper.buffer_line and
    churns short-lived dicts in parse_record. The top of the live heap should be the
    former. The dump is also written as a flame graph (x.pb.gz -> x.html).

    Example: heapspy demo --duration 10s
    """
    config = default_config(dump_dir, options.duration(seconds) or 6.0)
    result = run_demo(config)
    print(f"Profiled the example worker (pid {result.pid}).")
    print("Largest live allocation sites:")
    print(top_table(result.top, result.sampled))
    for path in result.dumps:
        print()
        print(render_text(build_report(ReportConfig(Path(path), top=5))), end="")
        print()
        page = write_flamegraph(FlamegraphConfig(dump=Path(path))).output
        print(f"Read it again with: heapspy report {path}")
        print(f"               or: go tool pprof -top -sample_index=inuse_space {path}")
        print(f"As a flame graph (open in a browser; works offline): {page}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
