"""Retainers of leak sites (issue 17 point 3): which roots hold the live samples of the
sites a dump ranks highest.

One real target per interpreter (tests/targets/retained_leaks.py) leaks through three
kinds of root -- a module global's attribute list, a class attribute's dict key, a
thread's frame local's slot -- each from its own function; `heapspy attach` must name
each site's root first, with the attribute or key of each step (where a decoy of the
same type sits beside it), with >= 90 % of its live samples in its final table, and
`heapspy report` (text and JSON) the same from the dump's sidecar. Naming the steps must
run none of the target's hostile methods (property, __getattr__, __eq__, __hash__). The
flame graph's tooltip data is checked once.
The two census walks (native, Python) looking for chosen objects are checked side by
side in one interpreter, and what heapspy reads back from an agent or a sidecar is
checked for hostile content without a target.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from heapspy_agent import protocol, schema
from interpreters import Interpreter, interpreter_params
from support import Target, run_heapspy

from heapspy.config import AttachConfig
from heapspy.reporters.flamegraph import FlamegraphConfig, write_flamegraph
from heapspy.reporters.report import ReportConfig, build_report
from heapspy.retainers import Retainers, table_lines
from heapspy.rules import parse_rule
from heapspy.session import Session

Spawn = Callable[..., Target]
HERE = Path(__file__).resolve().parent
# what each leaking function's live samples must be held by, as the census names roots
ROOTS = {
    "buffer_line": "__main__.SHIPPER",
    "register": "__main__.Registry.entries",
    "keep_local": "thread local-worker: local_worker",
}
# ... and the whole path, its steps named
HELD_BY = {
    "buffer_line": "__main__.SHIPPER .pending (list)",
    "register": "__main__.Registry.entries ['recent'] (list)",
    "keep_local": "thread local-worker: local_worker .kept (list)",
}


def _chosen(*versions: tuple[int, int]) -> list[Any]:
    """The first interpreter of each of these versions."""
    seen: set[tuple[int, int]] = set()
    out = []
    for param in interpreter_params():
        version = param.values[0].version[:2]
        if version in versions and version not in seen:
            seen.add(version)
            out.append(param)
    return out


def _held(sites: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each leaking function's retainers entry, by the short name in ROOTS."""
    out = {}
    for site in sites:
        short = site["function"].rsplit(".", 1)[-1]
        if short in ROOTS:
            out[short] = site
    return out


