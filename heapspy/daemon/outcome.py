"""What to do about a target once its session process has exited.

The child's exit code is the error class it met (``heapspy/errors.py``); together with
whether the target still lives and whether a user ended the session (the child's
"ended" event, never its text), that decides between
forgetting the target, never trying it again, trying again after a backoff, and leaving
it alone while it lives.
"""

from __future__ import annotations

import enum

from heapspy.errors import (
    AlreadyAttached,
    NoSuchProcess,
    NotPython,
    PermissionDenied,
    ProtocolViolation,
    RemoteDebugDisabled,
    SamplingUnavailable,
    TargetExited,
    UnrecognisedPython,
    UnsupportedPython,
    UsageError,
)


class Outcome(enum.Enum):
    FORGET = "forget"  # the target is gone
    NEVER = "never"  # it cannot be profiled as it is: never try this process again
    RETRY = "retry"  # try again after a backoff
    BUSY = "busy"  # another heapspy holds it: look again later, quietly
    LEFT = "left"  # a user detached it by hand: leave it alone while it lives


# Failures that trying again cannot change for the same process.
NEVER_RETRIED = frozenset(
    e.exit_code
    for e in (
        UsageError,  # e.g. method = "pep768" for a 3.12 target
        NotPython,
        UnsupportedPython,
        UnrecognisedPython,
        PermissionDenied,
        RemoteDebugDisabled,
        SamplingUnavailable,
        ProtocolViolation,  # its agent is not ours: a hostile target
    )
)
GONE = frozenset((NoSuchProcess.exit_code, TargetExited.exit_code))


def decide(code: int, target_alive: bool, by_user: bool) -> Outcome:
    """``code``: the child's exit status (negative: killed by that signal); ``by_user``:
    `heapspy detach` ended the session."""
    if code in GONE or not target_alive:
        return Outcome.FORGET
    if code == 0:
        if by_user:
            return Outcome.LEFT
        return Outcome.RETRY  # the session ended while the target lives (agent switched off)
    if code in NEVER_RETRIED:
        return Outcome.NEVER
    if code == AlreadyAttached.exit_code:
        return Outcome.BUSY
    return Outcome.RETRY  # agent timeout, another tracer, injection failure, a crash
