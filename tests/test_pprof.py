"""The pprof writer and reader, checked against golden bytes, Go's formula and Go's pprof.

Golden files live in tests/golden/. After an intended change to the writer's output,
regenerate them with ``HEAPSPY_REGEN_GOLDEN=1 python -m pytest tests/test_pprof.py``
(the regenerating tests skip, saying so), check the new files with
``go tool pprof -raw tests/golden/heap_small.pb.gz``, and commit them.
"""

from __future__ import annotations

import gzip
import math
import random
import re
from pathlib import Path
from typing import Callable

import pytest
from gotool import pprof, top
from interpreters import Interpreter, interpreter_params
from support import TARGETS, Target, golden, run_heapspy

from heapspy import profile_pb2 as pb
from heapspy.errors import DumpError
from heapspy.frame_names import from_source, module_name
from heapspy.model import Frame, HeapProfile, SiteCounts, Stack
from heapspy.pprof import (
    SAMPLE_TYPES,
    build_profile,
    decode_profile,
    encode_profile,
    read_profile,
    scale_heap_sample,
)

Spawn = Callable[..., Target]
RATE = 512 * 1024

MAIN = Frame("main", "/app/app.py", 40)
SERVE = Frame("serve", "/app/app.py", 30)
LEAK = Frame("leak_cache", "/app/cache.py", 12)
LEAK_OTHER_LINE = Frame("leak_cache", "/app/cache.py", 17)
PARSE = Frame("parse", "/app/parse.py", 7)
TRACKED = Frame("numpy_empty", "/app/arrays.py", 3)


def small_profile() -> HeapProfile:
    """The golden profile: shared frames, one function on two lines, exact and sampled."""
    return HeapProfile(
        rate=RATE,
        time_ns=1_700_000_000_123_456_789,
        duration_ns=30_000_000_000,
        sampled=(
            ((MAIN, SERVE, LEAK), SiteCounts(40, 40 * 1024 * 1024, 38, 38 * 1024 * 1024)),
            ((MAIN, SERVE, LEAK_OTHER_LINE), SiteCounts(3, 3 * 4096, 1, 4096)),
            ((MAIN, PARSE), SiteCounts(7, 7 * 100, 0, 0)),
        ),
        exact=(((MAIN, TRACKED), SiteCounts(2, 2 * 8000, 2, 2 * 8000)),),
        comments=("heapspy 0.1.0", "pid 4242 rule rss>1GiB"),
    )


def go_scale(count: int, size: int, rate: int) -> tuple[int, int]:
    """Go's scaleHeapSample, written out again here so the test checks the writer."""
    if count == 0 or size == 0:
        return 0, 0
    if rate <= 1:
        return count, size
    scale = 1 / (1 - math.exp(-(size / count) / rate))
    return int(count * scale), int(size * scale)


def raw_message(data: bytes) -> pb.Profile:
    return pb.Profile.FromString(gzip.decompress(data))


# --- golden bytes and determinism ------------------------------------------------------