@pytest.mark.parametrize("interp", _chosen((3, 8), (3, 11), (3, 14)))
def test_retainers_name_the_root_of_each_leak(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    target = spawn(interp, "retained_leaks.py")
    attach = run_heapspy(
        "attach", str(target.pid), "--duration", "3", "--rate", "8KiB", "--no-census",
        "--retainers", "--dump-dir", str(tmp_path), timeout=180,
    )  # fmt: skip
    assert attach.returncode == 0, attach.stderr
    (final,) = tmp_path.glob("heap-*-final.pb.gz")
    side = json.loads(final.with_name(final.name.replace(".pb.gz", ".json")).read_text())
    found = side["retainers"]
    assert found is not None and not found["partial"], found
    assert found["walker"] == "native" and found["longest_slice"] < 1.0, found
    held = _held(found["sites"])
    assert set(held) == set(ROOTS), found["sites"]
    for short, root in ROOTS.items():
        first = held[short]["holders"][0]
        assert first["path"][0] == root and first["path"][-1] == "list", held[short]
        assert first["share"] >= 0.9, held[short]
        assert first["samples"] >= 5, held[short]  # enough samples to mean something
        assert first["steps"][-1] == HELD_BY[short].split(" ")[-2], held[short]
        # attach's final table says it (each site's first holder, on its headline)
        assert f"held by {HELD_BY[short]} " in attach.stdout, attach.stdout
    called = tmp_path / "CALLED"  # the target's hostile methods, had anything run them
    assert not called.exists(), called.read_text()
    # `heapspy report`: the JSON from the sidecar, and the text (the CLI on one
    # interpreter: it only renders what build_report returns)
    if interp.version[:2] == (3, 11):
        report = run_heapspy("report", str(final), "--format", "json")
        assert report.returncode == 0, report.stderr
        as_json = report.stdout
    else:
        as_json = build_report(ReportConfig(dump=final)).output("json")
    from_report = _held(json.loads(as_json)["retainers"]["sites"])
    assert {k: v["holders"][0]["path"] for k, v in from_report.items()} == {
        k: v["holders"][0]["path"] for k, v in held.items()
    }
    text = build_report(ReportConfig(dump=final)).output("text")
    assert "What holds the top sites' live samples" in text, text
    for path in HELD_BY.values():
        assert f"held by {path} " in text, text

    if interp.version[:2] != (3, 11):
        return  # the flame graph reads the same sidecar: once
    html = tmp_path / "graph.html"
    write_flamegraph(FlamegraphConfig(dump=final, output=html))
    page = html.read_text()
    data = page.split('<script type="application/json" id="data">', 1)[1].split("</script>")[0]
    document = json.loads(data)
    functions = document["functions"]
    tips = {functions[row[0]][0].rsplit(".", 1)[-1]: row[1:] for row in document["retainers"]}
    for short, path in HELD_BY.items():
        assert any(line.strip().startswith(path) for line in tips[short]), tips
    assert "held.get(nodes.function[i])" in page  # the tooltip shows them


@pytest.mark.parametrize("interp", _chosen((3, 8), (3, 12), (3, 14)))
def test_native_and_python_walks_find_the_same_holders(interp: Interpreter) -> None:
    """Both walks give a chosen object the path of the root that holds it (an instance's
    attribute, a class attribute, a thread's frame local), and garbage as garbage."""
    agent = HERE.parent / "agent"
    shim = next((agent / "heapspy_agent").glob("_heapspy_shim*.so"))
    out = subprocess.run(
        [*interp.argv, str(HERE / "targets" / "retainer_twin.py"), str(agent), str(shim)],
        capture_output=True, text=True, timeout=120, env={"PATH": os.environ["PATH"]},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("TWIN ")]
    twin = json.loads(line[len("TWIN ") :])
    assert twin["walkers"] == ["native", "python"]
    for walker in ("native", "python"):
        paths = twin[walker]
        assert paths["attribute"][:2] == ["__main__.HOLDER", "__main__.Holder"], twin
        assert paths["class"] == ["__main__.Registry.entries", "list"], twin
        assert paths["frame"] == ["thread keeper: worker", "list"], twin
        assert paths["garbage"] == ["unreachable (cyclic garbage)", "list"], twin
    assert twin["native"] == twin["python"]


def test_hostile_retainers_are_refused_or_escaped() -> None:
    """An agent's RETAINERS frame is checked (sizes, types); a sidecar's retainers are
    read back leniently; names print with control characters escaped."""
    good = {"stacks": {"7": [[["m.ROOT", "C", "list"], 3, 4096.0, ["", "", ".x"]]]}}
    assert schema.check(protocol.RETAINERS, good)["stacks"] == good["stacks"]
    too_many_paths = {"stacks": {"7": [[["r"], 1, 1.0, [""]]] * (schema.MAX_RETAINER_PATHS + 1)}}
    too_deep = {"stacks": {"7": [[["r"] * (schema.MAX_CENSUS_DEPTH + 1), 1, 1.0, [""]]]}}
    bad_key = {"stacks": {"x": [[["r"], 1, 1.0, [""]]]}}
    negative = {"stacks": {"7": [[["r"], 1, -5.0, [""]]]}}
    long_step = {"stacks": {"7": [[["r", "C"], 1, 1.0, ["", "." + "a" * schema.MAX_STEP_NAME]]]}}
    no_steps = {"stacks": {"7": [[["r"], 1, 1.0]]}}
    many_steps = {"stacks": {"7": [[["r"], 1, 1.0, [""] * (schema.MAX_CENSUS_DEPTH + 1)]]}}
    for body in (too_many_paths, too_deep, bad_key, negative, long_step, no_steps, many_steps,
                 {"elapsed": 1.0}):  # fmt: skip
        with pytest.raises(protocol.ProtocolError):
            schema.check(protocol.RETAINERS, body)
    sidecar = {
        "sites": [
            {"function": "f\x1b]0;owned\x07", "filename": "/a/b.py", "line": 3,
             "live_bytes": 2048, "holders": [
                 {"path": ["m.\x1b[2JX", "C", "list"], "steps": ["", "", ".\x1b[2J" + "y" * 99],
                  "samples": 2, "bytes": 2048, "share": 1.0},
                 "junk", {"path": "not a list"}]},
            "junk",
            {"function": 5, "holders": [{"path": [1, None], "share": "x"}]},
        ],
        "elapsed": "slow",
    }  # fmt: skip
    read = Retainers.from_json(sidecar)
    assert read is not None and len(read.sites) == 2 and read.elapsed == 0.0
    assert len(read.sites[0].holders) == 1 and read.sites[1].holders[0].path == ("", "")
    assert len(read.sites[0].holders[0].steps[2]) == 64  # a step's name is bounded
    text = "\n".join(table_lines(read))
    assert "\x1b" not in text and "\x07" not in text, text
    assert f"held by m.\\x1b[2JX .\\x1b[2J{'y' * 59} (list) 100 %" in text, text
    assert Retainers.from_json("nothing") is None and Retainers.from_json({"sites": 1}) is None


def test_a_leak_rule_dump_names_what_holds_its_site(spawn: Spawn, tmp_path: Path) -> None:
    """The dump a leak rule writes carries the retainers, its site marked as the leak's
    (the grown site: one of the three, each held by its root first)."""
    target = spawn(None, "retained_leaks.py")
    config = AttachConfig(
        rate=8192, interval=0.3, dump_dir=tmp_path, final_dump=False, retainers=True,
        dump_on=(parse_rule("leak:3,cooldown=1h"),),
    )  # fmt: skip
    session = Session.attach(target.pid, config)
    try:
        deadline = time.monotonic() + 120
        while not session.dumps and time.monotonic() < deadline:
            session.run(0.3)
    finally:
        session.detach()
    (dump,) = [Path(d) for d in session.dumps]
    assert "-leak" in dump.name, dump
    side = json.loads(dump.with_name(dump.name.replace(".pb.gz", ".json")).read_text())
    sites = side["retainers"]["sites"]
    (leaked,) = [s for s in sites if s["leak"]]
    short = leaked["function"].rsplit(".", 1)[-1]
    assert leaked["holders"][0]["path"][0] == ROOTS[short], leaked
    report = build_report(ReportConfig(dump=dump)).output("text")
    assert "(leak rule's site)" in report, report
