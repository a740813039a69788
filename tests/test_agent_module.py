"""The agent is a real module: importable with ``python -S`` and only its folder on the
path, on every interpreter it may be injected into; its framing round-trips."""

from __future__ import annotations

import subprocess

import pytest
from heapspy_agent import protocol
from interpreters import Interpreter, interpreter_params

from heapspy.inject.bootstrap import AGENT_FILES, agent_source_dir


@pytest.mark.parametrize("interp", interpreter_params())
def test_agent_imports_with_stdlib_only(interp: Interpreter) -> None:
    agent_root = str(agent_source_dir().parent)
    code = (
        f"import sys; sys.path[:0] = [{agent_root!r}]; import heapspy_agent.agent as a; "
        "print(sorted(m for m in sys.modules if m.startswith('heapspy')))"
    )
    out = subprocess.run(
        interp.command("-S", "-I", "-c", code), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "heapspy_agent.agent" in out.stdout and "'heapspy'" not in out.stdout


def test_every_agent_module_is_shipped() -> None:
    shipped = set(AGENT_FILES)
    present = {p.name for p in agent_source_dir().glob("*.py")}
    assert present <= shipped, f"agent modules not copied into targets: {present - shipped}"


def test_frames_round_trip_in_pieces() -> None:
    data = protocol.encode(protocol.SAMPLES, {"seq": 1, "inuse": {"3": [1, 2]}})
    data += protocol.encode(protocol.HEARTBEAT, {})
    reader = protocol.FrameReader()
    got = []
    for i in range(len(data)):
        got += reader.feed(data[i : i + 1])
    assert got == [(protocol.SAMPLES, {"seq": 1, "inuse": {"3": [1, 2]}}), (protocol.HEARTBEAT, {})]


def test_oversized_frame_is_refused() -> None:
    reader = protocol.FrameReader()
    with pytest.raises(protocol.ProtocolError):
        reader.feed(protocol.HEADER.pack(protocol.MAX_FRAME + 1, 1))
