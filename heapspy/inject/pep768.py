"""PEP 768 (CPython 3.14+): ask a running interpreter to execute a Python file.

This is the protocol behind ``sys.remote_exec``, implemented from outside the target with
``process_vm_readv``/``process_vm_writev`` so that heapspy itself may run on any Python
3.9+. Nothing is stopped or traced: we only read and write the target's memory.

1. ``_PyRuntime`` (the ``.PyRuntime`` section, or the ``_PyRuntime`` symbol, of the ELF
   image mapped in the target) starts with ``_Py_DebugOffsets``: the cookie ``xdebugpy``,
   ``PY_VERSION_HEX``, ``free_threaded`` and the offsets of the fields a debugger needs.
   Where each field sits *inside* that table changes between minor versions, so the
   layout is looked up by the version the table itself declares (``_LAYOUTS``).
2. The head of the interpreter list may be a subinterpreter: walk ``next`` to id 0.
3. The main interpreter's ``config.remote_debug`` must be 1 (``-X disable-remote-debug``
   and ``PYTHON_DISABLE_REMOTE_DEBUG`` set it to 0).
4. In the chosen thread state (the main thread's, or the one whose ``native_thread_id``
   is the requested TID): write the script path and a NUL into
   ``remote_debugger_support.debugger_script_path``, then ``debugger_pending_call = 1``
   (int32), then OR ``_PY_EVAL_PLEASE_STOP_BIT`` (bit 5) into ``eval_breaker``.
5. At its next eval-breaker check that thread clears ``debugger_pending_call``, copies the
   path, opens the file and runs it in a fresh namespace. A thread blocked in C (sleep,
   ``accept()``, ``select``) checks only once the call returns: aim at another thread
   that runs Python (``thread_id``) to be served promptly.

Races we cannot close from outside (the target updates these words with atomics, we can
only read and write them) and why they are harmless:

- ``eval_breaker``: we rewrite only its low byte. If the target flips another bit of that
  byte between our read and write, a GIL drop request or the signals-pending bit may be
  set again (a spurious, harmless check) or lost until the next request or signal.
  CPython's own ``sys.remote_exec`` rewrites the whole word and has the same window.
- A thread state is freed when its thread exits. Before each write we check that the
  thread state is still in the interpreter's list with the same native TID; a thread
  exiting between that check and the write (microseconds) is not covered, exactly as in
  CPython's client. The main thread's state lives until the interpreter finalises.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass

from heapspy.errors import (
    HeapspyError,
    InjectionFailed,
    Remedy,
    RemoteDebugDisabled,
    TargetExited,
    UnrecognisedPython,
    UsageError,
)
from heapspy.target.elf import ElfImage
from heapspy.target.maps import read_maps
from heapspy.target.memory import RemoteMemory
from heapspy.target.process import PythonTarget, check_same_process

COOKIE = b"xdebugpy"
EVAL_PLEASE_STOP_BIT = 1 << 5  # _PY_EVAL_PLEASE_STOP_BIT in Include/internal/pycore_ceval.h
MAX_INTERPRETERS = 4096  # bound on list walks, in case we read garbage
MAX_THREADS = 1 << 16

# Byte position of each field we use inside _Py_DebugOffsets, and the table's size, per
# minor version (Include/internal/pycore_debug_offsets.h of that branch). Each entry
# below is an offset into a runtime structure (PyInterpreterState, PyThreadState, ...).
# 3.14: the layout frozen at 3.14.0b1; checked against Debian's 3.14.10 (760 bytes,
# debugger_support at 712). To add 3.15: copy the entry, recount the positions from that
# branch's header, and check one build with `tests/test_pep768.py`.
_LAYOUTS: dict[tuple[int, int], dict[str, int]] = {
    (3, 14): {
        "_table_size": 760,
        "_min_hexversion": 0x030E00B1,  # alphas had other layouts
        "runtime_size": 24,
        "runtime_finalizing": 32,
        "runtime_interpreters_head": 40,
        "interp_size": 48,
        "interp_id": 56,
        "interp_next": 64,
        "interp_threads_head": 72,
        "interp_threads_main": 80,
        "tstate_size": 176,
        "tstate_next": 192,
        "tstate_native_thread_id": 224,
        "dbg_eval_breaker": 712,
        "dbg_remote_debugger_support": 720,
        "dbg_remote_debugging_enabled": 728,
        "dbg_debugger_pending_call": 736,
        "dbg_debugger_script_path": 744,
        "dbg_debugger_script_path_size": 752,
    },
}


@dataclass(frozen=True)
class DebugOffsets:
    """The fields of one target's ``_Py_DebugOffsets`` that remote execution needs."""

    hexversion: int
    runtime_size: int
    finalizing: int
    interpreters_head: int
    interp_size: int
    interp_id: int
    interp_next: int
    threads_head: int
    threads_main: int
    tstate_size: int
    tstate_next: int
    native_thread_id: int
    eval_breaker: int
    remote_debugger_support: int
    remote_debugging_enabled: int
    pending_call: int
    script_path: int
    script_path_size: int

    @property
    def version_text(self) -> str:
        v = self.hexversion
        return f"{v >> 24}.{(v >> 16) & 0xFF}.{(v >> 8) & 0xFF}"


