"""Run a target as a dedicated unprivileged user, and run heapspy with its peak RSS measured.

The user (``heapspy-hostile``, no home, no shell) is created on first use with useradd;
tests that need it are root-only (``privileged``). pyenv's interpreters live under
/root (0700), so only Debian's 3.11 and the provisioned 3.14 can run as this user.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import threading
from dataclasses import dataclass

USER = "heapspy-hostile"


def untrusted_ids() -> tuple[int, int]:
    """(uid, gid) of the dedicated user, created if missing."""
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


def as_untrusted() -> tuple[str, ...]:
    """A command prefix that runs what follows as the dedicated user, no extra groups."""
    uid, gid = untrusted_ids()
    return ("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups")


@dataclass(frozen=True)
class Measured:
    returncode: int
    stdout: str
    stderr: str
    max_rss: int  # bytes
    seconds: float
    timed_out: bool


def run_heapspy_measured(*args: str, timeout: float = 120) -> Measured:
    """``python -m heapspy ARGS`` to completion, with its own peak RSS (wait4's rusage).

    Killed (``timed_out``) after ``timeout`` seconds: a hang is a result, not a stuck test.
    """
    import time

    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "heapspy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: dict[str, str] = {}

    def drain(name: str) -> None:
        stream = getattr(proc, name)
        out[name] = stream.read()
        stream.close()

    readers = [threading.Thread(target=drain, args=(n,)) for n in ("stdout", "stderr")]
    for reader in readers:
        reader.start()
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
        for reader in readers:
            reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        returncode=proc.returncode,
        stdout=out.get("stdout", ""),
        stderr=out.get("stderr", ""),
        max_rss=usage.ru_maxrss * 1024,
        seconds=time.monotonic() - start,
        timed_out=time.monotonic() - start >= timeout,
    )
