"""`heapspy census`: what the live objects are and which roots hold them, now."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from heapspy import control
from heapspy.census import CensusOptions, CensusProgress, summary, take_census
from heapspy.cli import options
from heapspy.cli.spinner import CensusLine
from heapspy.config import AttachConfig
from heapspy.errors import AgentFailed, NoSession, UsageError
from heapspy.foreground import SignalRequests
from heapspy.printable import printable
from heapspy.session import Session
from heapspy.units import format_bytes, parse_duration


def census(
    pid: int = typer.Argument(..., metavar="PID", help="Process id of the target."),
    dump_dir: Path = typer.Option(
        Path("heapspy-dumps"), "--dump-dir", metavar="DIR", help="Where to write (see dump)."
    ),
    slice_: str = typer.Option(
        "10ms",
        "--slice",
        metavar="DURATION",
        help="Work at most this long at a time in the target (1ms-1s).",
    ),
    pause: str = typer.Option(
        "30ms",
        "--pause",
        metavar="DURATION",
        help="Rest this long between slices, so the target runs (default: 25% of a core).",
    ),
    attach_timeout: str = typer.Option(
        "10s", "--attach-timeout", metavar="DURATION", help="See attach."
    ),
    thread: Optional[int] = typer.Option(None, "--thread", help="See attach (3.14+)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print errors and the path."),
) -> None:
    """Count the live Python objects of PID by type and by the root that holds them,
    and write them as a pprof profile (census-PID-TIME.pb.gz); print its path.

    Each object is counted once, for the first root that reaches it: module globals
    and class attributes, then threads' frame locals, then what no root reaches
    (cyclic garbage, or held by C code). The walk runs in the target in short slices;
    Ctrl-C stops it and writes what was counted, marked partial. If a heapspy session
    already holds PID, that session runs the census (into its own --dump-dir).

    Examples:

      heapspy census 4242
      go tool pprof -top census-4242-*.pb.gz          # types by bytes
      go tool pprof -top -cum census-4242-*.pb.gz     # roots by what they hold
    """
    opts = CensusOptions(
        slice=_seconds(slice_, "--slice", 0.001, 1.0),
        pause=_seconds(pause, "--pause", 0.0, 10.0),
    )
    line = CensusLine(quiet)
    say = None if quiet else _say
    try:
        reply = control.stream(
            pid,
            "census",
            lambda body: _on_reply(body, line, say, pid),
            slice=opts.slice,
            pause=opts.pause,
        )
    except NoSession:
        config = AttachConfig(
            dump_dir=dump_dir,
            final_dump=False,
            attach_timeout=options.duration(attach_timeout, "attach timeout") or 10.0,
            thread=thread,
        )
        found = _standalone(pid, config, opts, line, say)
    else:
        line.clear()
        if not reply.get("ok"):
            raise AgentFailed(
                f"The session holding {pid} could not take a census: {reply.get('error')}"
            )
        found = reply["census"]
        if not quiet:
            print(f"heapspy: census taken by the session holding {pid}", file=sys.stderr)
    print(found["path"])
    if not quiet:
        print(printable(render_summary(found), keep_newlines=True), file=sys.stderr)


def _say(text: str) -> None:
    print(f"heapspy: {printable(text)}", file=sys.stderr, flush=True)


def _on_reply(
    body: dict[str, Any], line: CensusLine, say: Callable[[str], None] | None, pid: int
) -> bool:
    progress = body.get("progress")
    if body.get("ok") and isinstance(progress, dict):
        if say is not None and not line.told:
            say(f"the session holding {pid} is taking a census (Ctrl-C stops it)")
            line.told = True
        line(CensusProgress.of(progress))
        return True
    return False


def _standalone(
    pid: int,
    config: AttachConfig,
    opts: CensusOptions,
    line: CensusLine,
    say: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Attach, take the census, detach: the target is left as it was."""
    with SignalRequests(dumps=False) as requests:
        session = Session.attach(pid, config)
        try:
            requests.follow(session)
            if say is not None:
                say(f"attached to {pid}; taking a census (Ctrl-C stops it, keeping what it has)")
            result, path = take_census(
                session,
                opts,
                config.dump_dir,
                line,
                lambda: requests.reason and f"{requests.reason} (Ctrl-C)",
            )
        finally:
            line.clear()
            session.detach()
    return summary(result, path)


def render_summary(found: dict[str, Any]) -> str:
    """The census's headline and its largest roots and types, for a terminal."""
    head = (
        f"census of {found['objects']:,} objects, {format_bytes(found['bytes'])} in "
        f"{found['elapsed']:.1f} s (CPU {found['cpu']:.1f} s, longest slice "
        f"{found['longest_slice'] * 1000:.0f} ms)"
    )
    if found.get("partial"):
        head += f"; PARTIAL: {found.get('stopped') or 'stopped early'}"
    lines = [head, f"  {'bytes':>10}  {'objects':>10}  held by"]
    lines += [f"  {format_bytes(b):>10}  {n:>10,}  {name}" for name, n, b in found["roots"][:5]]
    lines.append(f"  {'bytes':>10}  {'objects':>10}  type")
    lines += [f"  {format_bytes(b):>10}  {n:>10,}  {name}" for name, n, b in found["types"][:5]]
    return "\n".join(lines)


def _seconds(text: str, what: str, lo: float, hi: float) -> float:
    value = parse_duration(text, what)
    if not lo <= value <= hi:
        raise UsageError(f"{what} must be between {lo:g} s and {hi:g} s, got {text!r}.")
    return value


def register(app: typer.Typer) -> None:
    app.command("census")(census)
