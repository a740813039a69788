"""The daemon's config file: one ``[daemon]`` table, one ``[[watch]]`` per group of workers.

    [daemon]
    scan_interval = "2s"     # how often /proc is scanned for new workers
    settle = "2s"            # how old a process must be before it is attached
    retry_backoff = "30s"    # first wait after a failed attach; doubles each time...
    retry_max = "10m"        # ...up to this
    stop_timeout = "20s"     # on stop, how long sessions get to detach and write dumps
    max_attaching = 4        # attaches in progress at once (each starts a Python)
    listen = "127.0.0.1:9465"  # serve /debug/pprof/ and /metrics (off unless given)
    listen_token_file = "/etc/heapspy/token"  # optional: bearer token for scrapers

    [[watch]]
    name = "api"                        # names the log lines and the dump directory
    cmdline = 'gunicorn: worker \\[api'  # selectors: every one given must match
    unit = "gunicorn.service"
    rate = "512KiB"                      # then what `heapspy attach` takes
    dump_on = ["rss>1.5GiB", "growth>100MiB/10m"]

Everything is checked when the file is loaded (at start, on ``--check`` and on SIGHUP),
with the same rules as the command line. Each mistake is a ``UsageError`` (exit code 2)
naming the file, the table and the key, and saying what was expected; unknown keys are
mistakes too, so that a typo cannot silently turn a setting off.
"""

from __future__ import annotations

import difflib
import functools
import os
import pwd
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from heapspy.config import (
    DAEMON_IDLE_REPORT,
    AttachConfig,
    check_frames,
    check_idle_report,
    check_keep,
    check_max_bytes,
    check_method,
    check_native_frames,
    check_rate,
)
from heapspy.daemon.hints import key_remedy
from heapspy.daemon.regex import RegexError, compile_watch_regex
from heapspy.errors import UsageError
from heapspy.rules import parse_rule
from heapspy.serve.access import ListenAddress, parse_listen, read_token
from heapspy.units import parse_duration

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/heapspy/heapspy.toml")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
T = TypeVar("T")


@dataclass(frozen=True)
class Selectors:
    """Which processes a watch takes: every selector given must match."""

    cmdline: str | None = None  # RE2 regex searched in the command line's first 4 KiB
    exe: str | None = None  # glob on the executable's basename (its full path if it has a /)
    user: int | None = None  # uid; a user name in the file is resolved when it is loaded
    unit: str | None = None  # systemd unit name or glob, from /proc/PID/cgroup
    exclude: str | None = None  # RE2 regex: a command line it finds is never taken
    user_name: str | None = field(default=None, compare=False)  # as written, for messages

    def describe(self) -> str:
        parts = []
        if self.cmdline is not None:
            parts.append(f"cmdline ~ /{self.cmdline}/")
        if self.exe is not None:
            parts.append(f"exe = {self.exe}")
        if self.user is not None:
            named = f" ({self.user_name})" if self.user_name else ""
            parts.append(f"uid = {self.user}{named}")
        if self.unit is not None:
            parts.append(f"unit = {self.unit}")
        if self.exclude is not None:
            parts.append(f"not cmdline ~ /{self.exclude}/")
        return ", ".join(parts)


@dataclass(frozen=True)
class Watch:
    """One group of workers and how to profile each of them."""

    name: str
    selectors: Selectors
    attach: AttachConfig


@dataclass(frozen=True)
class DaemonConfig:
    path: Path
    watches: tuple[Watch, ...]
    scan_interval: float = 2.0
    settle: float = 2.0
    retry_backoff: float = 30.0
    retry_max: float = 600.0
    stop_timeout: float = 20.0
    max_attaching: int = 4
    listen: ListenAddress | None = None  # HTTP: /debug/pprof/ and /metrics; off when None
    listen_token: str | None = None  # bearer token read from listen_token_file
    allow_gc: bool = True  # may a scraper's gc=1 run gc.collect() in a worker

    def watch(self, name: str) -> Watch | None:
        return next((w for w in self.watches if w.name == name), None)


