"""PEP 768 injection (heapspy.inject.pep768) against real CPython 3.14 processes.

Every target is a fresh subprocess of the provisioned 3.14 (tests/interpreters.py); the
injected script appends one JSON line (pid, thread ident, native TID) to a marker file.
"""

from __future__ import annotations

import json
import os
import platform
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from interpreters import Interpreter, find_interpreters, py314

from heapspy.errors import InjectionFailed, RemoteDebugDisabled, UnrecognisedPython, UsageError
from heapspy.inject.pep768 import (
    COOKIE,
    EVAL_PLEASE_STOP_BIT,
    RemoteRuntime,
    parse_debug_offsets,
    python_thread_ids,
    request_exec,
)
from heapspy.target.process import PythonTarget, inspect_target

# main thread: busy (runs Python), sleep (time.sleep(5) in a loop), or stdin (blocked in
# read() until the test writes a line; answers "ack" after each). The optional worker
# thread runs Python non-stop.
TARGET = r"""
import json, sys, threading, time

def worker_loop(ready):
    ready.set()
    while True:
        total = 0
        for i in range(200):
            total += i

def busy_main():
    while True:
        total = 0
        for i in range(200):
            total += i

def sleep_main():
    while True:
        time.sleep(5)

def stdin_main():
    for line in sys.stdin:
        total = 0
        for i in range(100):  # some bytecode, then acknowledge
            total += i
        print("ack", flush=True)

mode, worker = sys.argv[1], sys.argv[2] == "worker"
if mode == "subinterp":  # a subinterpreter heads the interpreter list
    import concurrent.interpreters
    sub = concurrent.interpreters.create()
    mode = "busy"
info = {"main_ident": threading.get_ident(), "main_native": threading.get_native_id()}
if worker:
    ready = threading.Event()
    t = threading.Thread(target=worker_loop, args=(ready,), daemon=True, name="worker")
    t.start()
    ready.wait()
    info["worker_native"] = t.native_id
    info["worker_ident"] = t.ident
print(json.dumps(info), flush=True)
{"busy": busy_main, "sleep": sleep_main, "stdin": stdin_main}[mode]()
"""

SCRIPT = """
import json as _json, os as _os, threading as _threading, time as _time
_line = _json.dumps({{"pid": _os.getpid(), "ident": _threading.get_ident(),
                     "native": _threading.get_native_id(), "t": _time.monotonic()}})
with open({marker!r}, "a") as _f:
    _f.write(_line + "\\n")
"""


# The syscall each blocking mode's main thread waits in, by machine.
_SYSCALLS = {
    "x86_64": {"stdin": 0, "sleep": 230},  # read, clock_nanosleep
    "aarch64": {"stdin": 63, "sleep": 115},
}


