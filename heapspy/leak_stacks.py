"""The stacks a thread or task rule's dump carries: what every thread and pending asyncio
task was doing when it fired (grouped: ``heapspy.stack_groups``).

The agent is asked first (threads and tasks); it needs the GIL, which a thread busy in C
code may hold for good, so after a while py-spy reads the threads from outside instead
(tasks are then unknown).
"""

from __future__ import annotations

import logging

from heapspy_agent import schema

from heapspy.channel import AgentCall
from heapspy.stack_groups import StackDump
from heapspy.target.pyspy import thread_stacks

log = logging.getLogger("heapspy")

# How long a thread or task rule waits for the agent's stacks before asking py-spy
STACKS_TIMEOUT = 3.0
# and this much more per pending task: the agent walks them giving the GIL back as it
# goes (measured under load: 10,000 tasks 0.5-0.7 s, 100,000 tasks 3-8 s)
STACKS_PER_TASK = 1e-4


def capture_stacks(call: AgentCall, pid: int, frames: int, tasks: int = 0) -> StackDump | None:
    """Every thread's and pending asyncio task's stack, grouped, from the agent; from
    py-spy (threads only) when the agent does not answer: another thread holds the
    GIL, say. ``frames``: the session's stack depth; ``tasks``: how many are pending
    (the agent's walk takes longer). None when neither can say."""
    depth = min(frames, schema.MAX_STACK_DEPTH)
    timeout = STACKS_TIMEOUT + STACKS_PER_TASK * tasks
    reply = call("stacks", timeout=timeout, depth=depth)
    if reply.get("ok"):
        return StackDump.of_reply(reply)
    why = str(reply.get("error") or "no answer")
    found = thread_stacks(pid, depth)
    if found is None:
        log.warning("no stacks: the agent did not give them (%s), nor did py-spy", why)
        return None
    return StackDump.of_py_spy(
        found, f"the agent did not answer ({why}): threads read by py-spy; tasks unknown"
    )
