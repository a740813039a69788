"""Where live sessions are found: one lock and one control socket per target pid.

The lock (``flock``) is held by the heapspy process that owns the session, so it goes
away with that process however it dies; the control socket beside it is how
``heapspy detach`` and ``heapspy dump`` reach the owner.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from heapspy.errors import AlreadyAttached, PermissionDenied


def runtime_dir() -> Path:
    """A directory private to this user (0700), created on first use.

    The fallback ``/tmp/heapspy-UID`` has a name anyone can predict: another user may
    have made it first (a directory of theirs, or a link to one), to read or replace
    the control sockets. So whatever is there is used only if it is a real directory
    (not a link), owned by us, mode 0700; otherwise heapspy stops and says what is wrong.
    """
    if os.geteuid() == 0:
        base = Path("/run/heapspy")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "heapspy"
    else:
        base = Path(f"/tmp/heapspy-{os.geteuid()}")
    override = os.environ.get("HEAPSPY_RUNTIME_DIR")
    if override:
        base = Path(override)
    sessions = base / "sessions"
    for d in (base, sessions):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass  # whatever it is, checked below without following it
        except FileNotFoundError:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        problem = _not_private(d.lstat())
        if problem:
            raise PermissionDenied(
                f"{d} {problem}: it is not a private directory of yours, so heapspy will "
                "not keep its session sockets there.",
                hint="Remove it, or set HEAPSPY_RUNTIME_DIR to a private directory (mode 0700).",
            )
    return sessions


def _not_private(st: os.stat_result) -> str | None:
    """What makes a runtime directory unsafe to use, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.geteuid():
        return f"belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})"
    if st.st_mode & 0o077:
        return f"is open to other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def control_path(pid: int) -> Path:
    return runtime_dir() / f"{pid}.sock"


@dataclass(frozen=True)
class Holder:
    holder_pid: int
    target_pid: int
    started: float
    command: str


def read_holder(pid: int) -> Holder | None:
    try:
        data = json.loads((runtime_dir() / f"{pid}.lock").read_text())
        return Holder(int(data["holder_pid"]), pid, float(data["started"]), str(data["command"]))
    except (OSError, ValueError, KeyError):
        return None


class SessionLock:
    """Exclusive claim on one target pid, held for the life of a session."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.path = runtime_dir() / f"{pid}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = self._lock_file()
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # released and unlinked while we waited for it: take the new one
        self._claim(fd)

    def _lock_file(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(self.pid)
            who = f"pid {holder.holder_pid} ({holder.command})" if holder else "another process"
            raise AlreadyAttached(
                f"Process {self.pid} already has a heapspy session, held by {who}.",
                hint=(
                    f"End it with `heapspy detach {self.pid}`, or get a dump from it with "
                    f"`heapspy dump {self.pid}`."
                ),
            ) from None
        return fd

    def _claim(self, fd: int) -> None:
        try:
            with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            command = "heapspy"
        body = json.dumps(
            {"holder_pid": os.getpid(), "started": time.time(), "command": command[:200]}
        ).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, body, 0)
        self._fd = fd

    def fileno(self) -> int | None:
        """The locked file's descriptor while held."""
        return self._fd

    def adopt(self, fd: int) -> None:
        """Take over a lock another process acquired and passed on (its ``fd``, which
        holds the same ``flock``): this process is the holder from now on."""
        self._claim(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        try:
            control_path(self.pid).unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
