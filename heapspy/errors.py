"""One error root for everything heapspy reports to a user.

Every failure a user can meet is a subclass carrying a one-sentence message and a
distinct exit code, so scripts (and the daemon) can tell them apart; the CLI entry point
catches ``HeapspyError`` once, prints it to stderr and exits with ``exit_code``.

Core errors say what happened and never name a command-line flag: heapspy is driven by
flags (``heapspy attach``) and by config keys (the daemon), and the same error reaches
both. What the user could change is carried as facts instead: ``subject`` (the setting an
error is about) and ``remedies`` (settings that would get past it, with the values that
matter, such as the thread that runs Python). Each front end words them in its own terms
(``heapspy/cli/hints.py`` with flags, ``heapspy/daemon/hints.py`` with config keys);
``str()`` words them plainly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

RemedyKind = Literal[
    "thread",  # aim the PEP 768 request at another thread (``thread``: one that runs Python)
    "ptrace_wakes_lock",  # the main thread waits on a lock: ptrace with the nudge wakes it
    "attach_timeout",  # wait longer for the agent to start
    "pep768",  # inject with PEP 768 (no ptrace) on a 3.14+ target
    "no_require_sampling",  # allow the fallback to tracemalloc
    "format_text",  # ask for text output
    "sample_index",  # choose which sample type to compare
    "listen_example",  # what a listening address looks like
    "listen_token",  # give a token file, or listen on loopback / a Unix socket
]


@dataclass(frozen=True)
class Remedy:
    """A setting the user could change to get past an error, as facts, not words."""

    kind: RemedyKind
    thread: int | None = None  # "thread": a native TID seen running Python, if any
    nudge: bool = True  # "ptrace_wakes_lock": whether the nudge is on already


@dataclass(frozen=True)
class Setting:
    """The setting an error is about (an ``AttachConfig`` field), and its value if any."""

    name: Literal["thread", "method", "top"]
    value: str | None = None


# How one front end words settings: the subject of a message, and each remedy (None: it
# has nothing to offer for that one).
SubjectWords = Callable[[Setting], str]
RemedyWords = Callable[[Remedy], "str | None"]


def plain_subject(setting: Setting) -> str:
    return setting.name if setting.value is None else f"{setting.name} {setting.value}"


def plain_remedy(remedy: Remedy) -> str | None:
    """Remedies in words that name no flag and no config key (``str()`` of an error)."""
    if remedy.kind == "thread":
        if remedy.thread is not None:
            return f"Thread {remedy.thread} is running Python: aim the request at it."
        return "Aim the request at another thread that runs Python."
    if remedy.kind == "ptrace_wakes_lock":
        how = "ptrace injection" + ("" if remedy.nudge else " with the nudge on")
        return (
            f"Its main thread waits on a lock: {how} wakes such a wait harmlessly so that "
            "the agent starts."
        )
    if remedy.kind == "attach_timeout":
        return "Try again when the process is busy, or allow a longer attach timeout."
    if remedy.kind == "pep768":
        return "On CPython 3.14+ targets use PEP 768 injection, which needs no ptrace."
    if remedy.kind == "no_require_sampling":
        return "Allow the fallback to tracemalloc (exact, slower)."
    if remedy.kind == "format_text":
        return "Ask for text output."
    if remedy.kind == "sample_index":
        return "Choose the sample type to compare."
    if remedy.kind == "listen_example":
        return "For example 127.0.0.1:9465 or /run/heapspy/http.sock."
    return "Give a token file, or listen on 127.0.0.1 / a Unix socket."


class HeapspyError(Exception):
    """Base of all user-facing errors.

    ``message`` says what happened; with a ``subject`` it is ``predicate`` after the
    subject's plain name. ``hint`` is advice that holds for every front end.
    """

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        remedies: tuple[Remedy, ...] = (),
        subject: Setting | None = None,
    ) -> None:
        self.predicate = message
        self.subject = subject
        self.hint = hint
        self.remedies = remedies
        self.message = message if subject is None else f"{plain_subject(subject)} {message}"
        super().__init__(self.message)

    def words(
        self, subject: SubjectWords = plain_subject, remedy: RemedyWords = plain_remedy
    ) -> str:
        """The whole error, its settings worded by one front end."""
        message = (
            self.message if self.subject is None else f"{subject(self.subject)} {self.predicate}"
        )
        advice = self.advice(remedy)
        return message if not advice else f"{message}\n{advice}"

    def advice(self, remedy: RemedyWords = plain_remedy) -> str | None:
        """The hint and the remedies, worded by one front end (None: nothing to advise)."""
        parts = [self.hint] if self.hint else []
        parts += [text for r in self.remedies if (text := remedy(r))]
        return " ".join(parts) or None

    def __str__(self) -> str:
        return self.words()


class UsageError(HeapspyError):
    """Bad input on the command line or in a config file."""

    exit_code = 2


class NoSuchProcess(HeapspyError):
    exit_code = 3


class NotPython(HeapspyError):
    exit_code = 4


class UnsupportedPython(HeapspyError):
    """Python 2, or a Python 3 older than 3.8."""

    exit_code = 5


class UnrecognisedPython(HeapspyError):
    """A CPython whose layout heapspy cannot read (stripped, unknown offsets, odd build)."""

    exit_code = 6


class PermissionDenied(HeapspyError):
    exit_code = 7


class RemoteDebugDisabled(HeapspyError):
    exit_code = 8


class TargetExited(HeapspyError):
    exit_code = 9


class TracerAttached(HeapspyError):
    """Another tracer (gdb, strace, py-spy) holds the target."""

    exit_code = 10


class AgentTimeout(HeapspyError):
    """The injected agent never acknowledged."""

    exit_code = 11


class AlreadyAttached(HeapspyError):
    exit_code = 12


class NoSession(HeapspyError):
    """No live heapspy session holds the target."""

    exit_code = 13


class AgentFailed(HeapspyError):
    """The agent started but reported an error."""

    exit_code = 14


class InjectionFailed(HeapspyError):
    """Injection went wrong in a way the target survived unchanged."""

    exit_code = 15


class DumpError(HeapspyError):
    exit_code = 16


class SamplingUnavailable(HeapspyError):
    """Sampling was required (no fallback to tracemalloc) and the shim cannot run in the
    target."""

    exit_code = 17


class ProtocolViolation(HeapspyError):
    """The agent sent something the protocol does not allow (a malformed, oversized or
    unexpected frame, a forged token): the session ended, its final dump written."""

    exit_code = 18


class TrimRefused(HeapspyError):
    """`heapspy trim` on a process whose C allocator is not glibc's, or whose agent
    could not run malloc_trim."""

    exit_code = 19