def parse_debug_offsets(table: bytes, *, where: str = "the target") -> DebugOffsets:
    """Validate and decode a ``_Py_DebugOffsets`` table read from ``_PyRuntime``.

    Raises ``UnrecognisedPython`` for a wrong cookie, a free-threaded build, a version we
    have no layout for, or values that cannot be right.
    """
    if table[:8] != COOKIE:
        raise UnrecognisedPython(
            f"{where}: _PyRuntime does not start with the debug cookie {COOKIE.decode()!r} "
            f"(found {table[:8]!r}); this CPython build is not one heapspy can read."
        )
    hexversion, free_threaded = struct.unpack_from("<QQ", table, 8)
    major, minor = hexversion >> 24, (hexversion >> 16) & 0xFF
    if free_threaded:
        raise UnrecognisedPython(
            f"{where} runs a free-threaded CPython {major}.{minor}t; heapspy supports only "
            "the default (GIL) build."
        )
    layout = _LAYOUTS.get((major, minor))
    if layout is None:
        known = ", ".join(f"{a}.{b}" for a, b in sorted(_LAYOUTS))
        raise UnrecognisedPython(
            f"{where} runs CPython {major}.{minor} (debug offsets version {hexversion:#x}); "
            f"this heapspy knows the remote-debugging layout of {known} only.",
            hint="Upgrade heapspy.",
        )
    if hexversion < layout["_min_hexversion"]:
        raise UnrecognisedPython(
            f"{where} runs a pre-release CPython ({hexversion:#x}) whose debug offsets "
            f"differ from the {major}.{minor} release; use a {major}.{minor} beta or later."
        )
    if len(table) < layout["_table_size"]:
        raise ValueError(f"need {layout['_table_size']} bytes of _Py_DebugOffsets")

    def field(name: str) -> int:
        return int(struct.unpack_from("<Q", table, layout[name])[0])

    offsets = DebugOffsets(
        hexversion=hexversion,
        runtime_size=field("runtime_size"),
        finalizing=field("runtime_finalizing"),
        interpreters_head=field("runtime_interpreters_head"),
        interp_size=field("interp_size"),
        interp_id=field("interp_id"),
        interp_next=field("interp_next"),
        threads_head=field("interp_threads_head"),
        threads_main=field("interp_threads_main"),
        tstate_size=field("tstate_size"),
        tstate_next=field("tstate_next"),
        native_thread_id=field("tstate_native_thread_id"),
        eval_breaker=field("dbg_eval_breaker"),
        remote_debugger_support=field("dbg_remote_debugger_support"),
        remote_debugging_enabled=field("dbg_remote_debugging_enabled"),
        pending_call=field("dbg_debugger_pending_call"),
        script_path=field("dbg_debugger_script_path"),
        script_path_size=field("dbg_debugger_script_path_size"),
    )
    _sanity_check(offsets, where)
    return offsets


