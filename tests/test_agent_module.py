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
    # each once: the bootstrap creates each file exclusively (O_EXCL), and a name listed
    # twice (two branches adding the same module) fails every attach
    assert len(AGENT_FILES) == len(shipped), sorted(AGENT_FILES)


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


_GROUPING = """
import sys, tracemalloc
sys.path[:0] = [%r]
from heapspy_agent.exact import _group_by_traceback
tracemalloc.start(8)
def leaf(n):
    return [bytearray(n) for _ in range(300)]
def mid(n):
    return leaf(n) + leaf(n * 2)
kept = [mid(100), mid(1000), leaf(5000)]
raw = tracemalloc._get_traces()
tracemalloc._get_traces = lambda: raw  # both read the same traces
fast = _group_by_traceback()
stats = tracemalloc.Snapshot(raw, 8).statistics("traceback")
slow = {tuple((f.filename, f.lineno) for f in st.traceback): (st.count, st.size) for st in stats}
tracemalloc.stop()
ours = {key: (count, size) for count, size, key in fast}
mine = {k: v for k, v in ours.items() if k[-1][0] == "<string>"}
want = {k: v for k, v in slow.items() if k[-1][0] == "<string>"}
assert mine == want, (sorted(mine.items()), sorted(want.items()))
in_leaf = [(k, v) for k, v in mine.items() if k[-1] == ("<string>", 7)]
assert len(in_leaf) == 2, in_leaf  # leaf() called from mid() and from the module
assert all(k[0][0] == "<string>" and k[0][1] == 10 for k, _ in in_leaf), in_leaf  # root first
assert sum(v[1] for _, v in in_leaf) >= 300 * (100 + 200 + 1000 + 2000 + 5000)
print(len(mine))
"""


@pytest.mark.parametrize("interp", interpreter_params())
def test_exact_grouping_matches_tracemalloc_statistics(interp: Interpreter) -> None:
    """Exact mode groups tracemalloc's raw traces itself (Snapshot.statistics is ~9x
    slower): the groups, their frame order (oldest first) and sums must be tracemalloc's."""
    code = _GROUPING % str(agent_source_dir().parent)
    out = subprocess.run(
        interp.command("-I", "-c", code), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 2
