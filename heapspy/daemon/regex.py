"""The watch regexes (``cmdline``, ``exclude``), run by RE2: linear time, whatever the text.

Command lines belong to every local user, and the daemon matches them as root on every
scan: with a backtracking engine a user can make a pattern work quadratically or worse
(the shipped ``celery .* worker`` took 8.8 s on one 205 KiB command line, and a stall
past ``WatchdogSec`` has systemd restart the daemon in a loop). RE2 matches in time
linear in the text, which the scan also caps (``match.CMDLINE_CAP``). RE2 has no
backreferences or lookaround; a watch that uses them is refused when the config loads.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import re2


class Pattern(Protocol):
    def search(self, text: str) -> Any: ...


class RegexError(ValueError):
    """A pattern RE2 does not accept (the message says why)."""


@functools.lru_cache(maxsize=256)
def compile_watch_regex(pattern: str) -> Pattern:
    """The compiled pattern (cached: the scan asks once per process)."""
    options = re2.Options()
    options.log_errors = False  # it would write to stderr; the config error says it once
    try:
        compiled: Pattern = re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise RegexError(f"{reason} (watch regexes use RE2 syntax)") from None
    return compiled
