"""`heapspy dump`: a heap dump now, from a live session or a short one of its own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from heapspy import control
from heapspy.cli import options
from heapspy.cli.attach import run_attach
from heapspy.config import DEFAULT_RATE_TEXT, AttachConfig
from heapspy.errors import DumpError, NoSession


def dump(
    pid: int = typer.Argument(..., metavar="PID", help="Process id of the target."),
    duration: str = typer.Option(
        "10s", "--duration", "-d", help="With no live session: how long to gather first."
    ),
    rate: str = typer.Option(DEFAULT_RATE_TEXT, "--rate", "-r", help="Sampling rate (see attach)."),
    frames: int = typer.Option(64, "--frames", metavar="N", help="Stack depth (see attach)."),
    dump_dir: Path = typer.Option(Path("heapspy-dumps"), "--dump-dir", help="Where to write."),
    thread: Optional[int] = typer.Option(None, "--thread", help="See attach (3.14+)."),
) -> None:
    """Write a heap dump of PID now and print its path.

    If a heapspy session already holds PID, that session writes the dump (into its own
    --dump-dir). Otherwise heapspy attaches, gathers for --duration, dumps and detaches.

    Examples:

      heapspy dump 4242
      heapspy dump 4242 --duration 30s    # no session yet: gather 30 s first
    """
    try:
        reply = control.request(pid, "dump")
    except NoSession:
        config = AttachConfig(
            rate=options.rate(rate),
            frames=options.frames(frames),
            duration=options.duration(duration) or 10.0,
            dump_dir=dump_dir,
            thread=thread,
            final_rule="on-demand",
        )
        session = run_attach(pid, config, quiet=True)
        for path in session.dumps:
            print(path)
        if not session.dumps:
            raise DumpError(f"No dump was written for {pid} (see the messages above).") from None
        return
    if not reply.get("ok"):
        raise DumpError(f"The session holding {pid} could not write a dump: {reply.get('error')}")
    print(reply["path"])
    print(f"heapspy: dump written by the session holding {pid}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("dump")(dump)
