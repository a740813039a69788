"""Log lines for journald or a terminal.

Under systemd, stderr is a stream into the journal (``$JOURNAL_STREAM`` names its device
and inode): each line then starts with a ``<N>`` syslog priority, which journald turns
into the entry's level, and carries no timestamp (the journal adds its own). Anywhere
else lines start with the local time.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TextIO

from heapspy.printable import PrintableFormatter

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


def is_journal(stream: TextIO) -> bool:
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class JournalFormatter(PrintableFormatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 3 if record.levelno > logging.ERROR else 6)
        return f"<{priority}>{super().format(record)}"


_context = threading.local()


def in_session(prefix: str) -> None:
    """From now on, this thread's log records are one session's: each line starts with
    ``prefix`` (``[watch pid]``), as the lines of a session process did."""
    _context.prefix = prefix


def _prefixed(record: logging.LogRecord) -> bool:
    prefix = getattr(_context, "prefix", None)
    if prefix is not None and not getattr(record, "heapspy_prefixed", False):
        record.msg = f"{prefix} {record.getMessage()}"
        record.args = ()
        record.heapspy_prefixed = True
    return True


def configure(stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (stderr) in the daemon's format."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if is_journal(stream):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(PrintableFormatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler.addFilter(_prefixed)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