DAEMON_KEYS = (
    "scan_interval",
    "settle",
    "retry_backoff",
    "retry_max",
    "stop_timeout",
    "max_attaching",
    "listen",
    "listen_token_file",
    "allow_gc",
)
SELECTOR_KEYS = ("cmdline", "exe", "user", "unit", "exclude")
ATTACH_KEYS = (
    "rate",
    "frames",
    "interval",
    "idle_report",
    "attach_timeout",
    "method",
    "nudge",
    "dump_on",
    "dump_dir",
    "keep",
    "max_bytes",
    "require_sampling",
    "final_dump",
    "last_chance",
    "census",
    "retainers",
    "native",
    "native_frames",
)
WATCH_KEYS = ("name", *SELECTOR_KEYS, *ATTACH_KEYS)


def default_dump_root() -> Path:
    """Where a watch without ``dump_dir`` writes: ``<root>/<watch name>``.

    systemd's ``StateDirectory=`` (``$STATE_DIRECTORY``) when set, else
    ``/var/lib/heapspy/dumps`` as root, else ``./heapspy-dumps``.
    """
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / "dumps"
    if os.geteuid() == 0:
        return Path("/var/lib/heapspy/dumps")
    return Path.cwd() / "heapspy-dumps"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


class _Table:
    """One table of the file, read key by key; remembers which keys were read."""

    def __init__(self, file: Path, label: str, data: Mapping[str, Any]) -> None:
        self.file = file
        self.label = label
        self.data = data

    def error(self, key: str | None, detail: str, hint: str | None = None) -> UsageError:
        where = f"{self.file}: {self.label}" + (f', key "{key}"' if key else "")
        return UsageError(f"{where}: {detail}", hint=hint)

    def check_keys(self, known: tuple[str, ...]) -> None:
        for key in self.data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1) or [
                    k for k in known if k.startswith(key) or key.startswith(k)
                ]
                maybe = f'did you mean "{close[0]}"? ' if close else ""
                raise self.error(key, f"unknown key; {maybe}Known keys: {', '.join(known)}.")

    def convert(self, key: str, check: Callable[[], T]) -> T:
        """Run a shared check, restating its complaint with the file, table and key."""
        try:
            return check()
        except UsageError as exc:
            raise self.error(key, exc.message, exc.advice(key_remedy)) from None

    def string(self, key: str, what: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"expected {what} (a non-empty string), got {_kind(value)}.")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_kind(value)}.")
        return value

    def integer(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_kind(value)}.")
        return value

    def size_text(self, key: str) -> str | None:
        """A size as text for the shared parsers: "512KiB" or a number of bytes."""
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.error(
                key, f'expected a size such as "512KiB" or a number of bytes, got {_kind(value)}.'
            )
        return str(value)

    def duration(self, key: str, default: float, zero: bool = False) -> float:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.error(
                key, f'expected a duration such as "2s" or "10m", or seconds, got {_kind(value)}.'
            )
        seconds = self.convert(key, lambda: parse_duration(str(value), key))
        if seconds < 0 or (seconds == 0 and not zero):
            floor = "zero or more" if zero else "positive"
            raise self.error(key, f"must be {floor}, got {value!r}.")
        return seconds

    def regex(self, key: str) -> str | None:
        text = self.string(key, "a regular expression")
        if text is not None:
            try:
                compile_watch_regex(text)
            except RegexError as exc:
                raise self.error(key, f"not a valid regular expression: {exc}.") from None
        return text

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected an array of strings, got {_kind(value)}.")
        return tuple(value)


