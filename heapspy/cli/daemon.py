"""`heapspy daemon`: keep a heapspy session on every worker a config file describes."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import psutil
import typer

from heapspy.daemon import hints, logs
from heapspy.daemon.child import attach_argv, duration_text
from heapspy.daemon.config import DEFAULT_PATH, DaemonConfig, Watch, load_config
from heapspy.daemon.discover import Found, scan, since_boot
from heapspy.daemon.supervise import run_daemon
from heapspy.errors import HeapspyError
from heapspy.printable import printable
from heapspy.registry import read_holder
from heapspy.target.privilege import has_cap_sys_ptrace
from heapspy.units import format_age


def daemon(
    config: Path = typer.Option(
        DEFAULT_PATH,
        "--config",
        "-c",
        metavar="FILE",
        help="The TOML file: a \\[daemon] table and one [\\[watch]] table per group of workers.",
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="Check the file, show what it would watch and which running processes match "
        "now, and exit: 0 when the file is valid, 2 when it is not.",
    ),
) -> None:
    """Watch for Python workers and profile each one from its start.

    Runs in the foreground (systemd's heapspy.service runs it), logging to
    stderr. Every few seconds it looks for processes matching a [\\[watch]]
    of the config file and profiles each new one as `heapspy attach PID`
    would, in a process of its own (forked; named heapspy:PID in ps -o comm),
    so `heapspy dump PID`, `heapspy rate PID` and `heapspy detach PID` work
    on its sessions as on any other. Dumps go to each watch's dump_dir.

    SIGHUP reloads the file (a broken file is refused, the old one kept).
    SIGTERM detaches from every worker, each writing a final dump.

    A config with one watch:

      [\\[watch]]
      name = "api"
      cmdline = "gunicorn: worker .api"
      unit = "gunicorn.service"
      dump_on = ["rss>1.5GiB", "growth>100MiB/10m"]

    Examples:

      heapspy daemon --config /etc/heapspy/heapspy.toml --check

      sudo heapspy daemon -c ./heapspy.toml

      systemctl reload heapspy     # after editing the file
    """
    try:
        cfg = load_config(config)
        if check:
            print(printable(check_report(cfg), keep_newlines=True))  # command lines
            return
        logs.configure()
        code = run_daemon(cfg)
    except HeapspyError as exc:  # its settings are the file's keys, not flags
        raise hints.worded(exc) from exc
    if code:
        raise typer.Exit(code)


def _user(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _watch_lines(cfg: DaemonConfig, watch: Watch, found: list[Found]) -> list[str]:
    a = watch.attach
    argv = attach_argv(0, a, python="heapspy")
    command = shlex.join(["heapspy", "attach", "PID", *argv[5:]])
    keep = []
    if a.keep is not None:
        keep.append(f"keep {a.keep}")
    if a.max_bytes is not None:
        keep.append(f"at most {argv[argv.index('--max-bytes') + 1]}")
    rules = ", ".join(r.text for r in a.dump_on) or "none"
    lines = [
        f'watch "{watch.name}"',
        f"  selects:  {watch.selectors.describe()}",
        f"  runs:     {command}",
        f"  dumps to: {a.dump_dir}" + (f" ({', '.join(keep)})" if keep else ""),
        f"  rules:    {rules}; final dump on detach: {'yes' if a.final_dump else 'no'}",
    ]
    if not found:
        lines.append("  matching now: none")
        return lines
    lines.append(f"  matching now: {len(found)}")
    booted = since_boot()
    for proc in sorted(found, key=lambda p: p.pid):
        notes = []
        if proc.age(booted) < cfg.settle:
            notes.append(f"attached once {duration_text(cfg.settle)} old")
        try:
            holder = read_holder(proc.pid)
        except HeapspyError:  # an unusable runtime directory: nothing to say here
            holder = None
        if holder is not None and psutil.pid_exists(holder.holder_pid):
            notes.append(f"held by heapspy pid {holder.holder_pid}")
        note = f"  ({'; '.join(notes)})" if notes else ""
        lines.append(
            f"    {proc.pid:>7}  {_user(proc.uid):<10} up {format_age(proc.age(booted)):<6} "
            f"{proc.cmdline}{note}"  # whole: it is what the regexes see
        )
    return lines


def check_report(cfg: DaemonConfig) -> str:
    """What `--check` prints: the settings, each watch, and what matches it now."""
    found = list(scan(cfg.watches).values())
    lines = [
        f"{cfg.path}: valid; {len(cfg.watches)} watch{'es' if len(cfg.watches) != 1 else ''}",
        f"  scan every {duration_text(cfg.scan_interval)}, attach to processes at least "
        f"{duration_text(cfg.settle)} old, retry after {duration_text(cfg.retry_backoff)} "
        f"doubling up to {duration_text(cfg.retry_max)}, at most {cfg.max_attaching} "
        f"attaching at once, stop timeout {duration_text(cfg.stop_timeout)}",
    ]
    for watch in cfg.watches:
        lines.append("")
        lines += _watch_lines(cfg, watch, [f for f in found if f.watch == watch.name])
    if not has_cap_sys_ptrace():
        lines += [
            "",
            f"note: running as uid {os.geteuid()} without CAP_SYS_PTRACE: only processes of "
            "this user can be profiled (the systemd unit runs as root with CAP_SYS_PTRACE).",
        ]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("daemon")(daemon)
