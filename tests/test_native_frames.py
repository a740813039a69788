"""`heapspy attach --native --native-frames`: the C call stack of each native sample,
walked by frame pointers in the target (Cargo-free/native_frames.c) and named by heapspy
from the target's mapped files (heapspy/target/native_symbols.py), shown in the dump
under the Python line that called into the library.

One target per interpreter leaks through tests/native_lib/nframes.c built twice: with
frame pointers (called with the GIL held: both C functions under the Python line) and
without (called with the GIL released: at least the function that called malloc).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from interpreters import Interpreter, interpreter_params
from native_attach import final_dump, native_session, native_status

from heapspy.config import AttachConfig
from heapspy.daemon.config import load_config
from heapspy.errors import UsageError
from heapspy.pprof import read_profile

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "tests" / "native_lib" / "nframes.c"
TARGET = REPO / "tests" / "targets" / "native_frames.py"
INTERPRETERS = [
    p
    for p in interpreter_params()
    if p.values[0].label in ("3.8-pyenv", "3.11-pyenv", "3.14-debian")
]


@pytest.fixture(scope="session")
def nframes_libs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc or not shutil.which(cc):
        pytest.skip("no C compiler: the test library cannot be built")
    out = tmp_path_factory.mktemp("nframes")
    libs = []
    for name, flag in (("libnf_fp.so", "-fno-omit-frame-pointer"),
                       ("libnf_nofp.so", "-fomit-frame-pointer")):  # fmt: skip
        lib = out / name
        proc = subprocess.run(
            [cc, "-O2", flag, "-fno-builtin", "-shared", "-fPIC", "-Wall", "-Werror",
             "-o", str(lib), str(SOURCE)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        libs.append(lib)
    return libs[0], libs[1]


def _marker(tag: str) -> int:
    for number, text in enumerate(TARGET.read_text().splitlines(), 1):
        if text.rstrip().endswith(f"# LINE: {tag}"):
            return number
    raise AssertionError(tag)


def _traces(text: str) -> list[list[str]]:
    """The stacks of ``pprof -traces``, each leaf first."""
    out: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("-----------+"):
            current = None
            continue
        value = re.match(r"^\s*-?\d+B\s{2,}(\S.*)$", line)  # -unit=B: "9434554B   leaf"
        if current is None and value:
            current = [value[1].strip()]
            out.append(current)
        elif current is not None and line.strip():
            current.append(line.strip())
    return out


def _python_frame(trace: list[str], function: str, line: int) -> int:
    """Where ``function`` at TARGET's ``line`` is in the trace; every frame between it and
    the leaf must be native (a library's)."""
    for i, frame in enumerate(trace):
        if frame.startswith(f"{function} ") and frame.endswith(f"/{TARGET.name}:{line}"):
            assert all(".so" in f for f in trace[:i]), trace
            return i
    raise AssertionError(trace)


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_native_frames_under_the_python_line(
    interp: Interpreter, nframes_libs: tuple[Path, Path], tmp_path: Path
) -> None:
    from gotool import pprof, require_go, top
    from support import wait_for

    require_go()
    fp, nofp = nframes_libs
    argv = [*interp.argv, str(TARGET), str(fp), str(nofp)]
    with native_session(argv, ("--native-frames", "--rate", "64KiB"), tmp_path) as (target, _):
        if interp.label == "3.11-pyenv":  # the shim's note: the same on every interpreter
            # status says what a library without frame pointers shows (once the agent's
            # first interval has sent the native status)
            notes: list[str] = []

            def native_notes() -> bool:
                native = native_status(target.pid)
                notes[:] = native["notes"] if native else []
                return native is not None

            assert wait_for(native_notes, timeout=30), notes
            assert any("native frames: walked by frame pointers" in n for n in notes), notes
    final = final_dump(tmp_path)
    # the two leaking C functions are the two top sites (8 MiB each; nothing else leaks)
    rows = top(final, "-sample_index=inuse_space", cwd=tmp_path)
    assert {r.name for r in rows[:2]} == {
        "nf_leaky_alloc (libnf_fp.so)",
        "nf_leaky_alloc (libnf_nofp.so)",
    }, rows[:4]
    text = pprof("-traces", "-lines", "-unit=B", "-sample_index=inuse_space", final, cwd=tmp_path)
    traces = _traces(text)
    with_fp = [t for t in traces if t[0].startswith("nf_leaky_alloc (libnf_fp.so) ")]
    without = [t for t in traces if t[0].startswith("nf_leaky_alloc (libnf_nofp.so) ")]
    assert with_fp and without, traces
    for trace in with_fp:  # the whole C stack, then the Python line (libffi may be between)
        assert trace[1].startswith("nf_outer (libnf_fp.so) "), trace
        assert trace[0].endswith(str(fp)), trace  # the library's path is its file
        _python_frame(trace, "leak_with_frame_pointers", _marker("fp"))
    for trace in without:  # at least the function that called malloc
        _python_frame(trace, "leak_without_frame_pointers", _marker("nofp"))
    # the library is the native frames' mapping in the dump, and heapspy reads it back
    leaves = {s.stack[-1] for s in read_profile(final).samples if s.stack}
    native = {f.function: f for f in leaves if f.native}
    assert native["nf_leaky_alloc (libnf_fp.so)"].filename == str(fp), leaves
    assert native["nf_leaky_alloc (libnf_nofp.so)"].filename == str(nofp), leaves


def test_native_frames_need_native(tmp_path: Path) -> None:
    """The command line and the daemon's config refuse native frames without native
    sampling alike, and take them with it."""
    from support import run_heapspy

    out = run_heapspy("attach", "1", "--native-frames")
    assert out.returncode == 2, out.stderr
    assert "add --native" in out.stderr and "Traceback" not in out.stderr
    path = tmp_path / "heapspy.toml"
    path.write_text('[[watch]]\nname = "api"\ncmdline = "gunicorn"\nnative_frames = true\n')
    with pytest.raises(UsageError, match="add native = true"):
        load_config(path)
    path.write_text(
        '[[watch]]\nname = "api"\ncmdline = "gunicorn"\nnative = true\nnative_frames = true\n'
    )
    attach: AttachConfig = load_config(path).watches[0].attach
    assert attach.native and attach.native_frames


def test_native_frames_on_the_wire_are_checked() -> None:
    """The agent's return addresses are untrusted: integers in range, at most 32."""
    from heapspy_agent import protocol, schema

    def samples(native: Any) -> dict[str, Any]:
        stack = {"id": 1, "frames": [["f", "/a.py", 1]], "native": native}
        return {"seq": 1, "stacks": [stack]}

    checked = schema.check(protocol.SAMPLES, samples([0x7F0000001234, 1]))
    assert checked["stacks"][0]["native"] == [0x7F0000001234, 1]
    for bad in ([-1], [2**64], ["0x1"], [True], [1] * 33, 5):
        with pytest.raises(schema.ProtocolError):
            schema.check(protocol.SAMPLES, samples(bad))
