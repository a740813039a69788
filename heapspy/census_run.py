"""The censuses one session takes (``heapspy.census``): the one at attach, which runs in
the background while the session streams and is written when the agent has sent it, and
those asked for meanwhile (``heapspy census``, ``/census``), which wait for their result
while serving the agent. A `heapspy census` that comes while the census at attach runs
gets that one; a detach first asks the agent for what it has (a partial census).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from heapspy_agent import protocol

from heapspy.census import CensusCollector, CensusOptions, CensusResult, ProgressSink
from heapspy.channel import AgentCall, AgentChannel
from heapspy.errors import AgentFailed

log = logging.getLogger("heapspy")

StopAsk = Callable[[], str]  # why to stop a census ("" to go on)


class SessionCensus:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.collector: CensusCollector | None = None  # the census under way, if any
        self.sink: ProgressSink | None = None  # who hears its progress
        self.background = False  # the census at attach: written by the session when done
        self.end: Callable[[], None] | None = None  # attach's progress line goes
        self.skipped = ""  # why no census of the heap at attach was taken
        self.summary: dict[str, Any] | None = None  # the heap at attach, once known

    def run(
        self,
        channel: AgentChannel,
        options: CensusOptions,
        on_progress: ProgressSink | None,
        should_stop: StopAsk | None,
        ended: Callable[[], str],
    ) -> CensusResult:
        """Run a census in the target, serving the agent meanwhile. ``should_stop``
        returns why to stop ("" to go on): the agent then sends what it has counted, a
        partial census. ``ended``: why the session ended, if it did."""
        if self.collector is not None:
            raise AgentFailed(f"A census of process {self.pid} is already under way.")
        collector = CensusCollector(self.pid)
        self.collector, self.sink = collector, on_progress
        try:
            reply = channel.call("census", slice=options.slice, pause=options.pause)
            if not reply.get("ok"):
                raise AgentFailed(
                    f"The agent in process {self.pid} did not start a census: {reply.get('error')}."
                )
            self._wait(channel, collector, should_stop, ended)
        finally:
            self.collector = self.sink = None
        assert collector.result is not None
        return collector.result

    def at_attach(
        self,
        channel: AgentChannel,
        on_progress: ProgressSink | None,
        should_stop: StopAsk | None,
        ended: Callable[[], str],
    ) -> dict[str, Any] | None:
        """Wait for the census at attach while it runs (a `heapspy census` asked for
        one meanwhile: it gets this one); its summary, None when none runs."""
        collector = self.collector
        if not self.background or collector is None:
            return None
        self.sink = on_progress
        try:
            self._wait(channel, collector, should_stop, ended)
        finally:
            self.sink = None
        return self.summary

    def _wait(
        self,
        channel: AgentChannel,
        collector: CensusCollector,
        should_stop: StopAsk | None,
        ended: Callable[[], str],
    ) -> None:
        while collector.result is None:
            why = should_stop() if should_stop is not None and not collector.stopped_why else ""
            if why:
                collector.stopped_why = why
                channel.send(protocol.COMMAND, {"id": 0, "cmd": "census_stop"})
            answered = channel.wait(0.1)
            now = time.monotonic()
            if not answered or channel.silent(now):
                raise AgentFailed(
                    f"The census of process {self.pid} did not finish: "
                    f"{ended() or 'the agent stopped answering'}."
                )
            channel.beat(now)

    def start(
        self,
        call: AgentCall,
        options: CensusOptions,
        on_progress: ProgressSink | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> bool:
        """Start the census at attach, which runs while the session does: the session
        writes it once the agent has sent it (``summary``). ``on_progress`` hears how
        far it has got, ``on_end`` that it ended (before the session says so)."""
        if self.collector is not None:
            return False
        self.collector, self.background = CensusCollector(self.pid), True
        self.sink, self.end = on_progress, on_end
        reply = call("census", slice=options.slice, pause=options.pause)
        if not reply.get("ok"):
            self.collector, self.background = None, False
            self.sink = self.end = None
            self.skipped = f"the census could not start: {reply.get('error')}"
            log.warning("no census of the heap at attach: %s", reply.get("error"))
            return False
        return True

    def end_line(self) -> None:
        end, self.end = self.end, None
        self.sink = None
        if end is not None:
            end()

    def progress(self) -> dict[str, Any] | None:
        """The heap at attach as status shows it: the census, or how far it has got."""
        if self.summary is not None:
            return self.summary
        if self.background and self.collector is not None:
            last = asdict(self.collector.last) if self.collector.last else {}
            return {"running": True, **last}
        if self.skipped:
            return {"skipped": self.skipped}
        return None

    def on_frame(
        self,
        kind: int,
        body: dict[str, Any],
        record: Callable[[CensusResult], dict[str, Any] | None],
    ) -> None:
        """A CENSUS or CENSUS_PROGRESS frame; ``record`` writes the census at attach once
        it is complete and returns its summary."""
        collector = self.collector
        if collector is None:
            return  # a census nobody waits for: dropped
        if kind == protocol.CENSUS_PROGRESS:
            progress = collector.progress(body)
            if self.sink is not None:
                self.sink(progress)
        elif (done := collector.add(body)) is not None and self.background:
            self.collector, self.background = None, False
            self.end_line()
            self.summary = record(done)

    def stop(self, channel: AgentChannel, why: str) -> None:
        """The session ends: the census at attach, if it runs, is asked for its partial
        result, which comes before the end."""
        collector = self.collector
        if self.background and collector is not None:
            collector.stopped_why = why
            channel.send(protocol.COMMAND, {"id": 0, "cmd": "census_stop"})
            self.end_line()
