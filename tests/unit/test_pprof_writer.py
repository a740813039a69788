"""The pprof writer and reader alone, no process: golden bytes, interning, Go's formula.

Golden files live in tests/golden/. After an intended change to the writer's output,
regenerate them with ``HEAPSPY_REGEN_GOLDEN=1 python -m pytest tests/unit/test_pprof_writer.py``
(the regenerating tests skip, saying so), check the new files with
``go tool pprof -raw tests/golden/heap_small.pb.gz``, and commit them. Go's own pprof
reading what we write is tests/test_pprof.py.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest
from pprof_samples import (
    LEAK,
    LEAK_OTHER_LINE,
    MAIN,
    PARSE,
    RATE,
    SERVE,
    TRACKED,
    go_scale,
    raw_message,
    small_profile,
)
from support import golden

from heapspy import profile_pb2 as pb
from heapspy.errors import DumpError
from heapspy.model import Frame, HeapProfile, SiteCounts, Stack
from heapspy.pprof import (
    SAMPLE_TYPES,
    build_profile,
    decode_profile,
    encode_profile,
    read_profile,
    scale_heap_sample,
)

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
