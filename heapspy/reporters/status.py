"""The live sessions of this user: which targets are profiled, by whom, and how.

Every session keeps a lock file and a control socket in the runtime directory
(``registry``); a lock file whose owner is gone is stale and skipped. Each live owner is
asked for its status over its control socket, with a short timeout, so one slow or
stuck owner shows as "not answering" instead of hanging the listing.

``Status`` renders them: a table for people, a list of objects (sorted keys) for scripts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from heapspy import control
from heapspy.census import census_note
from heapspy.errors import HeapspyError, NoSession
from heapspy.printable import printable
from heapspy.registry import Holder, read_holder, runtime_dir
from heapspy.reporters.base import Rendering
from heapspy.rss import Breakdown, format_breakdown, memory_of
from heapspy.sampling import SAMPLED, read_sampling
from heapspy.units import format_age, format_bytes, size_text


@dataclass(frozen=True)
class SessionStatus:
    """One live session; ``status`` is what its owner said (empty if it did not answer)."""

    target_pid: int
    holder: Holder | None
    status: dict[str, Any]
    error: str = ""
    memory: Breakdown | None = None  # asked for one PID only: it costs the target a walk


def _targets() -> list[int]:
    return sorted(int(p.stem) for p in runtime_dir().glob("*.lock") if p.stem.isdigit())


def session_status(pid: int, timeout: float = 2.0) -> SessionStatus | None:
    """The session holding ``pid``, or None when there is none."""
    holder = read_holder(pid)
    try:
        reply = control.request(pid, "status", timeout=timeout)
    except NoSession:
        return None
    except (OSError, HeapspyError) as exc:  # there, but slow or broken: still a holder
        return SessionStatus(pid, holder, {}, f"not answering ({exc})")
    return SessionStatus(pid, holder, dict(reply.get("status") or {}))


def list_sessions(pids: list[int] | None = None) -> list[SessionStatus]:
    found = []
    for pid in _targets() if pids is None else pids:
        s = session_status(pid)
        if s is not None:
            found.append(s)
    return found


@dataclass(frozen=True)
class Status(Rendering):
    """The live sessions asked for (``heapspy status [PID]``)."""

    sort_keys: ClassVar[bool] = True

    sessions: tuple[SessionStatus, ...]

    def text(self) -> str:
        return render_text(self.sessions)

    def to_json(self) -> list[dict[str, Any]]:
        return to_json(self.sessions)


def build_status(pid: int | None = None) -> Status:
    """Every live session of this user, or the one holding ``pid`` (NoSession if none)."""
    sessions = list_sessions(None if pid is None else [pid])
    if pid is not None and not sessions:
        raise NoSession(f"No heapspy session holds process {pid}.")
    if pid is not None and not sessions[0].error:
        sessions = [replace(sessions[0], memory=_memory(pid))]
    return Status(tuple(sessions))


def _memory(pid: int) -> Breakdown | None:
    """Where the target's RSS is now, from its session (None if it cannot say)."""
    try:
        reply = control.request(pid, "memory", timeout=10.0)
    except (OSError, HeapspyError):
        return None
    return memory_of(reply) if reply.get("ok") else None


def _rate(st: dict[str, Any]) -> str:
    sampling = read_sampling(st)
    if sampling.mode != SAMPLED:
        return sampling.mode  # exact, totals
    return size_text(sampling.rate)


NO_ALLOCATOR = "calls no allocator function"  # Cargo-free/native_got.c's reason


def _native_lines(pid: int, native: Any) -> list[str]:
    """What native mode redirected and skipped (the agent's list, checked by the schema)."""
    if not isinstance(native, dict):
        return []
    redirected = native.get("redirected") or []
    skipped = native.get("skipped") or []
    lines = [
        f"{pid}: native allocations: {len(redirected)} libraries redirected, "
        f"{len(skipped)} skipped" + (f", {native['more']} more" if native.get("more") else "")
    ]
    lines += [f"{pid}:   redirected {printable(path)}" for path in redirected]
    quiet = [path for path, why in skipped if why == NO_ALLOCATOR]  # most extension modules
    lines += [
        f"{pid}:   skipped {printable(path)}: {printable(why)}"
        for path, why in skipped
        if why != NO_ALLOCATOR
    ]
    if quiet:
        lines.append(f"{pid}:   {len(quiet)} more call no allocator function (--format json)")
    lines += [f"{pid}:   note: {printable(note)}" for note in native.get("notes") or []]
    return lines


