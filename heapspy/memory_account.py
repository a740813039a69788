"""Where the target's RSS is, kept for the session: measured (``heapspy.rss.measure``) at
most every MEMORY_EVERY seconds for the native>/unexplained> rules and ``heapspy top``
(pymalloc's walk and mallinfo cost the target a little), whenever a dump is written, and
kept for the final dump, which is written after the agent has gone; and glibc's
malloc_trim with RSS before and after (``heapspy trim``).
"""

from __future__ import annotations

from typing import Any

from heapspy.channel import AgentCall
from heapspy.rss import Breakdown, measure

MEMORY_EVERY = 10.0  # seconds between RSS breakdowns for the rules and the live view
TRIM_TIMEOUT = 30.0


class MemoryAccount:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.last: Breakdown | None = None  # the last breakdown with the allocators' side
        self._at = 0.0  # when the rules or the view last had one measured

    def measure(self, call: AgentCall | None) -> Breakdown | None:
        """The breakdown now; ``call``: the agent's, None once detached (the last one
        with the allocators' side is kept, else the kernel's side alone)."""
        if call is None:
            return self.last or measure(self.pid, None)
        found = measure(self.pid, call)
        if found is not None:
            self.last = found
        return found or self.last

    def recent(self, now: float, call: AgentCall | None) -> Breakdown | None:
        """A breakdown at most MEMORY_EVERY seconds old (``now``: unix time)."""
        if now - self._at >= MEMORY_EVERY:
            self._at = now
            self.measure(call)
        return self.last

    def trim(self, call: AgentCall) -> dict[str, Any]:
        """glibc's malloc_trim(0) in the target, with RSS before and after."""
        before = self.measure(call)
        if before is None:
            return {"ok": False, "error": "the process is gone"}
        if before.allocator != "glibc":
            return {
                "ok": False,
                "error": f"the process uses {before.allocator}'s malloc, not glibc's: "
                "malloc_trim is glibc's",
            }
        reply = call("trim", timeout=TRIM_TIMEOUT)
        if not reply.get("ok"):
            return reply
        after = self.measure(call)
        return {
            "ok": True,
            "rss_before": before.rss,
            "rss_after": after.rss if after else None,
            "predicted": before.trim_estimate,
            "released": int(reply.get("trimmed", 0)),
        }
