"""Go's pprof reads what heapspy writes; frames CPython names in angle brackets.

The writer and reader alone (golden bytes, interning, Go's formula) are tested without
any process in tests/unit/test_pprof_writer.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest
from gotool import pprof, top
from interpreters import Interpreter, interpreter_params
from pprof_samples import (
    LEAK,
    MAIN,
    RATE,
    SERVE,
    go_scale,
    small_profile,
)
from support import TARGETS, Target, run_heapspy

from heapspy import profile_pb2 as pb
from heapspy.frame_names import from_source, module_name
from heapspy.model import Frame, HeapProfile, SiteCounts, Stack
from heapspy.pprof import (
    build_profile,
    decode_profile,
    encode_profile,
    read_profile,
)

Spawn = Callable[..., Target]


# --- Go's pprof reads what we write ---------------------------------------------------------


@pytest.fixture
def small_dump(tmp_path: Path) -> Path:
    path = tmp_path / "small.pb.gz"
    path.write_bytes(encode_profile(small_profile()))
    return path


def _scaled(counts: SiteCounts) -> tuple[int, int, int, int]:
    return (
        *go_scale(counts.alloc_objects, counts.alloc_bytes, RATE),
        *go_scale(counts.inuse_objects, counts.inuse_bytes, RATE),
    )


def test_go_pprof_raw_shows_sample_types_period_and_labels(small_dump: Path) -> None:
    out = pprof("-raw", small_dump, cwd=small_dump.parent)
    assert "PeriodType: space bytes" in out
    assert f"Period: {RATE}" in out
    assert "Duration: 30s" in out
    assert "heapspy 0.1.0" in out
    assert (
        "alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes[dflt]" in out
    )
    assert "bytes:[1048576 bytes]" in out
    leak_values = " ".join(str(v) for v in _scaled(small_profile().sampled[0][1]))
    assert leak_values in " ".join(out.split())


def test_go_pprof_top_default_is_inuse_space(small_dump: Path) -> None:
    rows = top(small_dump, cwd=small_dump.parent)
    leak_inuse = _scaled(small_profile().sampled[0][1])[3]
    other_line = _scaled(small_profile().sampled[1][1])[3]
    assert rows[0].name == "leak_cache"
    assert rows[0].flat == leak_inuse + other_line
    names = {row.name: row for row in rows}
    assert names["main"].flat == 0
    assert names["main"].cum == leak_inuse + other_line + 16000
    assert names["main"].cum_pct == 100.0
    assert names["numpy_empty"].flat == 16000  # exact: as recorded


@pytest.mark.parametrize(
    ("index", "column", "leader"),
    [
        ("alloc_objects", 0, "parse"),
        ("alloc_space", 1, "leak_cache"),
        ("inuse_objects", 2, "leak_cache"),
        ("inuse_space", 3, "leak_cache"),
    ],
)
def test_go_pprof_sample_index(small_dump: Path, index: str, column: int, leader: str) -> None:
    rows = top(small_dump, f"-sample_index={index}", cwd=small_dump.parent)
    expected: dict[str, int] = {}
    for stack, counts in small_profile().sampled:
        expected[stack[-1].function] = expected.get(stack[-1].function, 0) + _scaled(counts)[column]
    expected["numpy_empty"] = (2, 16000, 2, 16000)[column]
    assert rows[0].name == leader
    got = {row.name: row.flat for row in rows if row.flat}
    assert got == {name: value for name, value in expected.items() if value}


def test_go_pprof_lines(small_dump: Path) -> None:
    rows = top(small_dump, "-lines", cwd=small_dump.parent)
    assert rows[0].name == "leak_cache /app/cache.py:12"
    assert rows[0].flat == _scaled(small_profile().sampled[0][1])[3]
    assert any(row.name == "leak_cache /app/cache.py:17" for row in rows)


def test_go_pprof_diff_base(tmp_path: Path) -> None:
    base = tmp_path / "base.pb.gz"
    new = tmp_path / "new.pb.gz"
    grown = SiteCounts(0, 0, 50, 50 * 1024 * 1024)
    base.write_bytes(encode_profile(small_profile()))
    profile = small_profile()
    new.write_bytes(
        encode_profile(
            HeapProfile(
                rate=profile.rate,
                time_ns=profile.time_ns + 60 * 10**9,
                duration_ns=profile.duration_ns,
                sampled=(((MAIN, SERVE, LEAK), grown), *profile.sampled[1:]),
                exact=profile.exact,
            )
        )
    )
    rows = top(new, f"-diff_base={base}", cwd=tmp_path)
    before = _scaled(small_profile().sampled[0][1])[3]
    after = go_scale(50, 50 * 1024 * 1024, RATE)[1]
    assert rows[0].name == "leak_cache"
    assert rows[0].flat == after - before
    unchanged = [row for row in rows if row.name in ("parse", "numpy_empty")]
    assert all(row.flat == 0 for row in unchanged)


# --- frames CPython names in angle brackets --------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "module"),
    [
        ("/srv/leaky_worker.py", "leaky_worker"),
        ("/srv/myapp/__init__.py", "myapp"),
        ("/srv/myapp/__main__.py", "myapp.__main__"),
        ("/usr/bin/gunicorn", "gunicorn"),
        ("<frozen importlib._bootstrap>", "importlib._bootstrap"),
        ("<string>", "string"),
        ("/srv/odd<name>.py", "oddname"),
        ("", "module"),
    ],
)
def test_module_name_comes_from_the_file_name(filename: str, module: str) -> None:
    assert module_name(filename) == module


def _angled_profile() -> HeapProfile:
    """Stacks as 3.8-3.10 sample them (bare co_name) and as 3.11+ do (co_qualname)."""
    module = Frame("<module>", "/srv/worker.py", 30)
    other_module = Frame("<module>", "/srv/jobs/__init__.py", 3)
    fetch = Frame("fetch_report", "/srv/worker.py", 12)
    kinds = ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>", "<lambda>")
    stacks: list[Stack] = [(module,), (module, other_module)]
    stacks += [(module, fetch, Frame(kind, "/srv/worker.py", 13)) for kind in kinds]
    stacks += [(module, Frame("<listcomp>", "/srv/worker.py", 31))]
    stacks += [(module, fetch, Frame("fetch_report.<locals>.<genexpr>", "/srv/worker.py", 14))]
    stacks += [(Frame("<listcomp>", "/srv/worker.py", 40),)]  # truncated: no caller
    return HeapProfile(
        rate=1,
        time_ns=1,
        duration_ns=1,
        exact=tuple(
            (stack, SiteCounts(1, 1000 * (i + 1), 1, 1000 * (i + 1)))
            for i, stack in enumerate(stacks)
        ),
    )


def test_angled_frames_get_names_pprof_shows(tmp_path: Path) -> None:
    dump = tmp_path / "angled.pb.gz"
    dump.write_bytes(encode_profile(_angled_profile()))
    expected = {
        "worker",
        "jobs",
        "fetch_report",
        "fetch_report.<locals>.<listcomp>",
        "fetch_report.<locals>.<dictcomp>",
        "fetch_report.<locals>.<setcomp>",
        "worker.<genexpr>",  # a generator runs where it is consumed: its caller proves nothing
        "worker.<lambda>",
        "worker.<listcomp>",
        "fetch_report.<locals>.<genexpr>",
    }
    assert {row.name for row in top(dump, cwd=tmp_path)} == expected
    # heapspy's own readers see the same names as pprof
    decoded = {frame.function for sample in read_profile(dump).samples for frame in sample.stack}
    assert decoded == expected
    traces = pprof("-traces", dump, cwd=tmp_path)
    assert "<unknown>" not in traces
    assert re.search(r"fetch_report\.<locals>\.<listcomp>\n\s+fetch_report\n\s+worker\n", traces)


def _expected_names(version: tuple[int, int]) -> set[str]:
    names = {"anonymous_frames", "comprehensions", "comprehensions.<locals>.<lambda>"}
    if version < (3, 12):  # 3.12 inlines list, dict and set comprehensions (PEP 709)
        names |= {
            f"comprehensions.<locals>.<{kind}>" for kind in ("listcomp", "dictcomp", "setcomp")
        }
        names.add("anonymous_frames.<listcomp>")
    # before 3.11 a generator expression's qualified name comes from its source
    names.add("comprehensions.<locals>.<genexpr>")
    return names


@pytest.mark.parametrize("interp", interpreter_params())
def test_go_pprof_names_every_anonymous_frame_of_a_real_target(
    interp: Interpreter, spawn: Spawn, tmp_path: Path
) -> None:
    target = spawn(interp, "anonymous_frames.py")
    dumps = tmp_path / "dumps"
    out = run_heapspy(
        "attach", str(target.proc.pid), "--duration", "1.5s", "--rate", "4KiB",
        "--dump-dir", str(dumps), timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (dump,) = dumps.glob("*-final.pb.gz")
    names = {row.name for row in top(dump, cwd=tmp_path)}
    assert names == _expected_names(interp.version), names
    traces = pprof("-traces", dump, cwd=tmp_path)
    assert "<unknown>" not in traces
    listing = pprof("-list", "^anonymous_frames$", dump, cwd=tmp_path)
    source = TARGETS / "anonymous_frames.py"
    assert f"ROUTINE ======================== anonymous_frames in {source}" in listing
    assert "KEEP.append(bytearray(BLOCK))" in listing  # the module's own lines, with values


def test_fields_our_schema_leaves_out_survive_a_round_trip() -> None:
    """heapspy/profile.proto declares only what heapspy uses; what other tools write
    (here pprof's doc_url, field 15, and a Function's start_line, field 5) is kept as
    unknown fields, so re-serializing another tool's profile loses nothing."""
    message = build_profile(small_profile())
    function = message.function[0]
    function_bytes = function.SerializeToString() + b"\x28\x07"  # start_line = 7
    function.Clear()
    function.MergeFromString(function_bytes)
    data = message.SerializeToString() + b"\x78\x01"  # doc_url = string 1
    again = pb.Profile.FromString(data)
    assert again.SerializeToString() == data
    assert decode_profile(data).samples == decode_profile(encode_profile(small_profile())).samples


@pytest.mark.parametrize(
    ("code_name", "enclosing", "qualified"),
    [
        ("<genexpr>", "fetch_report", "fetch_report.<locals>.<genexpr>"),
        ("<listcomp>", "Shipper.flush", "Shipper.flush.<locals>.<listcomp>"),
        ("<lambda>", "top.<locals>.<lambda>", "top.<locals>.<lambda>"),
        ("<genexpr>", "top.<locals>.<lambda>", "top.<locals>.<lambda>.<locals>.<genexpr>"),
        ("<genexpr>", "<module>", None),  # module level: the writer names it
        ("<genexpr>", "/srv/worker.py:12", None),  # the source could not be read
        ("fetch_report", "fetch_report", None),  # not anonymous
        ("<module>", "<module>", None),
    ],
)
def test_from_source_qualifies_anonymous_code_like_3_11(
    code_name: str, enclosing: str, qualified: str | None
) -> None:
    assert from_source(code_name, enclosing) == qualified
