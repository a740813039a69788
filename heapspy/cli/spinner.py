"""Lines on stderr that are rewritten in place: a spinner while heapspy waits for the
agent, a census's progress. Quiet when stderr is not a terminal."""

from __future__ import annotations

import sys
import time

from heapspy.census import CensusProgress
from heapspy.printable import printable
from heapspy.units import format_bytes


class Spinner:
    FRAMES = "|/-\\"

    def __init__(self, quiet: bool = False) -> None:
        self.enabled = sys.stderr.isatty() and not quiet
        self._i = 0
        self._last = 0.0
        self._shown = False

    def __call__(self, what: str, elapsed: float) -> None:
        if not self.enabled or elapsed < 0.3 or time.monotonic() - self._last < 0.1:
            return
        self._last = time.monotonic()
        self._i += 1
        line = f"{self.FRAMES[self._i % 4]} waiting for the agent ({elapsed:.1f} s): {what}"
        sys.stderr.write("\r\033[K" + printable(line[:200]))  # names the target's functions
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._shown = False


class CensusLine:
    """A census's progress on one line (``heapspy census``, and ``attach``'s census at
    attach): objects walked, bytes seen, elapsed, and the longest the walk held the
    target (the wall time of its longest slice: the target's longest pause)."""

    def __init__(self, quiet: bool) -> None:
        self.enabled = sys.stderr.isatty() and not quiet
        self.shown = False
        self.told = False  # the line saying a census is under way was printed

    def __call__(self, p: CensusProgress) -> None:
        if not self.enabled:
            return
        line = (
            f"census: {p.objects:,} objects, {format_bytes(p.bytes)}, {p.elapsed:.1f} s, "
            f"target paused at most {p.longest_slice_wall * 1000:.0f} ms ({p.phase}); "
            "Ctrl-C stops it"
        )
        sys.stderr.write("\r\033[K" + printable(line[:200]))  # phase: the agent's text
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.shown = False
