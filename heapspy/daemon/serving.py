"""What the daemon's HTTP endpoint serves: its own sessions, read in its own process.

The sessions are threads of the daemon, so a scrape reads what they have already
aggregated (``Session.scrape_metrics``, ``scrape_profile``: the profile is encoded once
per interval whoever asks) instead of asking each session's thread over its control
socket and waiting for it to be scheduled: at load 25 on 2 cores that round trip took
0.5-5 s a worker. Which workers there are comes from the daemon's own table (pid, uid
and command line as the scan found them), not from the runtime directory and /proc on
every request. Sessions this user started by hand (``heapspy attach``) are still
served, through their control sockets; so is anything that needs a session's thread to
call its agent (``gc=1``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from heapspy.serve import workers
from heapspy.serve.workers import Worker
from heapspy.session import Session


class Local:
    """One session of the daemon, as the endpoint sees it."""

    def __init__(self, worker: Worker, session: Session) -> None:
        self.worker = worker
        self.session = session


class DaemonWorkers:
    """``ServeOptions``' worker callbacks for the daemon. ``running`` lists the sessions
    running in the daemon now; it is called from the HTTP threads, so it must only read
    (a copy of) the daemon's table."""

    def __init__(self, running: Callable[[], Iterable[Local]]) -> None:
        self._running = running

    def _local(self) -> dict[int, Local]:
        return {found.worker.pid: found for found in self._running()}

    def list_workers(self) -> list[Worker]:
        local = self._local()
        others = workers.list_workers(skip=frozenset(local))
        return sorted([*(x.worker for x in local.values()), *others], key=lambda w: w.pid)

    def find_worker(self, pid: int) -> Worker | None:
        found = self._local().get(pid)
        return found.worker if found is not None else workers.find_worker(pid)

    def metrics(self, pid: int) -> dict[str, Any]:
        found = self._local().get(pid)
        if found is None:
            return workers.metrics(pid)
        return found.session.scrape_metrics()

    def profile(self, pid: int, gc: bool) -> bytes:
        found = self._local().get(pid)
        if found is None or gc:  # the agent is called from the session's own thread
            return workers.profile(pid, gc)
        return found.session.scrape_profile()
