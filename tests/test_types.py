"""Types on sampled dumps (issue 17 point 2): every live sample whose block is a Python
object carries its type as the pprof label ``type``, named at the dump.

One target per interpreter (tests/targets/typed_heap.py) keeps known numbers of dicts,
bytes, lists, instances of a class with and without ``__slots__`` and of subclasses of
dict and bytes, each from its own function; ``heapspy report --by type`` must find each
type with its count (bytes for the bytes objects) within the sampling's error bars, and
the per-stack totals must be those of the untyped dump. The readers (``go tool pprof
-tags``/``-tagfocus``, the JSON report, the flame graph's leaf types) are checked once.
"""

from __future__ import annotations

import json
import math
import select
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from gotool import pprof, top
from interpreters import Interpreter, interpreter_params
from support import Target, run_heapspy

from heapspy.config import AttachConfig
from heapspy.model import TYPE
from heapspy.pprof import read_profile
from heapspy.reporters.diff import DiffConfig, build_diff
from heapspy.reporters.report import ReportConfig, build_report
from heapspy.session import Session
from heapspy.top import TopView

Spawn = Callable[..., Target]
RATE = 1024  # every ~1 KiB: enough samples of 20,000 small objects for tight error bars


def _params() -> list[Any]:
    """Every interpreter, and one again under PYTHONMALLOC=debug (tests/test_shim.py
    checks the type of every kind of object under it on all of them)."""
    params = []
    for p in interpreter_params():
        interp = p.values[0]
        params.append(pytest.param(interp, "", id=str(interp), marks=p.marks))
        if getattr(interp, "label", "") == "3.13-pyenv":
            params.append(pytest.param(interp, "debug", id=f"{interp}-debug", marks=p.marks))
    return params


def _attach_and_dump(target: Target, tmp_path: Path) -> tuple[Path, dict[str, Any], Session]:
    session = Session.attach(
        target.pid, AttachConfig(rate=RATE, interval=0.2, dump_dir=tmp_path, final_dump=False)
    )
    try:
        base = Path(session.write_dump("before"))  # before the target builds its heap
        (tmp_path / "go").touch()  # the agent samples: the target builds its heap now
        stdout = target.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + 120
        line = ""
        while not line and time.monotonic() < deadline:
            session.run(0.2)
            if select.select([stdout], [], [], 0)[0]:
                line = stdout.readline()
        assert line.startswith("BUILT "), line
        session.run(0.3)
        path = Path(session.write_dump("types"))
        # what `heapspy top PID --by type` asks the session holding PID
        reply = session._control_command({"cmd": "top", "n": 20, "by": TYPE})
        view = TopView.from_json(reply["view"])
        truth = json.loads(line.split(" ", 1)[1])
        truth["top"] = {row.function: row.inuse_objects for row in view.rows}
        truth["base"] = str(base)
    finally:
        session.detach()
    return path, truth, session


def _by_type(dump: Path, index: str) -> dict[str, int]:
    report = build_report(ReportConfig(dump=dump, by=TYPE, top=100, sample_index=index))
    return {row.site.function: row.flat for row in report.top}


def _per_stack(dump: Path) -> dict[tuple[str, ...], list[int]]:
    """Each stack's four values, summed over its samples (its types)."""
    out: dict[tuple[str, ...], list[int]] = {}
    for sample in read_profile(dump).samples:
        key = tuple(f.function for f in sample.stack)
        acc = out.setdefault(key, [0, 0, 0, 0])
        for i, v in enumerate(sample.values):
            acc[i] += v
    return out


@pytest.mark.parametrize(("interp", "malloc"), _params())
def test_types_of_live_samples(
    interp: Interpreter, malloc: str, spawn: Spawn, tmp_path: Path
) -> None:
    env = {"PYTHONMALLOC": malloc} if malloc else {}
    target = spawn(interp, "typed_heap.py", str(tmp_path / "go"), env=env)
    dump, truth, session = _attach_and_dump(target, tmp_path)
    objects = _by_type(dump, "inuse_objects")
    space = _by_type(dump, "inuse_space")
    kept = truth["objects"]
    # N objects of >= 48 bytes sampled at 1 KiB: p >= 4.6 %, sd <= 3.2 % at N = 20,000;
    # 20 % is over 6 sd. Builtin names bare, the target's classes as __main__.Name.
    for name, label in (("list", "list"), ("Plain", "__main__.Plain"),
                        ("Slotted", "__main__.Slotted"), ("Registry", "__main__.Registry"),
                        ("Blob", "__main__.Blob"), ("bytes", "bytes")):  # fmt: skip
        assert math.isclose(objects.get(label, 0), kept[name], rel_tol=0.2), (label, objects)
    assert objects.get("dict", 0) >= kept["dict"] * 0.8, objects  # + instances' dicts < 3.11
    # ~2 KB objects are sampled with p = 86 %: their bytes within 5 % (> 5 sd)
    for name, label in (("bytes", "bytes"), ("Blob", "__main__.Blob")):
        assert math.isclose(space[label], truth["bytes"][name], rel_tol=0.05), (label, space)
    # `top --by type` (the live view) names the same types
    assert math.isclose(truth["top"]["__main__.Slotted"], kept["Slotted"], rel_tol=0.2), truth
    assert session.aggregator.intervals > 0

    if interp.label != "3.12-pyenv" or malloc:
        return  # what differs between interpreters ends here: the readers, once
    # the per-stack totals are the untyped ones: alloc_* on the untyped sample, inuse_*
    # split, and each stack's samples sum to what its site holds
    stacks = _per_stack(dump)
    slotted = next(v for k, v in stacks.items() if k[-1] == "keep_slotted")
    assert slotted[2] >= objects["__main__.Slotted"] and slotted[0] > 0, slotted
    tags = pprof("-tags", dump, cwd=tmp_path)
    assert "type: " in tags and "__main__.Slotted" in tags and "bytes" in tags, tags
    focused = top(dump, "-tagfocus=type=__main__.Slotted", cwd=tmp_path)
    assert any(r.name.startswith("keep_slotted") for r in focused[:2]), focused[:4]
    # `heapspy report --by type --format json`, in this process
    doc = json.loads(build_report(ReportConfig(dump=dump, by=TYPE)).output("json"))
    assert doc["by"] == "type"
    names = [row["function"] for row in doc["top"]]
    assert "bytes" in names[:3] and "__main__.Blob" in names[:3], names
    # `heapspy diff --by type`: which types grew between the two dumps
    grew = build_diff(DiffConfig(base=Path(truth["base"]), new=dump, by=TYPE, top=20))
    deltas = {row.site.function: row.flat_delta for row in grew.functions}
    assert deltas["__main__.Blob"] == space["__main__.Blob"] > 0, deltas
    html = tmp_path / "types.html"
    out = run_heapspy("flamegraph", str(dump), "--types", "-o", str(html))
    assert out.returncode == 0, out.stderr
    page = html.read_text()
    assert "__main__.Slotted" in page and "keep_slotted" in page