def _user(table: _Table) -> tuple[int | None, str | None]:
    value = table.data.get("user")
    if value is None:
        return None, None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value, None
    if isinstance(value, str) and value.isdigit():
        return int(value), None
    if not isinstance(value, str) or not value:
        raise table.error("user", f"expected a user name or uid, got {_kind(value)}.")
    try:
        return pwd.getpwnam(value).pw_uid, value
    except KeyError:
        raise table.error("user", f"no user named {value!r} on this system.") from None


def _unit(table: _Table) -> str | None:
    unit = table.string("unit", "a systemd unit name or glob")
    if unit is not None and "." not in unit:
        unit += ".service"  # as systemctl reads a bare name
    return unit


def _watch(file: Path, index: int, data: Any, seen: set[str]) -> Watch:
    if not isinstance(data, dict):
        raise UsageError(f"{file}: watch #{index}: expected a [[watch]] table.")
    raw_name = data.get("name")
    label = f'watch "{raw_name}"' if isinstance(raw_name, str) and raw_name else f"watch #{index}"
    table = _Table(file, label, data)
    table.check_keys(WATCH_KEYS)
    name = table.string("name", "a name for this group of workers")
    if name is None:
        raise table.error("name", 'missing: every [[watch]] needs a name, e.g. name = "api".')
    if not _NAME.match(name):
        raise table.error(
            "name", f"{name!r} cannot name a directory: use letters, digits, '.', '_' or '-'."
        )
    if name in seen:
        raise table.error("name", f"a watch named {name!r} already exists; names must differ.")
    seen.add(name)

    uid, user_name = _user(table)
    selectors = Selectors(
        cmdline=table.regex("cmdline"),
        exe=table.string("exe", "a glob on the executable's name, e.g. python3*"),
        user=uid,
        unit=_unit(table),
        exclude=table.regex("exclude"),
        user_name=user_name,
    )
    if all(getattr(selectors, k) is None for k in ("cmdline", "exe", "user", "unit")):
        raise table.error(
            None,
            "needs at least one selector (cmdline, exe, user or unit): a watch that matches "
            "every process is refused.",
        )

    rate_text = table.size_text("rate")
    max_bytes_text = table.size_text("max_bytes")
    dump_dir_text = table.string("dump_dir", "a directory")
    dump_dir = default_dump_root() / name
    if dump_dir_text is not None:
        dump_dir = file.parent / Path(dump_dir_text)  # relative to the config file
    frames = table.integer("frames")
    keep = table.integer("keep")
    method = table.string("method", "auto, pep768 or ptrace")
    interval = table.duration("interval", AttachConfig.interval)
    # by default a quiet worker's collections are sent every DAEMON_IDLE_REPORT (an
    # interval at least as long sends every one anyway)
    idle_default = DAEMON_IDLE_REPORT if interval < DAEMON_IDLE_REPORT else 0.0
    idle_report = table.duration("idle_report", idle_default, zero=True)
    attach = AttachConfig(
        rate=AttachConfig.rate
        if rate_text is None
        else table.convert("rate", lambda: check_rate(rate_text, "rate")),
        frames=AttachConfig.frames
        if frames is None
        else table.convert("frames", lambda: check_frames(frames, "frames")),
        interval=interval,
        idle_report=table.convert(
            "idle_report", lambda: check_idle_report(idle_report, interval, "idle_report")
        ),
        attach_timeout=table.duration("attach_timeout", AttachConfig.attach_timeout),
        method="auto"
        if method is None
        else table.convert("method", lambda: check_method(method, "method")),
        nudge=table.boolean("nudge", True),
        dump_on=tuple(
            table.convert("dump_on", functools.partial(parse_rule, r))
            for r in table.strings("dump_on")
        ),
        dump_dir=Path(os.path.normpath(dump_dir)),
        keep=table.convert("keep", lambda: check_keep(keep, "keep")),
        max_bytes=table.convert("max_bytes", lambda: check_max_bytes(max_bytes_text, "max_bytes")),
        require_sampling=table.boolean("require_sampling", False),
        final_dump=table.boolean("final_dump", True),
        last_chance=table.boolean("last_chance", True),
        census=table.boolean("census", True),  # of the heap at attach, as `heapspy attach`
        # off by default: each walk would also run at every session's end when the daemon
        # stops, and its drain must stay short
        retainers=table.boolean("retainers", False),
        native=table.boolean("native", False),
        native_frames=table.convert(
            "native_frames",
            lambda: check_native_frames(
                table.boolean("native", False),
                table.boolean("native_frames", False),
                "native_frames = true",
                "native = true",
            ),
        ),
        watch=name,
    )
    return Watch(name, selectors, attach)


