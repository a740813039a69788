"""``heapspy diff``: options → DiffConfig → reporters.diff → text or JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from heapspy.reporters.base import check_format
from heapspy.reporters.diff import DiffConfig, build_diff


def diff(
    base: Path = typer.Argument(..., metavar="BASE", help="The earlier heap dump (.pb.gz)."),
    new: Path = typer.Argument(..., metavar="NEW", help="The later heap dump (.pb.gz)."),
    top: int = typer.Option(10, "--top", "-n", help="How many sites to list per table."),
    sample_index: str = typer.Option(
        "",
        "--sample-index",
        help="inuse_space, alloc_space, inuse_objects or alloc_objects (default: the "
        "dumps' own, inuse_space).",
        show_default=False,
    ),
    output_format: str = typer.Option("text", "--format", help="text or json."),
    by: str = typer.Option(
        "",
        "--by",
        metavar="KEY",
        help="The first table's rows are the values of a label instead of functions: "
        "thread, thread_id, task, coro or type (which types grew).",
        show_default=False,
    ),
) -> None:
    """Show which functions and lines grew between two dumps, largest growth first.

    The leak finder: dump, let the program run, dump again, then diff the two.

    Examples:

      heapspy diff before.pb.gz after.pb.gz
      heapspy diff a.pb.gz b.pb.gz --sample-index inuse_objects --format json
      heapspy diff before.pb.gz after.pb.gz --by type    # which types grew
    """
    check_format(output_format)
    config = DiffConfig(base=base, new=new, top=top, sample_index=sample_index, by=by)
    typer.echo(build_diff(config).output(output_format), nl=False)


def register(app: typer.Typer) -> None:
    app.command("diff")(diff)
