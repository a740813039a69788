"""`heapspy trim`: give glibc's free-but-held memory back to the kernel."""

from __future__ import annotations

import typer

from heapspy import control
from heapspy.config import AttachConfig
from heapspy.errors import NoSession, TrimRefused
from heapspy.session import Session
from heapspy.units import format_bytes


def _show(pid: int, reply: dict[str, object]) -> None:
    before, after = reply.get("rss_before"), reply.get("rss_after")
    predicted = reply.get("predicted")
    if not isinstance(before, int):
        raise TrimRefused(f"Trimming {pid} gave no figures: {reply}")
    line = f"RSS {format_bytes(before)} -> "
    if isinstance(after, int):
        line += f"{format_bytes(after)} ({format_bytes(after - before)})"
    else:
        line += "?"
    if isinstance(predicted, int):
        line += f"; predicted ~{format_bytes(predicted)}"
    typer.echo(line)


def trim(
    pid: int = typer.Argument(..., metavar="PID", help="Process id of the target."),
) -> None:
    """Call glibc's malloc_trim(0) in PID and print its RSS before and after.

    glibc keeps memory that was freed (after a burst of small allocations, say) for
    reuse; `heapspy report` and `heapspy status PID` show how much ("C allocator: free
    but held") and what trimming would likely give back. Refused for processes that do
    not use glibc's malloc (jemalloc, tcmalloc, mimalloc, musl). Uses the session that
    holds PID, or attaches for the moment it takes.

    Examples:

      heapspy trim 4242
    """
    try:
        reply = control.request(pid, "trim", timeout=60.0)
    except NoSession:
        session = Session.attach(pid, AttachConfig(final_dump=False))
        try:
            reply = session.trim()
        finally:
            session.detach()
    if not reply.get("ok"):
        raise TrimRefused(f"Cannot trim {pid}: {reply.get('error')}.")
    _show(pid, reply)


def register(app: typer.Typer) -> None:
    app.command("trim")(trim)