def test_golden_bytes() -> None:
    data = encode_profile(small_profile())
    expected = golden("heap_small.pb.gz", data)
    # The gzip header is fixed (mtime 0, no name, OS 255): compare it exactly. The
    # deflate stream may legitimately differ between zlib builds (zlib-ng), so the
    # payload is compared after decompression, which is what the writer controls.
    assert data[:10] == expected[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    assert gzip.decompress(data) == gzip.decompress(expected)


def test_output_does_not_depend_on_site_order() -> None:
    profile = small_profile()
    shuffled = list(profile.sampled)
    random.Random(7).shuffle(shuffled)
    reordered = HeapProfile(
        rate=profile.rate,
        time_ns=profile.time_ns,
        duration_ns=profile.duration_ns,
        sampled=tuple(reversed(shuffled)),
        exact=profile.exact,
        comments=profile.comments,
    )
    assert encode_profile(reordered) == encode_profile(profile) == encode_profile(profile)


def test_equal_frames_that_are_distinct_objects_intern_once() -> None:
    # The writer looks frames up by identity first; equal copies must still share a
    # location, and the result must not depend on which objects carried the frames.
    copy = [Frame(f.function, f.filename, f.line) for f in (MAIN, SERVE, LEAK)]
    profile = HeapProfile(
        rate=RATE,
        time_ns=0,
        duration_ns=0,
        sampled=(
            ((MAIN, SERVE, LEAK), SiteCounts(1, 100, 1, 100)),
            ((copy[0], copy[1]), SiteCounts(1, 100, 1, 100)),
        ),
    )
    message = build_profile(profile)
    assert len(message.location) == 3
    assert len(message.function) == 3


# --- structure ---------------------------------------------------------------------------


def test_string_table_functions_locations_and_leaf_first_order() -> None:
    message = raw_message(encode_profile(small_profile()))
    strings = list(message.string_table)
    assert strings[0] == ""
    assert len(set(strings)) == len(strings)
    functions = {f.id: (strings[f.name], strings[f.filename]) for f in message.function}
    # leak_cache appears on two lines: one function, two locations
    assert sorted(functions.values()) == sorted(
        {(f.function, f.filename) for f in (MAIN, SERVE, LEAK, PARSE, TRACKED)}
    )
    locations = {
        loc.id: (functions[loc.line[0].function_id], loc.line[0].line) for loc in message.location
    }
    assert len(locations) == 6
    assert all(loc.mapping_id == 1 for loc in message.location)
    assert message.mapping[0].has_functions and message.mapping[0].has_line_numbers
    stacks = [[locations[i] for i in sample.location_id] for sample in message.sample]
    # leaf first: the allocating function comes before its callers
    assert [(("leak_cache", "/app/cache.py"), 12), (("serve", "/app/app.py"), 30)] == stacks[
        [s[0][0][0] for s in stacks].index("leak_cache")
    ][:2]
    assert all(stack[-1] == (("main", "/app/app.py"), 40) for stack in stacks)


def test_header_fields() -> None:
    message = raw_message(encode_profile(small_profile()))
    strings = message.string_table
    assert [(strings[t.type], strings[t.unit]) for t in message.sample_type] == list(SAMPLE_TYPES)
    assert [strings[t] for t in (message.period_type.type, message.period_type.unit)] == [
        "space",
        "bytes",
    ]
    assert message.period == RATE
    assert strings[message.default_sample_type] == "inuse_space"
    assert message.time_nanos == 1_700_000_000_123_456_789
    assert message.duration_nanos == 30_000_000_000
    assert [strings[c] for c in message.comment] == ["heapspy 0.1.0", "pid 4242 rule rss>1GiB"]


def test_bytes_label_is_the_average_object_size() -> None:
    decoded = decode_profile(encode_profile(small_profile()))
    by_leaf = {sample.stack[-1]: sample for sample in decoded.samples}
    assert by_leaf[LEAK].label("bytes") == 1024 * 1024
    assert by_leaf[LEAK_OTHER_LINE].label("bytes") == 4096
    assert by_leaf[PARSE].label("bytes") == 100
    assert by_leaf[TRACKED].label("bytes") == 8000
    message = raw_message(encode_profile(small_profile()))
    for sample in message.sample:
        (label,) = sample.label
        assert message.string_table[label.key] == "bytes"
        assert message.string_table[label.num_unit] == "bytes"


# --- values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "size", "rate"),
    [(40, 40 << 20, RATE), (3, 3 * 70, RATE), (1, 1, 4096), (5, 5 * 4096, 4096), (9, 900, 2)],
)
def test_scale_matches_go_formula(count: int, size: int, rate: int) -> None:
    assert scale_heap_sample(count, size, rate) == go_scale(count, size, rate)
    assert scale_heap_sample(count, size, rate)[0] >= count


def test_scale_edge_cases() -> None:
    assert scale_heap_sample(0, 100, RATE) == (0, 0)
    assert scale_heap_sample(5, 0, RATE) == (0, 0)
    assert scale_heap_sample(5, 500, 1) == (5, 500)
    assert scale_heap_sample(5, 500, 0) == (5, 500)


def test_sampled_sites_are_upscaled_alloc_and_inuse_independently() -> None:
    # In-use blocks are larger on average than all allocations: the two pairs must get
    # different scale factors, each from its own average size.
    counts = SiteCounts(
        alloc_objects=100, alloc_bytes=100 * 64, inuse_objects=2, inuse_bytes=2 * 9000
    )
    profile = HeapProfile(rate=RATE, time_ns=0, duration_ns=0, sampled=(((MAIN, LEAK), counts),))
    (sample,) = decode_profile(encode_profile(profile)).samples
    assert sample.values == (*go_scale(100, 6400, RATE), *go_scale(2, 18000, RATE))
    assert sample.values[0] > 100 * 8000  # 64-byte blocks: ~8192x upscaling
    assert sample.values[2] < 2 * 100


def test_exact_sites_are_never_upscaled() -> None:
    counts = SiteCounts(7, 7 * 64, 3, 3 * 64)
    profile = HeapProfile(rate=RATE, time_ns=0, duration_ns=0, exact=(((MAIN, TRACKED), counts),))
    (sample,) = decode_profile(encode_profile(profile)).samples
    assert sample.values == (7, 448, 3, 192)


