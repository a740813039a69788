"""``heapspy report``: options → ReportConfig → reporters.report → text or JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from heapspy.reporters.base import check_format
from heapspy.reporters.report import ReportConfig, build_report


def report(
    dump: Path = typer.Argument(
        ..., metavar="DUMP", help="A heap dump (.pb.gz) written by heapspy."
    ),
    top: int = typer.Option(10, "--top", "-n", help="How many functions to list."),
    sample_index: str = typer.Option(
        "",
        "--sample-index",
        help="inuse_space, alloc_space, inuse_objects or alloc_objects (default: the "
        "dump's own, inuse_space).",
        show_default=False,
    ),
    output_format: str = typer.Option("text", "--format", help="text or json."),
    by: str = typer.Option(
        "",
        "--by",
        metavar="KEY",
        help="Rank the values of a label instead of functions: thread, thread_id, task "
        "or coro (who allocated; see `go tool pprof -tags`), or type (what the live "
        "samples are: dict, myapp.Order; in-use values only).",
        show_default=False,
    ),
) -> None:
    """Show a dump's allocation totals and its top allocation sites by function.

    Totals come from the JSON sidecar next to the dump (x.pb.gz -> x.json).

    flat: what a function allocated itself; cum: with its callees (as in pprof -top).
    Sampled dumps show each value's 95% sampling error (±95%).

    Examples:

      heapspy report heap-4242-20261122T010203.000Z-final.pb.gz
      heapspy report x.pb.gz --sample-index alloc_space -n 20    # the churn
      heapspy report x.pb.gz --format json | jq '.top[0]'
      heapspy report x.pb.gz --by thread    # which thread's allocations are live
      heapspy report x.pb.gz --by coro --sample-index alloc_space    # per coroutine
    """
    check_format(output_format)
    config = ReportConfig(dump=dump, top=top, sample_index=sample_index, by=by)
    typer.echo(build_report(config).output(output_format), nl=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
