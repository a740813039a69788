"""One error root for everything heapspy reports to a user.

Every failure a user can meet is a subclass carrying a one-sentence message and a
distinct exit code, so scripts (and the daemon) can tell them apart; the CLI entry point
catches ``HeapspyError`` once, prints ``message`` to stderr and exits with ``exit_code``.
"""

from __future__ import annotations


class HeapspyError(Exception):
    """Base of all user-facing errors."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


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
    """--require-sampling was given and the shim cannot run in the target."""

    exit_code = 17


class ProtocolViolation(HeapspyError):
    """The agent sent something the protocol does not allow (a malformed, oversized or
    unexpected frame, a forged token): the session ended, its final dump written."""

    exit_code = 18


class TrimRefused(HeapspyError):
    """`heapspy trim` on a process whose C allocator is not glibc's, or whose agent
    could not run malloc_trim."""

    exit_code = 19