def _sanity_check(o: DebugOffsets, where: str) -> None:
    """Refuse tables whose values cannot describe a real interpreter (a bad layout entry)."""
    support_end = o.remote_debugger_support + o.script_path + o.script_path_size
    checks = [
        0 < o.interpreters_head + 8 <= o.runtime_size,
        o.finalizing + 8 <= o.runtime_size,
        o.interp_id + 8 <= o.interp_size,
        o.interp_next + 8 <= o.interp_size,
        o.threads_head + 8 <= o.interp_size,
        o.threads_main + 8 <= o.interp_size,
        o.remote_debugging_enabled + 4 <= o.interp_size,
        o.tstate_next + 8 <= o.tstate_size,
        o.native_thread_id + 8 <= o.tstate_size,
        o.eval_breaker + 8 <= o.tstate_size,
        o.pending_call + 4 <= o.script_path,
        16 <= o.script_path_size <= 4096,
        support_end <= o.tstate_size,
        o.runtime_size < 1 << 24 and o.interp_size < 1 << 24 and o.tstate_size < 1 << 20,
    ]
    if not all(checks):
        raise UnrecognisedPython(
            f"{where}: the debug offsets of CPython {o.version_text} do not make sense "
            "to this heapspy (unexpected layout).",
            hint="Upgrade heapspy, or report this interpreter build.",
        )


@dataclass(frozen=True)
class ThreadState:
    address: int
    native_thread_id: int


class RemoteRuntime:
    """A target's ``_PyRuntime``, read through its debug offsets."""

    def __init__(self, target: PythonTarget) -> None:
        self.target = target
        self.pid = target.pid
        self.mem = RemoteMemory(target.pid)
        self.address = _find_pyruntime(target)
        self.where = f"Process {target.pid} (Python {target.version_text})"
        table_size = max(int(layout["_table_size"]) for layout in _LAYOUTS.values())
        self.offsets = parse_debug_offsets(self.read(self.address, table_size), where=self.where)
        found = ((self.offsets.hexversion >> 24), (self.offsets.hexversion >> 16) & 0xFF)
        if found != tuple(target.version):
            raise UnrecognisedPython(
                f"{self.where}: its debug offsets say Python {found[0]}.{found[1]}."
            )

    def read(self, addr: int, size: int) -> bytes:
        try:
            return self.mem.read(addr, size)
        except OSError as exc:  # EFAULT: a pointer we followed leads nowhere
            raise UnrecognisedPython(
                f"{self.where}: cannot read {size} bytes at {addr:#x} ({exc.strerror or exc}); "
                "its interpreter state does not look as expected."
            ) from None

    def ptr(self, addr: int) -> int:
        return int(struct.unpack("<Q", self.read(addr, 8))[0])

    def i32(self, addr: int) -> int:
        return int(struct.unpack("<i", self.read(addr, 4))[0])

    def i64(self, addr: int) -> int:
        return int(struct.unpack("<q", self.read(addr, 8))[0])

    def main_interpreter(self) -> int:
        """Address of the interpreter with id 0 (the list head may be a subinterpreter)."""
        o = self.offsets
        if self.ptr(self.address + o.finalizing):
            raise TargetExited(f"{self.where} is shutting down.")
        interp = self.ptr(self.address + o.interpreters_head)
        for _ in range(MAX_INTERPRETERS):
            if interp == 0:
                break
            if self.i64(interp + o.interp_id) == 0:
                return interp
            interp = self.ptr(interp + o.interp_next)
        raise InjectionFailed(
            f"{self.where} has no main interpreter yet (still starting up?).",
            hint="Try again in a moment.",
        )

    def remote_debugging_enabled(self, interp: int) -> bool:
        return self.i32(interp + self.offsets.remote_debugging_enabled) == 1

    def thread_states(self, interp: int) -> list[ThreadState]:
        """The interpreter's thread states, oldest first (the list head is the newest)."""
        o = self.offsets
        found = []
        tstate = self.ptr(interp + o.threads_head)
        for _ in range(MAX_THREADS):
            if tstate == 0:
                break
            found.append(ThreadState(tstate, self.ptr(tstate + o.native_thread_id)))
            tstate = self.ptr(tstate + o.tstate_next)
        found.reverse()
        return found

    def main_thread_state(self, interp: int) -> ThreadState | None:
        tstate = self.ptr(interp + self.offsets.threads_main)
        if tstate == 0:
            return None
        return ThreadState(tstate, self.ptr(tstate + self.offsets.native_thread_id))


