"""`heapspy top`: watch a target's heap live, from its session or a session of its own."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from heapspy import control
from heapspy.cli import options
from heapspy.cli.spinner import Spinner
from heapspy.config import DEFAULT_RATE_TEXT, AttachConfig
from heapspy.errors import NoSession
from heapspy.foreground import SignalRequests
from heapspy.reporters.sites import check_by
from heapspy.reporters.top import TopScreen
from heapspy.session import Session
from heapspy.top import TopView, check_order, watch_remote, watch_session


def top(
    pid: int = typer.Argument(..., metavar="PID", help="Process id of the target."),
    every: str = typer.Option("2s", "--every", metavar="DURATION", help="Refresh period."),
    count: int = typer.Option(20, "--top", "-n", help="How many functions to show."),
    order: str = typer.Option(
        "inuse_space", "--order", help="inuse_space (live now) or alloc_space (since attach)."
    ),
    duration: Optional[str] = typer.Option(
        None, "--duration", "-d", metavar="DURATION", help="Stop after this long."
    ),
    rate: str = typer.Option(
        DEFAULT_RATE_TEXT, "--rate", "-r", help="With no live session: sampling rate (see attach)."
    ),
    frames: int = typer.Option(64, "--frames", metavar="N", help="Stack depth (see attach)."),
    thread: Optional[int] = typer.Option(None, "--thread", help="See attach (3.14+)."),
    by: str = typer.Option(
        "",
        "--by",
        metavar="KEY",
        help="Rows are the values of a label instead of functions: thread, thread_id, "
        "task, coro, or type (the live samples' types, named every 5 s at most).",
        show_default=False,
    ),
) -> None:
    """Watch PID's heap live: the functions holding the most memory, and how they grow.

    If a heapspy session already holds PID (started by hand or by the daemon), top
    reads from it every --every and leaves it running. Otherwise top attaches
    itself, and detaches on Ctrl-C or --duration without writing a dump.

    On a terminal the screen is redrawn in place; piped, each refresh is printed
    after the previous one.

    Examples:

      heapspy top 4242

      heapspy top 4242 --order alloc_space --every 5s -n 40

      heapspy top 4242 --by task    # which asyncio task's allocations are live
    """
    period = options.duration(every, "--every") or 2.0
    check_order(order)
    check_by(by)
    if count < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--top")
    limit = options.duration(duration)
    fetch = max(4 * count, 100)  # baselines for growth: see top_screen
    tty = sys.stdout.isatty()
    seen: list[TopView] = []

    def show(view: TopView) -> None:
        prev = seen[-1] if seen else None
        if not seen:
            seen.append(view)
        screen = TopScreen(pid, view, seen[0], prev, order, count).output()
        seen[1:] = [view]
        sys.stdout.write(("\033[H\033[2J" if tty else "") + screen + ("" if tty else "\n"))
        sys.stdout.flush()

    with SignalRequests(dumps=False) as requests:
        try:
            control.request(pid, "status", timeout=5.0)
        except NoSession:
            pass
        else:
            try:
                watch_remote(
                    pid,
                    fetch,
                    order,
                    period,
                    show,
                    limit,
                    stop=lambda: bool(requests.reason),
                    by=by,
                )
            except NoSession:
                print(f"heapspy: the session holding {pid} has ended", file=sys.stderr)
            return
        config = AttachConfig(
            rate=options.rate(rate),
            frames=options.frames(frames),
            thread=thread,
            final_dump=False,
        )
        spinner = Spinner()
        try:
            session = Session.attach(pid, config, progress=spinner)
        finally:
            spinner.clear()
        requests.follow(session)
        try:
            watch_session(session, fetch, order, period, show, limit, by)
        finally:
            session.detach()


def register(app: typer.Typer) -> None:
    app.command("top")(top)
