"""Asking a session's agent for the retainers of a dump's top sites (``heapspy.retainers``)
and waiting for them while serving the agent: the walk runs in the target like a census,
a slice at a time, and its answer comes as a RETAINERS frame, not as a command's reply.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from heapspy_agent import protocol

from heapspy.aggregate import Aggregator
from heapspy.channel import AgentChannel
from heapspy.retainers import RETAINERS_TIMEOUT, Retainers, choose, collect, leak_site

log = logging.getLogger("heapspy")

# the dumps that get them (besides the final one): asked for by a user, or a leak rule's
ASKED = ("on-demand", "signal")


def wanted(rule: str) -> bool:
    """Whether a dump written for ``rule`` (before the final one) finds retainers."""
    return rule in ASKED or rule.startswith("leak")


class SessionRetainers:
    """The last retainers a session found, and the agent's answer while it comes."""

    def __init__(self) -> None:
        self.last: Retainers | None = None
        self._body: dict[str, Any] | None = None

    def on_frame(self, body: dict[str, Any]) -> None:
        """A checked RETAINERS frame (one that nobody waits for is kept until the next
        request clears it)."""
        self._body = body

    def find(self, channel: AgentChannel, agg: Aggregator, leak: bool) -> Retainers | None:
        """Name the top sites' stacks to the agent and wait for its walk (stopped, and
        its partial answer taken, after RETAINERS_TIMEOUT); ``leak``: a leak rule fired,
        its site is marked. None when there is nothing to look for or it failed."""
        chosen = choose(agg)
        if not chosen:
            return None
        self._body = None
        stacks = sorted({sid for sids in chosen.values() for sid in sids})
        reply = channel.call("retainers", stacks=stacks)
        if not reply.get("ok"):
            log.info("no retainers for this dump: %s", reply.get("error"))
            return None
        deadline = time.monotonic() + RETAINERS_TIMEOUT
        stopped = False
        while self._body is None:
            now = time.monotonic()
            if now >= deadline and not stopped:  # what it found so far, marked partial
                channel.send(protocol.COMMAND, {"id": 0, "cmd": "census_stop"})
                stopped, deadline = True, now + 5.0
            elif now >= deadline or not channel.wait(0.1) or channel.silent(now):
                log.info("no retainers for this dump: the agent did not answer")
                return None
            channel.beat(now)
        body, self._body = self._body, None
        self.last = collect(body, chosen, leak_site(agg) if leak else None)
        return self.last
