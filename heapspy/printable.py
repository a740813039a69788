"""Text from a target made safe to print: control characters escaped.

Function names, notes, the Python version, the command line and every message an agent
sends come from a process heapspy does not trust. Printed raw, an ESC or OSC sequence in
them reaches the user's terminal (retitling it, rewriting what is on screen, on some
terminals worse), and a newline forges whole lines in a log. Every human-facing output
goes through ``printable``: the foreground lines, the CLI's text renderers and error
messages, and the log formatters of the CLI and the daemon.
"""

from __future__ import annotations

import logging
import re
from typing import Any

# C0 controls, DEL, C1 controls (0x9b is an 8-bit CSI), and the Unicode format characters
# that reorder or hide text on screen (bidirectional overrides and isolates, zero-width).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_UNSAFE_KEEP_LINES = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\n``).

    ``keep_newlines``: for multi-line text heapspy itself laid out (a report, a table),
    whose line breaks are its own; any other control character is still escaped.
    """
    pattern = _UNSAFE_KEEP_LINES if keep_newlines else _UNSAFE
    return pattern.sub(_escape, str(text))


class PrintableFormatter(logging.Formatter):
    """A log formatter that escapes control characters in each message (and keeps the
    line breaks of a traceback), so no text from a target can forge a log line or reach
    a terminal raw."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return printable(super().formatException(ei), keep_newlines=True)
