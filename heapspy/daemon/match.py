"""Whether one process is wanted by a watch, reading only what the selectors need.

A process is described by :class:`ProcessFacts`, which reads ``/proc`` lazily: most
processes are turned away by their command line, so their cgroup, executable and owner
are never read.

A command line is whatever its process wrote (up to ~2 MiB), so only its first
:data:`CMDLINE_CAP` bytes are read and matched, by RE2 (:mod:`heapspy.daemon.regex`):
one process costs at most a linear pass over 4 KiB per regex, however it is crafted.
"""

from __future__ import annotations

import errno
import fnmatch
import os

import psutil

from heapspy.daemon.config import Selectors
from heapspy.daemon.regex import compile_watch_regex

# Bytes of /proc/PID/cmdline read and matched. Worker command lines are far shorter
# (gunicorn's title, celery's options: well under 1 KiB); a regex looks at this prefix.
CMDLINE_CAP = 4096

# Unit types a process can live in; slices only group them.
_UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap")


def unit_from_cgroup(text: str) -> str | None:
    """The systemd unit in the contents of ``/proc/PID/cgroup``, or None.

    cgroup v2 has one ``0::/path`` line; v1 keeps systemd's tree in the ``name=systemd``
    hierarchy. The unit is the innermost path component that is a unit (a service may
    put workers in sub-cgroups of its own, e.g. ``/system.slice/app.service/worker``).
    """
    paths = {}
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            paths["v2"] = path
        elif controllers == "name=systemd":
            paths["v1"] = path
    path = paths.get("v1") or paths.get("v2") or ""
    units = [c for c in path.split("/") if c.endswith(_UNIT_SUFFIXES)]
    return units[-1] if units else None


def read_cmdline(pid: int, cap: int = CMDLINE_CAP) -> list[str]:
    """The first ``cap`` bytes of a process's command line, split like psutil does
    (NUL-separated, or space-separated for a title set by setproctitle).

    Raises psutil.NoSuchProcess or psutil.AccessDenied like ``Process.cmdline()``.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb", buffering=0) as f:
            data = b""
            while len(data) < cap:
                chunk = f.read(cap - len(data))
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ProcessLookupError):
        raise psutil.NoSuchProcess(pid) from None
    except PermissionError:
        raise psutil.AccessDenied(pid) from None
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise psutil.NoSuchProcess(pid) from None
        raise
    text = data.decode("utf-8", errors="replace")
    if not text:
        return []
    truncated = len(data) >= cap
    sep = "\0" if text.endswith("\0") or (truncated and "\0" in text) else " "
    text = text.rstrip(sep) if not truncated else text
    argv = text.split(sep)
    if sep == "\0" and len(argv) == 1 and " " in text:
        argv = text.split(" ")
    return argv


def is_heapspy(argv: list[str]) -> bool:
    """Whether a command line runs heapspy itself (``heapspy ...``, ``python -m heapspy``,
    ``python /usr/local/bin/heapspy``): the daemon never attaches to one."""
    head = argv[:2]
    if any(os.path.basename(a) == "heapspy" for a in head):
        return True
    return any(a == "-m" and b == "heapspy" for a, b in zip(argv, argv[1:]))


class ProcessFacts:
    """What the selectors look at in one process, each read on first use."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self._argv: list[str] | None = None
        self._unit: str | None = None
        self._unit_read = False

    @property
    def argv(self) -> list[str]:
        if self._argv is None:
            self._argv = read_cmdline(self.proc.pid)
        return self._argv

    @property
    def cmdline(self) -> str:
        """The space-joined command line, at most ~CMDLINE_CAP characters."""
        return " ".join(self.argv)

    @property
    def exe(self) -> str:
        try:
            exe = self.proc.exe()
        except psutil.AccessDenied:
            exe = ""
        return (exe or (self.argv[0] if self.argv else "")).replace(" (deleted)", "")

    @property
    def uid(self) -> int:
        return int(self.proc.uids().effective)

    @property
    def unit(self) -> str | None:
        if not self._unit_read:
            try:
                with open(f"/proc/{self.proc.pid}/cgroup") as f:
                    self._unit = unit_from_cgroup(f.read())
            except OSError:
                self._unit = None
            self._unit_read = True
        return self._unit


def matches(selectors: Selectors, facts: ProcessFacts) -> bool:
    """Every selector given holds, and ``exclude`` does not. May raise psutil.Error."""
    cmdline = compile_watch_regex(selectors.cmdline) if selectors.cmdline is not None else None
    if cmdline is not None and not cmdline.search(facts.cmdline):
        return False
    exclude = compile_watch_regex(selectors.exclude) if selectors.exclude is not None else None
    if exclude is not None and exclude.search(facts.cmdline):
        return False
    if selectors.user is not None and facts.uid != selectors.user:
        return False
    if selectors.exe is not None:
        exe = facts.exe
        name = exe if "/" in selectors.exe else os.path.basename(exe)
        if not fnmatch.fnmatchcase(name, selectors.exe):
            return False
    return selectors.unit is None or fnmatch.fnmatchcase(facts.unit or "", selectors.unit)
