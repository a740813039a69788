"""How the daemon words an error in its log: the config keys that would get past it.

The same core errors reach ``heapspy attach`` and the daemon's sessions; a user of the
daemon changes ``heapspy.toml``, not flags, so the facts an error carries (the setting it
is about, the settings that could help) are worded here with the keys of a ``[[watch]]``
table. The command line's wording is ``heapspy/cli/hints.py``.
"""

from __future__ import annotations

from heapspy.errors import HeapspyError, Remedy, Setting


def key_subject(setting: Setting) -> str:
    return setting.name if setting.value is None else f'{setting.name} = "{setting.value}"'


def key_remedy(remedy: Remedy) -> str | None:
    if remedy.kind == "thread":
        # No key chooses a thread: with method = "auto" the daemon's sessions aim at a
        # thread that runs Python by themselves.
        if remedy.thread is not None:
            return f"Thread {remedy.thread} is running Python."
        return None
    if remedy.kind == "ptrace_wakes_lock":
        how = 'method = "ptrace"' + ("" if remedy.nudge else " with nudge = true")
        return (
            f"Its main thread waits on a lock: {how} wakes such a wait harmlessly so that "
            "the agent starts."
        )
    if remedy.kind == "attach_timeout":
        return "Try again when the process is busy, or raise attach_timeout."
    if remedy.kind == "pep768":
        return 'On CPython 3.14+ targets use method = "pep768", which needs no ptrace.'
    if remedy.kind == "no_require_sampling":
        return "Set require_sampling = false to fall back to tracemalloc (exact, slower)."
    if remedy.kind == "listen_example":
        return 'For example listen = "127.0.0.1:9465" or listen = "/run/heapspy/http.sock"'
    if remedy.kind == "listen_token":
        return "Set listen_token_file, or listen on 127.0.0.1 / a Unix socket."
    return None  # the reports' options: not the daemon's


def render(exc: HeapspyError) -> str:
    """The error as a daemon session logs it: message, then advice naming config keys."""
    return exc.words(key_subject, key_remedy)


def worded(exc: HeapspyError) -> HeapspyError:
    """The same error (class, exit code) with its facts already in config keys: for what
    reaches the user through the command line's entry point (``heapspy daemon`` loading
    its file and starting), which would word them with flags."""
    message = exc.message if exc.subject is None else f"{key_subject(exc.subject)} {exc.predicate}"
    return type(exc)(message, hint=exc.advice(key_remedy))
