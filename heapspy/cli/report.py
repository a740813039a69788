"""``heapspy report``: options → ReportConfig → build_report → text or JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from heapspy.report import ReportConfig, build_report, check_format, render_report


def report(
    dump: Path = typer.Argument(..., help="A heap dump (.pb.gz) written by heapspy."),
    top: int = typer.Option(10, "--top", "-n", help="How many functions to list."),
    sample_index: str = typer.Option(
        "",
        "--sample-index",
        help="inuse_space, alloc_space, inuse_objects or alloc_objects (default: the "
        "dump's own, inuse_space).",
        show_default=False,
    ),
    output_format: str = typer.Option("text", "--format", help="text or json."),
) -> None:
    """Show a dump's allocation totals and its top allocation sites by function.

    Totals come from the JSON sidecar next to the dump (x.pb.gz -> x.json).

    flat: what a function allocated itself; cum: with its callees (as in pprof -top).
    """
    check_format(output_format)
    config = ReportConfig(dump=dump, top=top, sample_index=sample_index)
    typer.echo(render_report(build_report(config), output_format), nl=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