def render_text(sessions: Sequence[SessionStatus], now: float | None = None) -> str:
    if not sessions:
        return "No heapspy sessions (for this user).\n"
    now = time.time() if now is None else now
    head = ("TARGET", "HOLDER", "PYTHON", "MODE", "RATE", "UP", "RSS", "LIVE HEAP", "DUMPS")
    rows = [head]
    for s in sessions:
        st = s.status
        holder = str(st.get("holder_pid") or (s.holder.holder_pid if s.holder else "?"))
        if s.error:
            rows.append((str(s.target_pid), holder, "", "", "", "", "", "", s.error))
            continue
        rss = st.get("rss")
        rows.append(
            (
                str(s.target_pid),
                holder,
                str(st.get("python", "?")),
                f"{st.get('mode', '?')}/{st.get('method', '?')}",
                _rate(st),
                format_age(now - float(st.get("started", now))),
                format_bytes(int(rss)) if isinstance(rss, int) else "-",
                format_bytes(int(st.get("heap_estimate", 0))),
                f"{st.get('dumps', 0)} in {st.get('dump_dir', '?')}",
            )
        )
    cells = [[printable(cell) for cell in row] for row in rows]  # one line, whatever it holds
    widths = [max(len(r[i]) for r in cells) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in cells]
    for s in sessions:  # the heap before the attach (heapspy census), beside the samples
        found = s.status.get("census")
        if isinstance(found, dict):
            since = s.status.get("heap_estimate")
            lines.append(f"{s.target_pid}: " + printable(census_note(found, int(since or 0))))
    for s in sessions:  # native allocations: which libraries' entries were redirected
        lines.extend(_native_lines(s.target_pid, s.status.get("native")))
    for s in sessions:  # what a session could not keep of what its agent sent
        dropped = s.status.get("dropped_stacks")
        if isinstance(dropped, int) and dropped > 0:
            lines.append(
                f"{s.target_pid}: {dropped} stacks dropped, beyond the session's limits "
                "(heapspy/aggregate.py)"
            )
    for s in sessions:  # who allocates: the top threads (exact) and tasks (sampled)
        lines.extend(f"{s.target_pid}: {line}" for line in labels_lines(s.status.get("labels")))
    for s in sessions:  # quiet intervals merged: what a reader may find up to that old
        line = quiet_line(s.status)
        if line:
            lines.append(f"{s.target_pid}: {line}")
    for s in sessions:  # samples the agent could not give a stack (its table was full)
        overflow = s.status.get("overflow_samples")
        if isinstance(overflow, int) and overflow > 0:
            lines.append(f"{s.target_pid}: [stack table full: {overflow} samples]")
    for s in sessions:
        if s.memory is not None:
            lines.extend(format_breakdown(s.memory))
    return "\n".join(line.rstrip() for line in lines) + "\n"


def quiet_line(st: dict[str, Any]) -> str | None:
    """With idle_report on, the agent merges quiet collections into one report: say how
    many, and how old figures that come only with a report (the live heap in `top`, a
    scrape without gc=1) may be; None when it is off or the status does not say."""
    idle, intervals, reports = st.get("idle_report"), st.get("intervals"), st.get("reports")
    if not isinstance(idle, (int, float)) or isinstance(idle, bool) or not idle > 0:
        return None
    if type(intervals) is not int or type(reports) is not int:
        return None
    return (
        f"quiet intervals merged (idle_report {idle:g}s): {reports:,} reports for "
        f"{intervals:,} intervals; figures sent only with a report may be up to {idle:g}s old"
    )


def _named_sizes(rows: Any, name_at: int, size_at: int) -> str:
    """``name size, ...`` from a status reply's rows, each checked (a holder of another
    user's session may send anything)."""
    parts = []
    for row in rows if isinstance(rows, list) else []:
        if not (isinstance(row, list) and len(row) > max(name_at, size_at)):
            continue
        name, size = row[name_at], row[size_at]
        if isinstance(name, str) and isinstance(size, int) and size > 0:
            parts.append(f"{printable(name)} {format_bytes(size)}")
    return ", ".join(parts)


def labels_lines(labels: Any) -> list[str]:
    """The status lines of ``label_totals.labels_summary``: the threads that allocated the
    most (exact), the tasks and coroutines holding the most live memory (estimates)."""
    if not isinstance(labels, dict):
        return []
    lines = []
    threads = _named_sizes(labels.get("thread_alloc"), 2, 1)
    if threads:
        lines.append(f"allocated by thread: {threads}")
    agent = labels.get("agent_alloc")
    if type(agent) is int and agent > 0:
        lines.append(
            f"allocated by heapspy's agent: {format_bytes(agent)} (its census and reports,"
            " not the target's work; not in the threads above)"
        )
    for key in ("task", "coro"):
        live = _named_sizes(labels.get(key), 0, 2)
        if live:
            lines.append(f"live by {key}: {live}")
    return lines


def to_json(sessions: Sequence[SessionStatus]) -> list[dict[str, Any]]:
    out = []
    for s in sessions:
        item: dict[str, Any] = {"target_pid": s.target_pid, **s.status}
        if s.holder is not None:
            item.setdefault("holder_pid", s.holder.holder_pid)
            item["holder_command"] = s.holder.command
        if s.error:
            item["error"] = s.error
        if s.memory is not None:
            item["memory"] = s.memory.to_json()
        out.append(item)
    return out
