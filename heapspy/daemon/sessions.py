"""The sessions the daemon runs in its own process: one thread each, from the moment its
attach helper handed the session over (``heapspy.daemon.handoff``) to the detach.

A thread per session, not a process: a session that has attached costs its tables and a
thread's stack, where a process cost ~10-20 MiB of private memory (benchmarks/
daemon_memory.py). What a process gave is kept where it matters:

- a failure is confined: anything a session's code raises ends that session only, with
  the exit status a session process would have had (``HeapspyError``'s code, 1 for a
  crash) and its traceback in the log under the session's prefix;
- a slow or hostile agent holds up its own thread only: every wait on an agent (a call,
  the detach) is bounded and happens in the session's thread, never in the daemon's
  loop; what an agent sends is checked and bounded as in any session (``channel``);
- lines keep their ``[watch pid]`` prefix (``logs.in_session``), and the daemon learns
  how a session went from its events, never from its text.

What a process gave that a thread cannot: a session cannot outlive a SIGKILLed daemon
to write its final dump (the agents switch themselves off when their peer goes).
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from typing import Any

from heapspy.config import AttachConfig
from heapspy.daemon import hints, logs
from heapspy.errors import HeapspyError
from heapspy.foreground import run_attached
from heapspy.printable import printable
from heapspy.session import Session

log = logging.getLogger("heapspy")

Events = Callable[[str, dict[str, Any]], None]


def _say(line: str) -> None:
    log.info("%s", line)


class SessionThread:
    """One handed-over session, running in a thread until it detaches."""

    def __init__(
        self,
        session: Session,
        config: AttachConfig,
        prefix: str,
        events: Events,
        done: Callable[[], None],
    ) -> None:
        """``events``: as ``run_attached``'s; ``done``: called once the thread has
        ended (it wakes the daemon's loop, which then reaps it)."""
        self.session = session
        self.config = config
        self.prefix = prefix
        self.code: int | None = None  # its exit status, once ended
        self._events = events
        self._done = done
        self._thread = threading.Thread(
            target=self._main, name=f"heapspy:{session.target.pid}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        logs.in_session(self.prefix)
        code = 1
        try:
            run_attached(self.session, self.config, say=_say, events=self._events)
            code = 0
        except HeapspyError as exc:
            for line in printable(hints.render(exc), keep_newlines=True).splitlines():
                log.info("%s", line)
            code = exc.exit_code
        except BaseException:  # noqa: BLE001 - confined to this session: the daemon goes on
            for line in traceback.format_exc().splitlines():
                log.error("%s", line)
            self._release()
        finally:
            for close in self.session.closers:
                close()
            self.code = code
            self._done()

    def _release(self) -> None:
        """After a crash: whatever the session still holds goes (the agent sees its peer
        gone and switches itself off; the lock and the control socket are freed)."""
        session = self.session
        try:
            if session.channel is not None:
                session.channel.close()
                session.channel = None
            if session.control is not None:
                session.control.close()
                session.control = None
        except Exception:  # noqa: BLE001 - best effort, the crash is what matters
            pass
        finally:
            session.outside.close()
            session.lock.release()

    def stop(self, reason: str, by: float | None = None) -> None:
        """Ask it to detach (its final dump included), by ``by`` if given."""
        self.session.request_stop(reason, by)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()
