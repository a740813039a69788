"""`heapspy rate`: change the sampling rate of a live session."""

from __future__ import annotations

import sys

import typer

from heapspy import control
from heapspy.cli import options
from heapspy.errors import UsageError
from heapspy.sampling import TOTALS, read_sampling
from heapspy.units import format_bytes


def rate(
    pid: int = typer.Argument(..., metavar="PID", help="Process id of the profiled target."),
    new_rate: str = typer.Argument(..., metavar="RATE", help="New mean bytes between samples."),
) -> None:
    """Change how often a live session samples (e.g. 64KiB for more detail).

    Only sessions in sampled mode have a rate (2 bytes and up); 0 keeps the exact totals
    and stops stack sampling. Samples already taken keep the weight of the rate they were
    taken at, so estimates stay unbiased across the change.

    Example:

      heapspy rate 4242 64KiB
    """
    value = options.rate(new_rate)
    reply = control.request(pid, "rate", rate=value)
    if not reply.get("ok"):
        raise UsageError(f"The session for {pid} did not change its rate: {reply.get('error')}.")
    now = read_sampling(reply, value)
    if now.mode == TOTALS:
        print(f"heapspy: {pid} now counts totals only (no stacks)", file=sys.stderr)
    else:
        every = format_bytes(now.rate)
        print(f"heapspy: {pid} now samples every {every} on average", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("rate")(rate)