def test_rate_one_means_exact_and_period_one() -> None:
    counts = SiteCounts(7, 7 * 64, 3, 3 * 64)
    profile = HeapProfile(rate=1, time_ns=0, duration_ns=0, sampled=(((MAIN, LEAK), counts),))
    decoded = decode_profile(encode_profile(profile))
    assert decoded.samples[0].values == (7, 448, 3, 192)
    assert decoded.period == 1


def test_same_stack_sampled_and_exact_becomes_one_sample() -> None:
    stack: Stack = (MAIN, LEAK)
    profile = HeapProfile(
        rate=RATE,
        time_ns=0,
        duration_ns=0,
        sampled=((stack, SiteCounts(2, 2 << 20, 2, 2 << 20)),),
        exact=((stack, SiteCounts(10, 1000, 5, 500)),),
    )
    (sample,) = decode_profile(encode_profile(profile)).samples
    alloc = go_scale(2, 2 << 20, RATE)
    assert sample.values == (alloc[0] + 10, alloc[1] + 1000, alloc[0] + 5, alloc[1] + 500)
    assert sample.label("bytes") == ((2 << 20) + 1000) // 12


def test_empty_sites_are_left_out_and_empty_profile_is_valid() -> None:
    profile = HeapProfile(
        rate=RATE, time_ns=0, duration_ns=0, sampled=(((MAIN, LEAK), SiteCounts()),)
    )
    decoded = decode_profile(encode_profile(profile))
    assert decoded.samples == ()
    assert decoded.sample_type_names == tuple(name for name, _ in SAMPLE_TYPES)


# --- reading -----------------------------------------------------------------------------


def test_decode_round_trip_gzipped_and_raw() -> None:
    data = encode_profile(small_profile())
    decoded = decode_profile(data)
    assert decode_profile(gzip.decompress(data)) == decoded
    assert decoded.comments == ("heapspy 0.1.0", "pid 4242 rule rss>1GiB")
    assert decoded.period_type == ("space", "bytes")
    assert decoded.default_sample_type == "inuse_space"
    assert decoded.sample_types[decoded.default_index()] == ("inuse_space", "bytes")
    stacks = {sample.stack for sample in decoded.samples}
    assert stacks == {stack for stack, _ in small_profile().sampled + small_profile().exact}


def test_decode_expands_inlined_lines_and_unsymbolized_locations() -> None:
    # Profiles from other tools: a location with two lines (line[0] is the inlined
    # callee) and one with no line at all.
    message = pb.Profile(string_table=["", "alloc_space", "bytes", "inner", "outer", "f.go"])
    message.sample_type.add(type=1, unit=2)
    message.function.add(id=1, name=3, filename=5)
    message.function.add(id=2, name=4, filename=5)
    inlined = message.location.add(id=1)
    inlined.line.add(function_id=1, line=10)
    inlined.line.add(function_id=2, line=20)
    message.location.add(id=2, address=0x1234)
    message.sample.add(location_id=[1, 2], value=[64])
    (sample,) = decode_profile(message.SerializeToString()).samples
    assert sample.stack == (
        Frame("0x1234", "", 0),
        Frame("outer", "f.go", 20),
        Frame("inner", "f.go", 10),
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"this is not a profile", "does not parse as a pprof protobuf"),
        (b"\x1f\x8b\x08\x00garbage", "damaged gzip"),
        (gzip.compress(b"\x0a\x02\x08\x01"), "no string table"),
        (pb.Profile(string_table=["x"]).SerializeToString(), "no string table"),
    ],
)
def test_decode_rejects_non_profiles(data: bytes, message: str) -> None:
    with pytest.raises(DumpError, match=message):
        decode_profile(data)


def test_decode_rejects_dangling_location() -> None:
    message = pb.Profile(string_table=["", "space", "bytes"])
    message.sample_type.add(type=1, unit=2)
    message.sample.add(location_id=[9], value=[1])
    with pytest.raises(DumpError, match="unknown location id 9"):
        decode_profile(message.SerializeToString())


def test_read_profile_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DumpError, match=r"The dump .*missing\.pb\.gz does not exist\.$"):
        read_profile(tmp_path / "missing.pb.gz")
    with pytest.raises(DumpError, match="is a directory"):
        read_profile(tmp_path)
    empty = tmp_path / "empty.pb.gz"
    empty.write_bytes(b"")
    with pytest.raises(DumpError, match="is empty"):
        read_profile(empty)
    text = tmp_path / "notes.pb.gz"
    text.write_text("hello\n")
    with pytest.raises(
        DumpError, match=r"The file .*notes\.pb\.gz is not a usable pprof dump: it does not parse"
    ):
        read_profile(text)


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
    # before 3.11 a generator expression has no qualified name, nor a caller that proves one
    names.add(
        "comprehensions.<locals>.<genexpr>" if version >= (3, 11) else "anonymous_frames.<genexpr>"
    )
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