@dataclass
class Target:
    proc: subprocess.Popen[str]
    mode: str
    info: dict[str, Any]
    stderr_path: Path
    target: PythonTarget = field(init=False)

    def __post_init__(self) -> None:
        self.target = inspect_target(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_blocked(self, timeout: float = 5.0) -> None:
        """Wait until the main thread sits in the blocking call of its mode (read() for
        stdin, clock_nanosleep() for sleep): before that it may still run bytecode and
        take a request meant to stay pending."""
        wanted = _SYSCALLS[platform.machine()][self.mode]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(f"/proc/{self.pid}/task/{self.pid}/syscall") as f:
                if f.read().split()[0] == str(wanted):
                    return
            time.sleep(0.002)
        raise AssertionError(f"main thread never blocked in {self.mode}: {self.stderr()}")

    def poke(self) -> None:
        """Wake a main thread blocked in stdin_main and wait for its acknowledgement."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ack", self.stderr()
        self.wait_blocked()


@dataclass
class Marker:
    path: Path
    script: Path

    def runs(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def wait_runs(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.runs()) < count and time.monotonic() < deadline:
            time.sleep(0.002)
        return self.runs()


@pytest.fixture
def interp() -> Interpreter:
    return py314()


@pytest.fixture
def marker(tmp_path: Path) -> Marker:
    path = tmp_path / "marker.jsonl"
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(marker=str(path)))
    return Marker(path, script)


@pytest.fixture
def spawn(interp: Interpreter, tmp_path: Path) -> Iterator[Callable[..., Target]]:
    target_py = tmp_path / "target.py"
    target_py.write_text(TARGET)
    started: list[subprocess.Popen[str]] = []

    def start(
        mode: str,
        worker: bool = False,
        *,
        xopts: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> Target:
        stderr_path = tmp_path / f"target-{len(started)}.err"
        with open(stderr_path, "w") as err:
            proc = subprocess.Popen(
                interp.command(*xopts, str(target_py), mode, "worker" if worker else "-"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, **(env or {})},
            )
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"target did not start: {stderr_path.read_text()}"
        target = Target(proc, mode, json.loads(line), stderr_path)
        if mode in ("sleep", "stdin"):
            target.wait_blocked()
        return target

    yield start
    for proc in started:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def debugger_state(target: PythonTarget) -> dict[int, tuple[int, bytes, int]]:
    """Per native TID: (debugger_pending_call, first bytes of the path, eval_breaker)."""
    rt = RemoteRuntime(target)
    o = rt.offsets
    interp = rt.main_interpreter()
    out = {}
    for t in rt.thread_states(interp):
        support = t.address + o.remote_debugger_support
        pending = rt.mem.i32(support + o.pending_call)
        path = rt.mem.read(support + o.script_path, 16)
        breaker = rt.mem.u64(t.address + o.eval_breaker)
        out[t.native_thread_id] = (pending, path, breaker)
    return out


def assert_untouched(target: PythonTarget) -> None:
    for tid, (pending, path, breaker) in debugger_state(target).items():
        assert pending == 0, tid
        assert path == b"\0" * 16, (tid, path)
        assert not breaker & EVAL_PLEASE_STOP_BIT, (tid, hex(breaker))


@pytest.mark.py314
def test_script_runs_in_main_thread(spawn: Callable[..., Target], marker: Marker) -> None:
    t = spawn("busy", worker=True)
    req = request_exec(t.target, str(marker.script))
    assert req.thread_id == t.pid
    assert req.wait_taken(timeout=10), t.stderr()
    runs = marker.wait_runs(1)
    assert [(r["pid"], r["ident"], r["native"]) for r in runs] == [
        (t.pid, t.info["main_ident"], t.info["main_native"])
    ], t.stderr()
    assert not req.pending()
    assert req.cancel() is False  # already taken


@pytest.mark.py314
def test_script_runs_in_chosen_thread(spawn: Callable[..., Target], marker: Marker) -> None:
    t = spawn("busy", worker=True)
    req = request_exec(t.target, str(marker.script), thread_id=t.info["worker_native"])
    assert req.wait_taken(timeout=10), t.stderr()
    runs = marker.wait_runs(1)
    assert [(r["pid"], r["ident"], r["native"]) for r in runs] == [
        (t.pid, t.info["worker_ident"], t.info["worker_native"])
    ], t.stderr()


@pytest.mark.py314
def test_main_interpreter_found_behind_a_subinterpreter(
    spawn: Callable[..., Target], marker: Marker
) -> None:
    t = spawn("subinterp")
    rt = RemoteRuntime(t.target)
    head = rt.mem.u64(rt.address + rt.offsets.interpreters_head)
    assert head != rt.main_interpreter()  # the newest interpreter comes first
    assert request_exec(t.target, str(marker.script)).wait_taken(timeout=10)
    runs = marker.wait_runs(1)
    assert [(r["pid"], r["ident"]) for r in runs] == [(t.pid, t.info["main_ident"])]


@pytest.mark.py314
def test_python_thread_ids_main_first(spawn: Callable[..., Target]) -> None:
    t = spawn("sleep", worker=True)
    assert python_thread_ids(t.target) == [t.pid, t.info["worker_native"]]


@pytest.mark.py314
def test_unknown_thread_is_refused_with_the_list(
    spawn: Callable[..., Target], marker: Marker
) -> None:
    t = spawn("sleep", worker=True)
    with pytest.raises(UsageError) as info:
        request_exec(t.target, str(marker.script), thread_id=1)
    msg = str(info.value)
    assert f"{t.pid} (main)" in msg and str(t.info["worker_native"]) in msg
    assert_untouched(t.target)


@pytest.mark.py314
@pytest.mark.parametrize(
    ("xopts", "env"),
    [
        (("-X", "disable-remote-debug"), {}),
        ((), {"PYTHON_DISABLE_REMOTE_DEBUG": ""}),  # any value, even empty, disables it
        ((), {"PYTHON_DISABLE_REMOTE_DEBUG": "1"}),
    ],
    ids=["-X", "env-empty", "env-1"],
)
def test_remote_debug_disabled_is_refused(
    spawn: Callable[..., Target],
    marker: Marker,
    xopts: tuple[str, ...],
    env: dict[str, str],
) -> None:
    t = spawn("busy", xopts=xopts, env=env)
    with pytest.raises(RemoteDebugDisabled) as info:
        request_exec(t.target, str(marker.script))
    assert "-X disable-remote-debug" in str(info.value)
    assert "PYTHON_DISABLE_REMOTE_DEBUG" in str(info.value)
    assert info.value.exit_code == RemoteDebugDisabled.exit_code
    assert_untouched(t.target)
    time.sleep(0.05)
    assert marker.runs() == []


@pytest.mark.py314
def test_underscore_spelling_does_not_disable(
    spawn: Callable[..., Target], marker: Marker
) -> None:
    # CPython ignores unknown -X options: only the hyphenated spelling counts.
    t = spawn("busy", xopts=("-X", "disable_remote_debug"))
    assert request_exec(t.target, str(marker.script)).wait_taken(timeout=10)
    assert len(marker.wait_runs(1)) == 1


@pytest.mark.py314
def test_pending_request_blocks_a_second_one(
    spawn: Callable[..., Target], marker: Marker
) -> None:
    t = spawn("stdin", worker=True)
    first = request_exec(t.target, str(marker.script))
    time.sleep(0.05)
    assert first.pending()  # main thread is blocked in read()
    before = debugger_state(t.target)
    with pytest.raises(InjectionFailed, match="another debugger request is pending"):
        request_exec(t.target, str(marker.script))
    assert debugger_state(t.target)[t.pid][:2] == before[t.pid][:2]
    # Another thread has its own slot.
    other = request_exec(t.target, str(marker.script), thread_id=t.info["worker_native"])
    assert other.wait_taken(timeout=10)
    t.poke()  # the main thread runs bytecode again, and the first request with it
    assert first.wait_taken(timeout=10)
    runs = marker.wait_runs(2)
    assert sorted(r["native"] for r in runs) == sorted([t.pid, t.info["worker_native"]])


@pytest.mark.py314
def test_cancel_leaves_nothing_pending(spawn: Callable[..., Target], marker: Marker) -> None:
    t = spawn("stdin")
    req = request_exec(t.target, str(marker.script))
    state = debugger_state(t.target)[t.pid]
    assert state[0] == 1 and state[1].startswith(os.fsencode(marker.script)[:16])
    assert state[2] & EVAL_PLEASE_STOP_BIT
    assert req.pending()
    assert req.cancel() is True
    assert not req.pending()
    assert req.cancel() is True  # idempotent
    pending, path, _ = debugger_state(t.target)[t.pid]
    assert pending == 0 and path[0] == 0
    t.poke()  # bytecode runs: the withdrawn request must not
    t.poke()
    time.sleep(0.1)
    assert marker.runs() == []
    # ...and the slot can be used again afterwards.
    again = request_exec(t.target, str(marker.script))
    t.poke()
    assert again.wait_taken(timeout=10)
    assert len(marker.wait_runs(1)) == 1


@pytest.mark.py314
def test_blocked_main_thread_served_through_another_thread(
    spawn: Callable[..., Target], marker: Marker
) -> None:
    t = spawn("sleep", worker=True)
    stuck = request_exec(t.target, str(marker.script))
    time.sleep(0.3)
    assert stuck.pending()  # main thread sits in time.sleep(5)
    assert stuck.cancel()
    req = request_exec(t.target, str(marker.script), thread_id=t.info["worker_native"])
    assert req.wait_taken(timeout=5)
    runs = marker.wait_runs(1, timeout=5)
    # run by the worker, not by the main thread once its sleep is over
    assert [r["native"] for r in runs] == [t.info["worker_native"]], t.stderr()


@pytest.mark.py314
def test_script_path_too_long_is_refused(spawn: Callable[..., Target]) -> None:
    t = spawn("stdin")
    with pytest.raises(UsageError, match="at most 511"):
        request_exec(t.target, "/" + "x" * 511)
    assert_untouched(t.target)
    longest = request_exec(t.target, "/" + "x" * 510)  # 511 bytes + NUL fill the buffer
    assert longest.pending()
    assert longest.cancel()


@pytest.mark.slow
@pytest.mark.py314
def test_200_requests_into_busy_two_thread_target(
    spawn: Callable[..., Target], marker: Marker
) -> None:
    t = spawn("busy", worker=True)
    tids = [t.pid, t.info["worker_native"]]
    for i in range(200):
        req = request_exec(t.target, str(marker.script), thread_id=tids[i % 2])
        assert req.wait_taken(timeout=10), f"request {i}: {t.stderr()}"
        # The next request may overwrite the path only once this one's script ran.
        assert len(marker.wait_runs(i + 1)) == i + 1, t.stderr()
    runs = marker.runs()
    assert len(runs) == 200
    assert {r["native"] for r in runs} == set(tids)
    assert t.proc.poll() is None
    assert t.stderr() == ""


# --- without a target process ------------------------------------------------------------

# _Py_DebugOffsets of Debian's CPython 3.14.10, the values heapspy uses (FIELD-NOTES.md).
_VALUES_314 = {
    24: 0x4D4C8, 32: 0x310, 40: 0x328,  # runtime: size, finalizing, interpreters_head
    48: 0x37248, 56: 0x1C70, 64: 0x1C68, 72: 0x1CB0, 80: 0x1CC0,  # interpreter state
    176: 0x340, 192: 0x8, 224: 0xA0,  # thread state: size, next, native_thread_id
    712: 0x18, 720: 0x130, 728: 0x1F8C, 736: 0, 744: 4, 752: 512,  # debugger_support
}


def _table(hexversion: int = 0x030E0AF0, free_threaded: int = 0, cookie: bytes = COOKIE) -> bytes:
    buf = bytearray(760)
    buf[:8] = cookie
    struct.pack_into("<QQ", buf, 8, hexversion, free_threaded)
    for pos, value in _VALUES_314.items():
        struct.pack_into("<Q", buf, pos, value)
    return bytes(buf)


def test_parse_debug_offsets_314() -> None:
    o = parse_debug_offsets(_table())
    assert o.version_text == "3.14.10"
    assert (o.interpreters_head, o.interp_id, o.interp_next) == (0x328, 0x1C70, 0x1C68)
    assert (o.threads_head, o.threads_main, o.tstate_next) == (0x1CB0, 0x1CC0, 0x8)
    assert (o.native_thread_id, o.eval_breaker, o.remote_debugger_support) == (0xA0, 0x18, 0x130)
    assert (o.remote_debugging_enabled, o.pending_call, o.script_path) == (0x1F8C, 0, 4)
    assert o.script_path_size == 512


@pytest.mark.parametrize(
    ("table", "words"),
    [
        (_table(cookie=b"notdebug"), "debug cookie"),
        (_table(free_threaded=1), "free-threaded"),
        (_table(hexversion=0x030F00A1), "Upgrade heapspy"),
        (_table(hexversion=0x030E00A5), "pre-release"),
        (_table()[:752] + struct.pack("<Q", 1 << 40), "do not make sense"),
    ],
    ids=["cookie", "free-threaded", "3.15", "3.14-alpha", "garbage"],
)
def test_parse_debug_offsets_refusals(table: bytes, words: str) -> None:
    with pytest.raises(UnrecognisedPython, match=words):
        parse_debug_offsets(table)


def test_older_python_is_refused() -> None:
    older = [i for i in find_interpreters() if i.version < (3, 14)]
    if not older:
        pytest.skip("no CPython < 3.14 found on this machine")
    proc = subprocess.Popen(
        older[-1].command("-c", "import sys, time; print(1, flush=True); time.sleep(30)"),
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline()
        with pytest.raises(UnrecognisedPython, match="needs CPython 3.14"):
            request_exec(inspect_target(proc.pid), "/tmp/x.py")
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