def _find_pyruntime(target: PythonTarget) -> int:
    maps = read_maps(target.pid)
    if not maps:
        raise TargetExited(f"Process {target.pid} exited.")
    if not any(m.path == target.image_path and m.offset == 0 for m in maps):
        raise TargetExited(f"Process {target.pid} no longer maps {target.image_path}.")
    image = ElfImage(target.pid, maps, target.image_path)
    try:
        section = image.section(".PyRuntime")
        if section is not None:
            return section[0]
        address = image.symbol("_PyRuntime")
    except OSError as exc:
        raise UnrecognisedPython(
            f"Process {target.pid}: cannot open {target.image_path} ({exc.strerror or exc})."
        ) from None
    if address is None:
        raise UnrecognisedPython(
            f"Process {target.pid}: {target.image_path} has neither a .PyRuntime section nor "
            "a _PyRuntime symbol, so heapspy cannot find the interpreter's state."
        )
    return address


def _tid_list(threads: list[ThreadState], main: ThreadState | None) -> str:
    parts = [
        f"{t.native_thread_id}{' (main)' if main and t.address == main.address else ''}"
        for t in threads
    ]
    return ", ".join(parts) if parts else "none"


def python_thread_ids(target: PythonTarget) -> list[int]:
    """Native TIDs of the main interpreter's Python threads, main thread first.

    These are the TIDs accepted by ``request_exec(..., thread_id=)`` (``AttachConfig.thread``).
    """
    runtime = RemoteRuntime(target)
    interp = runtime.main_interpreter()
    threads = runtime.thread_states(interp)
    main = runtime.main_thread_state(interp)
    if main is not None:
        threads.sort(key=lambda t: t.address != main.address)
    return [t.native_thread_id for t in threads]


class RemoteExecRequest:
    """One script-execution request written into a target thread's state.

    ``pending()`` is true until the target takes the request (it clears
    ``debugger_pending_call`` just before opening the file). Taking it does not mean the
    script ran: a missing or unreadable file is reported only on the target's stderr, so
    the script itself must acknowledge (heapspy's bootstrap connects back).
    """

    def __init__(
        self, runtime: RemoteRuntime, interp: int, tstate: ThreadState, path: bytes
    ) -> None:
        self._runtime = runtime
        self._interp = interp
        self.pid = runtime.pid
        self.thread = tstate
        self.script_path = os.fsdecode(path)
        self._path = path
        o = runtime.offsets
        support = tstate.address + o.remote_debugger_support
        self._pending_addr = support + o.pending_call
        self._path_addr = support + o.script_path
        self.written_at = time.monotonic()
        self.cancelled = False

    @property
    def thread_id(self) -> int:
        """Native TID of the thread that will run the script."""
        return self.thread.native_thread_id

    def _thread_alive(self) -> bool:
        """The thread state is still in the interpreter's list (not freed, not reused)."""
        try:
            return self.thread in self._runtime.thread_states(self._interp)
        except (TargetExited, UnrecognisedPython):  # gone, or its lists are being torn down
            return False

    def pending(self) -> bool:
        """True while the request waits to be taken (False once taken, cancelled, or the
        thread or the process is gone)."""
        if self.cancelled or not self._thread_alive():
            return False
        try:
            return self._runtime.i32(self._pending_addr) != 0
        except (TargetExited, UnrecognisedPython):
            return False

    def wait_taken(self, timeout: float, interval: float = 0.0005) -> bool:
        """Poll until the target takes the request; False on timeout (still pending)."""
        deadline = time.monotonic() + timeout
        while self.pending():
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)
        return True

    def cancel(self) -> bool:
        """Withdraw the request if the target has not taken it yet.

        Returns True when the script is certain not to run from this request, False when
        the target took it first (the script may be starting: treat a late connection from
        it as expected and refuse it). Order matters: the target clears the flag and
        *then* copies the path, and skips an empty path; so we first blank the path's
        first byte (a take from then on runs nothing), then check and clear the flag.
        """
        if self.cancelled:
            return True
        try:
            if not self._thread_alive():
                self.cancelled = True
                return True  # thread (or process) gone: nothing will run this request
            rt = self._runtime
            check_same_process(rt.target)  # a newcomer on the pid: it never had our request
            if rt.i32(self._pending_addr) == 0:
                return False
            current = rt.read(self._path_addr, len(self._path) + 1)
            if current != self._path + b"\0":
                # Someone else (another debugger) has written over our request since.
                return False
            rt.mem.write(self._path_addr, b"\0")
            if rt.i32(self._pending_addr) == 0:
                # Taken between our first check and the blanking: whether it copied the
                # path before or after, we cannot tell.
                return False
            rt.mem.write(self._pending_addr, struct.pack("<i", 0))
        except TargetExited:
            pass  # nothing left to run it
        except (UnrecognisedPython, OSError):
            return False  # could not read or write: make no promise
        self.cancelled = True
        return True

    def __repr__(self) -> str:
        return (
            f"RemoteExecRequest(pid={self.pid}, thread_id={self.thread_id}, "
            f"script_path={self.script_path!r})"
        )


