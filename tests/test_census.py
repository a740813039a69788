"""`heapspy census` on real targets: roots, types and garbage named as the target itself
counts them, through go tool pprof and the sidecar; no code of the target's run; a
live session's census; Ctrl-C leaves a partial census."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from gotool import top
from interpreters import Interpreter, install_numpy, interpreter_params
from support import Target, run_heapspy

from heapspy.pprof import read_profile

Spawn = Callable[..., Target]
NAME = re.compile(r"^census-(\d+)-\d{8}T\d{6}\.\d{3}Z\.pb\.gz$")
GARBAGE = "unreachable (cyclic garbage)"
ROOTS = ("census_app.CACHE", "census_app.Registry.items", "census_app.HANDLER")


# A cache this big keeps even the C walk busy for seconds at its 25 % duty cycle: long
# enough for a 1 s attach or a Ctrl-C to end the census before it is complete.
LONG_CENSUS = 500_000


def _start(
    spawn: Spawn,
    interp: Interpreter | None,
    env: dict[str, str] | None = None,
    cache: int = 20_000,
) -> Any:
    """The census target and its own count of what each root holds (TRUTH line)."""
    target = spawn(interp, "census_target.py", str(cache), env=env)
    line = target.proc.stdout.readline()
    assert line.startswith("TRUTH "), line
    return target, json.loads(line[len("TRUTH ") :])


def _signal_report(target: Target) -> tuple[float, int, list[str]]:
    """The target's longest pause (ms), how many probes measured it, and the target's
    code that ran on its traps."""
    target.proc.send_signal(signal.SIGUSR1)
    latency = target.proc.stdout.readline().split()
    calls = target.proc.stdout.readline()
    assert latency[0] == "LATENCY" and calls.startswith("CALLS "), (latency, calls)
    return float(latency[1]), int(latency[2]), json.loads(calls[len("CALLS ") :])


def _by_root_and_type(path: Path) -> dict[tuple[str, str], list[int]]:
    profile = read_profile(path)
    assert profile.sample_type_names == ("objects", "space")
    totals: dict[tuple[str, str], list[int]] = {}
    for sample in profile.samples:
        key = (sample.stack[0].function, sample.stack[-1].function)
        entry = totals.setdefault(key, [0, 0])
        entry[0] += sample.values[0]
        entry[1] += sample.values[1]
    return totals


def _numpy_env(interp: Interpreter) -> dict[str, str]:
    site, _why = install_numpy(interp.version)
    return {"PYTHONPATH": str(site)} if site is not None else {}


@pytest.mark.parametrize("interp", interpreter_params())
def test_census_names_roots_types_and_garbage(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    target, truth = _start(spawn, interp, env=_numpy_env(interp))
    out = run_heapspy(
        "census", str(target.pid), "--dump-dir", str(tmp_path), "--pause", "5ms", timeout=180
    )
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path.parent == tmp_path and NAME.match(path.name), path
    side = json.loads(path.with_name(path.name.replace(".pb.gz", ".json")).read_text())
    assert side["kind"] == "census" and side["pid"] == target.pid and not side["partial"]
    assert side["walker"] == "native"  # the shim's census_walk.c serves every interpreter
    # the root holding the most is named first
    assert side["roots"][0][0] == "census_app.CACHE", side["roots"][:5]

    # per type, within 10 % of the target's own sys.getsizeof walk of each root
    found = _by_root_and_type(path)
    for root in (*ROOTS, "census_app.ARRAY"):
        if truth.get(root) is None:
            continue  # no NumPy for this interpreter
        for kind, (objects, nbytes) in truth[root].items():
            got = found.get((root, kind), [0, 0])
            assert abs(got[1] - nbytes) <= 0.1 * nbytes, (root, kind, got, nbytes)
            assert abs(got[0] - objects) <= 0.1 * objects, (root, kind, got, objects)
    worker = "thread census-worker: work"
    assert found[(worker, "float")][0] == 7000, found.get((worker, "float"))
    assert found[(worker, "list")][0] >= 1

    # the cycles nobody refers to (gc disabled) are garbage, not a root's
    garbage_bytes = found.get((GARBAGE, "bytes"), [0, 0])
    assert garbage_bytes[0] >= 500 and garbage_bytes[1] >= 500 * 1000, garbage_bytes
    assert (GARBAGE, "dict") in found and (GARBAGE, "list") in found

    # a Python __sizeof__ is never called: the traps are sized by their C layout
    traps = [v for (root, _kind), v in found.items() if root == "census_app.TRAPS"]
    assert traps and sum(v[1] for v in traps) < 10**6, traps
    longest, probes, calls = _signal_report(target)
    assert calls == [], calls  # no __getattr__, __del__, property or __sizeof__ ran
    assert probes > 0 and longest >= 0.0
    assert side["longest_slice"] > 0 and side["elapsed"] > 0

    # go tool pprof: -top ranks types by bytes, -top -cum ranks the roots
    rows = top(path)
    assert rows[0].name == "dict", rows[:3]
    cum = top(path, "-cum")
    roots = [r for r in cum if r.name.startswith("census_app.")]
    assert roots[0].name == "census_app.CACHE", roots[:3]
    cache_bytes = sum(v[1] for (root, _k), v in found.items() if root == "census_app.CACHE")
    assert roots[0].cum == cache_bytes


def test_census_under_debug_allocator(spawn: Spawn, tmp_path: Path) -> None:
    target, truth = _start(spawn, None, env={"PYTHONMALLOC": "debug"})
    out = run_heapspy("census", str(target.pid), "--dump-dir", str(tmp_path), "--pause", "5ms")
    assert out.returncode == 0, out.stderr
    found = _by_root_and_type(Path(out.stdout.strip()))
    want = truth["census_app.CACHE"]["dict"]
    got = found[("census_app.CACHE", "dict")]
    assert abs(got[1] - want[1]) <= 0.1 * want[1], (got, want)


def test_census_through_a_live_session_reads_like_any_dump(
    spawn: Spawn, tmp_path: Path
) -> None:
    target, _truth = _start(spawn, None)
    holder = subprocess.Popen(
        [sys.executable, "-m", "heapspy", "attach", str(target.pid), "--dump-dir",
         str(tmp_path), "--no-final-dump"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert holder.stderr is not None
        assert "attached to" in holder.stderr.readline()
        out = run_heapspy("census", str(target.pid), "--pause", "5ms", timeout=120)
        assert out.returncode == 0, out.stderr
        assert f"census taken by the session holding {target.pid}" in out.stderr
        path = Path(out.stdout.strip())
        assert path.parent == tmp_path and NAME.match(path.name)
        holder.terminate()
        assert holder.wait(timeout=15) == 0
    finally:
        holder.kill()
        holder.communicate()

    report = run_heapspy("report", str(path), "--format", "json")
    assert report.returncode == 0, report.stderr
    body = json.loads(report.stdout)
    assert body["sample_index"] == "space"
    assert body["census"]["objects"] > 0 and body["census"]["partial"] is False
    text = run_heapspy("report", str(path))
    assert text.returncode == 0 and "\nCensus: " in text.stdout, text.stderr
    assert "Total Allocated Memory" not in text.stdout
    html = tmp_path / "census.html"
    graph = run_heapspy("flamegraph", str(path), "-o", str(html))
    assert graph.returncode == 0, graph.stderr
    assert "census_app.CACHE" in html.read_text()
    diff = run_heapspy("diff", str(path), str(path))
    assert diff.returncode == 0, diff.stderr
    assert "No site changed" in diff.stdout


def test_ctrl_c_leaves_a_partial_census(spawn: Spawn, tmp_path: Path) -> None:
    target, _truth = _start(spawn, None)
    census = subprocess.Popen(
        [sys.executable, "-m", "heapspy", "census", str(target.pid), "--dump-dir",
         str(tmp_path), "--slice", "1ms", "--pause", "1s"],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert census.stderr is not None
        line = census.stderr.readline()
        assert "taking a census" in line, line
        census.send_signal(signal.SIGINT)
        out, err = census.communicate(timeout=60)
    finally:
        census.kill()
    assert census.returncode == 0, err
    path = Path(out.strip())
    side = json.loads(path.with_name(path.name.replace(".pb.gz", ".json")).read_text())
    assert side["partial"] is True and "interrupted" in side["stopped"]
    assert "PARTIAL" in err
    assert read_profile(path).comments[-1].startswith("partial census")
    assert target.proc.poll() is None  # the target runs on
    assert not [n for n in os.listdir("/tmp") if n.startswith(f"heapspy-{target.pid}-")]


def test_attach_takes_a_census_first_and_says_what_the_heap_held(
    spawn: Spawn, tmp_path: Path
) -> None:
    target, _truth = _start(spawn, None)
    holder = subprocess.Popen(
        [sys.executable, "-m", "heapspy", "attach", str(target.pid), "--dump-dir",
         str(tmp_path)],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stderr is not None
        lines = []
        while not any("census of the heap at attach:" in line for line in lines):
            lines.append(holder.stderr.readline())
            assert lines[-1], "".join(lines)
        status = run_heapspy("status", str(target.pid))
        assert status.returncode == 0, status.stderr
        assert f"{target.pid}: heap at attach (census): " in status.stdout, status.stdout
        holder.send_signal(signal.SIGINT)
        out, err = holder.communicate(timeout=60)
    finally:
        holder.kill()
    assert holder.returncode == 0, err
    (census,) = tmp_path.glob("census-*.pb.gz")
    side = json.loads(census.with_name(census.name.replace(".pb.gz", ".json")).read_text())
    assert side["roots"][0][0] == "census_app.CACHE" and not side["partial"]
    assert "; heap at attach " in err and "heap at attach (census): " in out
    (final,) = tmp_path.glob("heap-*-final.pb.gz")
    final_side = json.loads(final.with_name(final.name.replace(".pb.gz", ".json")).read_text())
    assert final_side["census"]["path"] == str(census)
    assert any(c.startswith("heap at attach (census)") for c in read_profile(final).comments)


def test_attach_ended_early_keeps_a_partial_census_and_no_census_skips_it(
    spawn: Spawn, tmp_path: Path
) -> None:
    target, _truth = _start(spawn, None, cache=LONG_CENSUS)
    early = tmp_path / "early"
    out = run_heapspy(
        "attach", str(target.pid), "--duration", "100ms", "--dump-dir", str(early), timeout=120
    )
    assert out.returncode == 0, out.stderr
    (census,) = early.glob("census-*.pb.gz")
    side = json.loads(census.with_name(census.name.replace(".pb.gz", ".json")).read_text())
    assert side["partial"] is True, side
    skipped = tmp_path / "skipped"
    out = run_heapspy(
        "attach", str(target.pid), "--duration", "1s", "--dump-dir", str(skipped), "--no-census"
    )
    assert out.returncode == 0, out.stderr
    assert not list(skipped.glob("census-*"))
    (final,) = skipped.glob("heap-*-final.pb.gz")
    assert "census" not in out.stderr
    # the dump says its live heap is only what was allocated since the attach
    notes = read_profile(final).comments
    skipped_note = "heap at attach not counted (attached with --no-census)"
    assert any(n.startswith(skipped_note) for n in notes), notes


def test_attach_shows_the_census_progress_and_ctrl_c_keeps_it_partial(
    spawn: Spawn, tmp_path: Path
) -> None:
    target, _truth = _start(spawn, None, cache=LONG_CENSUS)
    master, slave = pty.openpty()  # a terminal: the progress line is for people
    holder = subprocess.Popen(
        [sys.executable, "-m", "heapspy", "attach", str(target.pid), "--dump-dir",
         str(tmp_path)],
        stderr=slave, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    try:
        while not re.search(rb"census: [\d,]+ objects, .* target paused at most \d+ ms", seen):
            ready = select.select([master], [], [], 60)[0]
            assert ready, seen
            seen += os.read(master, 4096)
        holder.send_signal(signal.SIGINT)
        out, _ = holder.communicate(timeout=60)
    finally:
        holder.kill()
        os.close(master)
    assert holder.returncode == 0, seen
    (census,) = tmp_path.glob("census-*.pb.gz")
    side = json.loads(census.with_name(census.name.replace(".pb.gz", ".json")).read_text())
    assert side["partial"] is True and side["stopped"].startswith("interrupted"), side
    assert "heap at attach (census (partial)): " in out, out


@pytest.mark.parametrize("interp", interpreter_params())
def test_native_and_python_walks_agree(interp: Interpreter) -> None:
    """The shim's walk and the pure-Python fallback count the same roots the same way;
    what the target drops while the native walk holds it is freed by the target's main
    thread, not by the walk."""
    agent = Path(__file__).resolve().parent.parent / "agent"
    shim = next((agent / "heapspy_agent").glob("_heapspy_shim*.so"))
    script = Path(__file__).resolve().parent / "targets" / "census_twin.py"
    out = subprocess.run(
        [*interp.argv, str(script), str(agent), str(shim)],
        capture_output=True, text=True, timeout=120, env={"PATH": os.environ["PATH"]},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("TWIN ")]
    twin = json.loads(line[len("TWIN ") :])
    assert twin["walkers"] == ["native", "python"]
    assert twin["python"], twin
    for key, (objects, nbytes) in twin["python"].items():
        got = twin["native"].get(key, [0, 0])
        assert abs(got[1] - nbytes) <= 0.1 * nbytes, (key, got, nbytes)
        assert abs(got[0] - objects) <= 0.1 * objects, (key, got, objects)
    assert twin["orphans"] >= 1 and twin["orphan_freed"], twin
    assert twin["unloaded"], twin  # not while a walk was alive, then yes
    assert twin["gc_enabled_after"]
    gc_pass = twin["gc_pass"]
    if interp.version < (3, 14):
        assert gc_pass is None  # one pass (3.12+: PyUnstable_GC_VisitObjects)
    else:  # the gc's lists a slice at a time: nothing that lived throughout missed
        assert gc_pass["done"] == 1 and gc_pass["steps"] >= 10, gc_pass
        assert gc_pass["missing"] == 0 and gc_pass["duplicates"] == 0, gc_pass
        assert gc_pass["gave_up"] == -1 and gc_pass["again_duplicates"] == 0, gc_pass
