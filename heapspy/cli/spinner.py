"""A spinner on stderr while heapspy waits for the agent, quiet when stderr is not a
terminal."""

from __future__ import annotations

import sys
import time

from heapspy.printable import printable


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