def _refuse_if_disabled(runtime: RemoteRuntime, interp: int) -> None:
    if not runtime.remote_debugging_enabled(interp):
        raise RemoteDebugDisabled(
            f"Process {runtime.target.pid} has remote debugging disabled: it was started "
            "with `-X disable-remote-debug` or with PYTHON_DISABLE_REMOTE_DEBUG set in its "
            "environment (or its CPython was built --without-remote-debug).",
            hint="Restart it without that option and variable to let heapspy attach.",
        )


def check_remote_debugging(target: PythonTarget) -> None:
    """Refuse a 3.14+ target whose owner opted out of remote debugging.

    heapspy honours the opt-out whatever the injection method: ptrace could bypass it,
    but the flag says the process's owner does not want debuggers in it.
    """
    runtime = RemoteRuntime(target)
    _refuse_if_disabled(runtime, runtime.main_interpreter())


def request_exec(
    target: PythonTarget, script_path: str, *, thread_id: int | None = None
) -> RemoteExecRequest:
    """Ask ``target`` to run the Python file ``script_path`` (PEP 768, CPython 3.14+).

    The file is run by the main thread, or by the thread whose native TID is
    ``thread_id``, at its next eval-breaker check. ``script_path`` is opened by the target:
    relative paths resolve against its cwd and mount namespace, and it must be readable by
    the target's uid. Returns once the request is written; poll ``pending()`` /
    ``wait_taken()`` and ``cancel()`` on timeout. Leaves the target untouched when it
    raises.

    The target copies the path just *after* clearing the pending flag, so a second request
    into the same thread right after ``pending()`` turned False could overwrite the path
    before the first one was copied: wait for the first script's acknowledgement.
    """
    path = os.fsencode(script_path)
    if b"\0" in path or not path:
        raise UsageError(f"Invalid script path {script_path!r}.")
    if target.version < (3, 14):
        raise UnrecognisedPython(
            f"Process {target.pid} runs Python {target.version_text}: PEP 768 remote "
            "execution needs CPython 3.14 or newer."
        )
    runtime = RemoteRuntime(target)
    o = runtime.offsets
    if len(path) + 1 > o.script_path_size:
        raise UsageError(
            f"Script path is {len(path)} bytes; the target accepts at most "
            f"{o.script_path_size - 1}: {script_path!r}."
        )
    interp = runtime.main_interpreter()
    _refuse_if_disabled(runtime, interp)
    main = runtime.main_thread_state(interp)
    if thread_id is None:
        if main is None:
            raise TargetExited(f"{runtime.where} has no main thread state (shutting down?).")
        tstate = main
    else:
        threads = runtime.thread_states(interp)
        match = [t for t in threads if t.native_thread_id == thread_id]
        if not match:
            raise UsageError(
                f"Process {target.pid} has no Python thread with native id {thread_id}; "
                f"its Python threads are: {_tid_list(threads, main)}."
            )
        tstate = match[0]
    support = tstate.address + o.remote_debugger_support
    if runtime.i32(support + o.pending_call) != 0:
        raise InjectionFailed(
            f"Process {target.pid}: another debugger request is pending in thread "
            f"{tstate.native_thread_id} (not yet taken by the target).",
            hint="Wait for it to run.",
            remedies=(Remedy("thread"),),
        )
    check_same_process(target)  # the pid may name a newcomer by now: write nothing then
    try:
        runtime.mem.write(support + o.script_path, path + b"\0")
        runtime.mem.write(support + o.pending_call, struct.pack("<i", 1))
        breaker = tstate.address + o.eval_breaker
        low = runtime.read(breaker, 1)[0]
        runtime.mem.write(breaker, bytes([low | EVAL_PLEASE_STOP_BIT]))
    except HeapspyError:
        raise
    except OSError as exc:
        raise InjectionFailed(
            f"Process {target.pid}: writing the request failed ({exc.strerror or exc})."
        ) from None
    return RemoteExecRequest(runtime, interp, tstate, path)
