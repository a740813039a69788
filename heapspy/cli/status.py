"""`heapspy status`: list the live sessions, or show one."""

from __future__ import annotations

import json
from typing import Optional

import typer

from heapspy.errors import NoSession
from heapspy.printable import printable
from heapspy.report import check_format
from heapspy.status import list_sessions, render_text, to_json


def status(
    pid: Optional[int] = typer.Argument(
        None, metavar="PID", help="Only the session holding this target."
    ),
    output_format: str = typer.Option("text", "--format", help="text or json."),
) -> None:
    """Show which processes heapspy is profiling now, and how.

    One line per live session of this user (root sees the daemon's and its own):
    the target, the heapspy process holding it, its Python, mode and injection
    method, sampling rate, time attached, the target's RSS, the estimated live
    Python heap and the dumps written so far. With PID, fails with exit code 13
    when no session holds it.

    Examples:

      heapspy status

      heapspy status 4242 --format json
    """
    check_format(output_format)
    sessions = list_sessions(None if pid is None else [pid])
    if pid is not None and not sessions:
        raise NoSession(f"No heapspy session holds process {pid}.")
    if output_format == "json":
        typer.echo(json.dumps(to_json(sessions), indent=2, sort_keys=True))
    else:
        typer.echo(printable(render_text(sessions), keep_newlines=True), nl=False)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
