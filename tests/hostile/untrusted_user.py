"""Run a target as a dedicated unprivileged user, and run heapspy with its peak RSS measured.

The user (``heapspy-hostile``, no home, no shell) is created on first use with useradd;
tests that need it are root-only (``privileged``). pyenv's interpreters live under
/root (0700), so only Debian's 3.11 and the provisioned 3.14 can run as this user.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

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


# Runs its arguments and writes "<exit status> <peak RSS in KiB>" to the file in argv[1].
# The peak is measured from this small fresh interpreter: a child forked straight from
# pytest would count pytest's own pages (shared until exec) in its ru_maxrss.
_MEASURE = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "open(sys.argv[1], 'w').write(f'{rc} {peak}')\n"
)


def run_heapspy_measured(*args: str, timeout: float = 120) -> Measured:
    """``python -m heapspy ARGS`` to completion, with its own peak RSS.

    Killed (``timed_out``) after ``timeout`` seconds: a hang is a result, not a stuck test.
    """
    start = time.monotonic()
    with tempfile.NamedTemporaryFile(prefix="heapspy-measure-", suffix=".txt") as result:
        proc = subprocess.Popen(
            [sys.executable, "-c", _MEASURE, result.name, sys.executable, "-m", "heapspy", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            timed_out = True
        words = Path(result.name).read_text().split()
    returncode, peak = (int(words[0]), int(words[1])) if len(words) == 2 else (-9, 0)
    return Measured(
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        max_rss=peak * 1024,
        seconds=time.monotonic() - start,
        timed_out=timed_out,
    )