def parse_config(doc: Mapping[str, Any], path: Path) -> DaemonConfig:
    """Check a parsed TOML document and build the daemon's config from it."""
    for key in doc:
        if key not in ("daemon", "watch"):
            raise UsageError(
                f'{path}: unknown table or key "{key}": expected a [daemon] table and '
                "[[watch]] tables."
            )
    daemon = doc.get("daemon", {})
    if not isinstance(daemon, dict):
        raise UsageError(f"{path}: [daemon] must be a table, got {_kind(daemon)}.")
    table = _Table(path, "[daemon]", daemon)
    table.check_keys(DAEMON_KEYS)
    defaults = DaemonConfig(path, ())
    scan_interval = table.duration("scan_interval", defaults.scan_interval)
    settle = table.duration("settle", defaults.settle, zero=True)
    backoff = table.duration("retry_backoff", defaults.retry_backoff)
    retry_max = table.duration("retry_max", defaults.retry_max)
    stop_timeout = table.duration("stop_timeout", defaults.stop_timeout)
    max_attaching = table.integer("max_attaching")
    if max_attaching is not None and max_attaching < 1:
        raise table.error("max_attaching", f"must be at least 1, got {max_attaching}.")
    if retry_max < backoff:
        raise table.error("retry_max", f"must not be shorter than retry_backoff ({backoff:g} s).")
    listen_text = table.string("listen", "HOST:PORT or a Unix socket path")
    listen = (
        None
        if listen_text is None
        else table.convert("listen", lambda: parse_listen(listen_text, "listen"))
    )
    token_text = table.string("listen_token_file", "a file holding the token")
    token = (
        None
        if token_text is None
        else table.convert("listen_token_file", lambda: read_token(path.parent / Path(token_text)))
    )
    if listen is not None and not listen.loopback and token is None:
        raise table.error(
            "listen",
            f"{listen} is not loopback: a remote caller's user cannot be checked, so a "
            "listen_token_file is required.",
        )
    allow_gc = table.boolean("allow_gc", True)

    watches = doc.get("watch")
    if watches is None:
        raise UsageError(
            f"{path}: no [[watch]] table: nothing to watch.",
            hint='Add one, e.g.:\n[[watch]]\nname = "api"\ncmdline = "gunicorn"',
        )
    if not isinstance(watches, list):
        raise UsageError(
            f"{path}: [watch] must be written [[watch]] (an array of tables, one per group "
            "of workers)."
        )
    seen: set[str] = set()
    return DaemonConfig(
        path=path,
        watches=tuple(_watch(path, i, w, seen) for i, w in enumerate(watches, 1)),
        scan_interval=scan_interval,
        settle=settle,
        retry_backoff=backoff,
        retry_max=retry_max,
        stop_timeout=stop_timeout,
        listen=listen,
        listen_token=token,
        allow_gc=allow_gc,
        max_attaching=defaults.max_attaching if max_attaching is None else max_attaching,
    )


def load_config(path: Path) -> DaemonConfig:
    """Read and check the daemon's config file."""
    path = Path(os.path.abspath(path))
    try:
        text = path.read_bytes().decode()
    except OSError as exc:
        raise UsageError(f"Cannot read the daemon's config {path}: {exc.strerror}.") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason}).") from None
    try:
        doc: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}.") from None
    return parse_config(doc, path)
