"""`heapspy attach`: profile a running process until told to stop."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from heapspy.census import census_note
from heapspy.cli import options
from heapspy.cli.spinner import CensusLine, Spinner
from heapspy.config import DEFAULT_RATE_TEXT, AttachConfig, check_max_bytes, check_method
from heapspy.foreground import run_foreground
from heapspy.reporters.top import TopTable
from heapspy.retainers import table_lines
from heapspy.rss import format_breakdown
from heapspy.rules import parse_rule
from heapspy.serve.access import parse_listen, read_token
from heapspy.serve.http import ServeOptions, serve
from heapspy.serve.workers import find_worker, list_workers
from heapspy.session import Session


def attach(
    pid: int = typer.Argument(
        ..., metavar="PID", help="Process id of the running CPython (3.8-3.14)."
    ),
    duration: Optional[str] = typer.Option(
        None,
        "--duration",
        "-d",
        metavar="DURATION",
        help="Detach after this long (e.g. 30s, 5m). Default: until Ctrl-C.",
    ),
    rate: str = typer.Option(
        DEFAULT_RATE_TEXT,
        "--rate",
        "-r",
        metavar="SIZE",
        help="Mean bytes allocated between samples (like Go's MemProfileRate); 1 = every "
        "allocation (tracemalloc, exact); 0 = exact totals only.",
    ),
    frames: int = typer.Option(
        64, "--frames", metavar="N", help="Stack depth recorded per sample."
    ),
    interval: str = typer.Option(
        "1s", "--interval", metavar="DURATION", help="How often the agent sends what changed."
    ),
    idle_report: str = typer.Option(
        "0",
        "--idle-report",
        metavar="DURATION",
        help="While nothing live changes, send the interval's figures only this often "
        "(e.g. 10s, up to 1m; the daemon's default is 10s): allocation counters and "
        "RSS-based rules are then up to that old, live changes still go out every "
        "interval. 0: every interval.",
    ),
    attach_timeout: str = typer.Option(
        "10s",
        "--attach-timeout",
        metavar="DURATION",
        help="Give up if the agent has not started after this long.",
    ),
    thread: Optional[int] = typer.Option(
        None,
        "--thread",
        metavar="TID",
        help="Python 3.14+: start the agent from this native thread id instead of the main "
        "thread (useful when the main thread is blocked in sleep/accept).",
    ),
    nudge: bool = typer.Option(
        True,
        "--nudge/--no-nudge",
        help="Python < 3.14: wake a main thread that waits on a lock so the agent starts now.",
    ),
    method: str = typer.Option(
        "auto", "--method", metavar="METHOD", help="auto, pep768 (3.14+) or ptrace."
    ),
    dump_dir: Path = typer.Option(
        Path("heapspy-dumps"), "--dump-dir", metavar="DIR", help="Where heap dumps are written."
    ),
    final_dump: bool = typer.Option(
        True, "--final-dump/--no-final-dump", help="Write a dump when the session ends."
    ),
    last_chance: bool = typer.Option(
        True,
        "--last-chance/--no-last-chance",
        help="Write a dump when the process's memory cgroup comes within 5% of its limit "
        "(before the OOM killer strikes).",
    ),
    dump_on: list[str] = typer.Option(
        [],
        "--dump-on",
        metavar="RULE",
        help="Write a dump when a rule fires (repeatable): rss>SIZE, heap>SIZE, "
        "growth>SIZE/DURATION, heap-growth>SIZE/DURATION, every DURATION, leak[:K], "
        "cgroup>PCT%, psi>PCT%, psi-full>PCT%, native>SIZE, unexplained>SIZE, threads>N, "
        "thread-growth>N/DURATION, tasks>N, task-growth>N/DURATION (their dumps hold every "
        "thread's and task's stack, grouped), limits per task or thread: task-alloc>SIZE, "
        "task-live>SIZE (sampled estimates), thread-alloc>SIZE/DURATION (their dumps name "
        "the offender); append ,cooldown=DURATION (default 5m), "
        ",action=log (log only, no dump).",
    ),
    keep: Optional[int] = typer.Option(
        None,
        "--keep",
        metavar="N",
        help="Keep at most N dumps in --dump-dir (oldest deleted first).",
    ),
    max_bytes: Optional[str] = typer.Option(
        None,
        "--max-bytes",
        metavar="SIZE",
        help="Keep at most this many bytes of dumps (e.g. 1GiB).",
    ),
    require_sampling: bool = typer.Option(
        False,
        "--require-sampling",
        help="Fail (exit 17) instead of falling back to tracemalloc when the sampling "
        "shim cannot run in the target.",
    ),
    listen: Optional[str] = typer.Option(
        None,
        "--listen",
        metavar="ADDR",
        help="Serve /debug/pprof/heap and /metrics for this session on ADDR "
        "(127.0.0.1:9465, [::1]:9465 or a Unix socket path), as a Go service does.",
    ),
    listen_token_file: Optional[Path] = typer.Option(
        None,
        "--listen-token-file",
        metavar="FILE",
        help="Let callers presenting 'Authorization: Bearer <token in FILE>' read the "
        "endpoint (required for a non-loopback ADDR).",
    ),
    no_gc: bool = typer.Option(
        False, "--no-scrape-gc", help="Refuse a scraper's gc=1 (a gc.collect() in the target)."
    ),
    native: bool = typer.Option(
        False,
        "--native/--no-native",
        help="Also sample native allocations: PyMem_RawMalloc and the malloc, calloc, "
        "realloc, mmap... of the target's extension modules and libraries, attributed to "
        "the Python line that called them (`heapspy status PID` lists the libraries).",
    ),
    native_frames: bool = typer.Option(
        False,
        "--native-frames",
        help="With --native: also record the C call stack of each native sample, shown "
        "under the Python line that called into the extension (`leaky_alloc (libleak.so)` "
        "under `handle`). Walked by frame pointers: a library built without them "
        "(-fomit-frame-pointer, the default of -O2) shows only the function that called "
        "malloc.",
    ),
    census: bool = typer.Option(
        True,
        "--census/--no-census",
        help="Take a census of the heap at attach (what it held before, by type and root; "
        "see `heapspy census`), written as its own dump.",
    ),
    retainers: Optional[bool] = typer.Option(
        None,
        "--retainers/--no-retainers",
        help="Say which roots hold the top sites' live objects in the final, on-demand and "
        "leak-rule dumps (a walk of the heap like the census's). Default: as --census.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print errors and dump paths."),
) -> None:
    """Attach to a running Python process and profile its heap.

    Nothing needs to be installed in the target: heapspy injects a small agent (PEP 768
    on 3.14+, ptrace before), streams samples back and detaches cleanly on --duration,
    Ctrl-C or SIGTERM, leaving the process as it was. `kill -USR1 <heapspy pid>` (or
    `heapspy dump PID`) writes a dump while attached.

    Examples:

      heapspy attach 4242 --duration 30s --rate 64KiB

      heapspy attach 4242 --dump-on 'rss>1.5GiB' --dump-on 'growth>100MiB/10m'

      heapspy attach 4242 --listen 127.0.0.1:9465   # then: go tool pprof http://127.0.0.1:9465/debug/pprof/heap
    """
    every = options.duration(interval, "interval") or 1.0
    config = AttachConfig(
        rate=options.rate(rate),
        frames=options.frames(frames),
        interval=every,
        idle_report=options.idle_report(idle_report, every),
        duration=options.duration(duration),
        attach_timeout=options.duration(attach_timeout, "attach timeout") or 10.0,
        thread=thread,
        nudge=nudge,
        method=check_method(method, "--method"),
        dump_dir=dump_dir,
        final_dump=final_dump,
        last_chance=last_chance,
        dump_on=tuple(parse_rule(r) for r in dump_on),
        keep=options.keep(keep),
        require_sampling=require_sampling,
        max_bytes=check_max_bytes(max_bytes, "--max-bytes"),
        allow_gc=not no_gc,
        census=census,
        retainers=census if retainers is None else retainers,
        native=native,
        native_frames=options.native_frames(native, native_frames),
    )
    endpoint = None
    if listen is not None:
        address = parse_listen(listen, "--listen")
        token = read_token(listen_token_file)
        endpoint = serve(
            address,
            ServeOptions(
                token=token,
                allow_gc=not no_gc,
                list_workers=lambda: [w for w in list_workers() if w.pid == pid],
                find_worker=lambda p: find_worker(p) if p == pid else None,
            ),
        )
        # printed even with --quiet: with port 0 it is the only way to learn the port
        print(f"heapspy: serving {endpoint.url}/debug/pprof/ and /metrics", file=sys.stderr)
    try:
        run_attach(pid, config, quiet=quiet)
    finally:
        if endpoint is not None:
            endpoint.close()


def run_attach(pid: int, config: AttachConfig, quiet: bool = False) -> Session:
    spinner = Spinner(quiet)
    line = CensusLine(quiet)
    session = run_foreground(
        pid,
        config,
        progress=spinner,
        attached=spinner.clear,
        quiet=quiet,
        census_progress=line,
        census_end=line.clear,
    )
    if not quiet:
        table = TopTable(session.aggregator.top_sites(10), session.aggregator.sampling.estimates)
        print(table.output())
        if session.retainers.last is not None and session.retainers.last.sites:
            print("What holds them (heapspy report shows it again):")
            print("\n".join(table_lines(session.retainers.last)))  # names escaped
        if session.memory_account.last is not None:  # what the rest of RSS is, as it was at the end
            series = [p for p in session.aggregator.series if p.rss is not None]
            rss_growth = series[-1].rss - series[0].rss if len(series) >= 2 else None  # type: ignore[operator]
            heap_growth = series[-1].heap - series[0].heap if len(series) >= 2 else None
            lines = format_breakdown(session.memory_account.last, heap_growth, rss_growth)
            print("\n".join(lines))
        found = session.census_summary
        if found is not None:  # what the table of samples since attach cannot show
            print(census_note(found, session.aggregator.heap_estimate()))
            print(f"Read the census with: go tool pprof -top {found['path']}")
        final = [d for d in session.dumps if d.endswith("-final.pb.gz")]
        if final:  # what to do with it, as a first-time user would not know
            print(f"Read the final dump with: heapspy report {final[-1]}")
            print(f"                      or: heapspy flamegraph {final[-1]}")
    return session


def register(app: typer.Typer) -> None:
    app.command("attach")(attach)
