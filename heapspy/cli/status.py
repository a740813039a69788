"""`heapspy status`: list the live sessions, or show one (reporters.status)."""

from __future__ import annotations

from typing import Optional

import typer

from heapspy.reporters.base import check_format
from heapspy.reporters.status import build_status


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
    typer.echo(build_status(pid).output(output_format), nl=False)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
