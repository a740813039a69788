"""A descriptor a session's ``poll`` waits on, made readable to wake it at once.

A session's loop sleeps until its agent sends something, a control client comes or
the next thing is due (a heartbeat, the cgroup's poll). A stop or dump request comes
from elsewhere (another thread of the daemon, a signal handler): instead of waking
every half second to look for one, which in a daemon of 64 sessions was 128 wake-ups a
second for nothing, the loop also waits on this pipe and the request writes a byte.
"""

from __future__ import annotations

import contextlib
import os
import threading


class Waker:
    """A pipe: ``wake`` from any thread or signal handler, ``drain`` in the loop."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._lock = threading.Lock()  # no write to a descriptor once closed (and reused)

    def fileno(self) -> int:
        return self._r

    def wake(self) -> None:
        """Make the read end readable. Never waits: from a signal handler that
        interrupted ``close`` in its own thread, a wait would never end; a wake that
        finds the lock held has nothing to do (another wake, or the end, holds it)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._w >= 0:
                with contextlib.suppress(OSError):  # full: already readable
                    os.write(self._w, b"\0")
        finally:
            self._lock.release()

    def drain(self) -> None:
        """Read what the wakes wrote (the loop looks at what they asked for itself)."""
        with contextlib.suppress(OSError):  # empty: BlockingIOError
            while os.read(self._r, 512):
                pass

    def close(self) -> None:
        with self._lock:
            for fd in (self._r, self._w):
                if fd >= 0:
                    os.close(fd)
            self._r = self._w = -1
