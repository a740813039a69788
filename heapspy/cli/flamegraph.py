"""``heapspy flamegraph``: options → FlamegraphConfig → reporters.flamegraph → the path."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from heapspy.reporters.flamegraph import FlamegraphConfig, write_flamegraph


def flamegraph(
    dump: Path = typer.Argument(
        ..., metavar="DUMP", help="A heap dump (.pb.gz) written by heapspy."
    ),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        help="The HTML file to write, or a directory to write it in (default: next to the "
        "dump, x.pb.gz -> x.html).",
        show_default=False,
    ),
    sample_index: str = typer.Option(
        "",
        "--sample-index",
        help="What the graph shows first: inuse_space, alloc_space, inuse_objects or "
        "alloc_objects (default: the dump's own, inuse_space). The page switches between "
        "all four.",
        show_default=False,
    ),
    by: str = typer.Option(
        "",
        "--by",
        metavar="KEY",
        help="Group the stacks under one root frame per value of a label: thread, "
        "thread_id, task, coro or type.",
        show_default=False,
    ),
    types: bool = typer.Option(
        False,
        "--types",
        help="End each live sample's stack in a frame naming the type of its object "
        "(dict, myapp.Order): what each line keeps, not only how much.",
    ),
) -> None:
    """Write a dump as an interactive flame graph: one HTML file, no Go needed.

    Open it in any browser, even offline: everything is inside the file and it loads
    nothing from the network. The header shows the process, the sampling rate, the rule
    that wrote the dump and the exact totals from the sidecar (x.pb.gz -> x.json).

    Each frame is a function, as wide as its share of the selected sample type, its
    callees below it. Click a frame to zoom into it, click a faded caller or press Esc to
    zoom out; hover for file, lines, value and percentage; search to highlight functions
    or files and see their share. The URL remembers the view, e.g.
    heap-....html#sample=alloc_space&search=parse to share it.

    Examples:

      heapspy flamegraph heap-4242-20261122T010203.000Z-final.pb.gz
      heapspy flamegraph x.pb.gz --sample-index alloc_space -o churn.html
      heapspy flamegraph x.pb.gz --by task    # one tower per asyncio task name
      heapspy flamegraph x.pb.gz --types      # what type each line keeps, as leaves
    """
    config = FlamegraphConfig(
        dump=dump, output=output, sample_index=sample_index, by=by, types=types
    )
    print(write_flamegraph(config).output)


def register(app: typer.Typer) -> None:
    app.command("flamegraph")(flamegraph)
