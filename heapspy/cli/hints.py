"""How the command line words an error: the flags that would get past it.

Core errors (``heapspy.errors``) say what happened and carry, as facts, the setting they
are about and the settings that could help; this is the one place that turns those into
``heapspy attach`` flags. The daemon words the same facts with its config keys
(``heapspy/daemon/hints.py``). The exit code stays the error's own (``exit_code``): the
daemon's supervisor reads its sessions' exit statuses, scripts read ours, both alike.
"""

from __future__ import annotations

from heapspy.errors import HeapspyError, Remedy, Setting


def flag_subject(setting: Setting) -> str:
    flag = "--" + setting.name.replace("_", "-")
    return flag if setting.value is None else f"{flag} {setting.value}"


def flag_remedy(remedy: Remedy) -> str | None:
    if remedy.kind == "thread":
        if remedy.thread is not None:
            return f"Thread {remedy.thread} is running Python: try --thread {remedy.thread}."
        return "Use --thread TID to aim at another thread that runs Python."
    if remedy.kind == "ptrace_wakes_lock":
        how = "--method ptrace" if remedy.nudge else "--method ptrace without --no-nudge"
        return (
            f"Its main thread waits on a lock: {how} wakes such a wait harmlessly so that "
            "the agent starts."
        )
    if remedy.kind == "attach_timeout":
        return "Try again when the process is busy, or raise --attach-timeout."
    if remedy.kind == "pep768":
        return "On CPython 3.14+ targets use --method pep768, which needs no ptrace."
    if remedy.kind == "no_require_sampling":
        return "Drop --require-sampling to fall back to tracemalloc (exact, slower)."
    if remedy.kind == "format_text":
        return "Use --format text."
    if remedy.kind == "sample_index":
        return "Choose one with --sample-index."
    if remedy.kind == "listen_example":
        return "For example --listen 127.0.0.1:9465 or --listen /run/heapspy/http.sock"
    return "Give --listen-token-file FILE, or listen on 127.0.0.1 / a Unix socket."


def render(exc: HeapspyError) -> str:
    """The error as ``heapspy`` prints it: message, then advice naming flags."""
    return exc.words(flag_subject, flag_remedy)
