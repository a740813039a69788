"""``heapspy report``: summary from the sidecar, a top table that agrees with Go's pprof.

The text output is also compared with tests/golden/report_*.txt; regenerate those with
``HEAPSPY_REGEN_GOLDEN=1 python -m pytest tests/test_report.py`` after an intended change.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from gotool import top
from support import golden

from heapspy.dumps import sidecar_path
from heapspy.errors import DumpError, UsageError
from heapspy.model import Frame, HeapProfile, SiteCounts
from heapspy.pprof import encode_profile, read_profile
from heapspy.reporters.report import (
    Report,
    ReportConfig,
    build_report,
    report_to_json,
    size_class_label,
)
from heapspy.reporters.sites import check_sample_index, is_sampled
from heapspy.reporters.totals import size_class_of
from heapspy.scaling import relative_error, sampling_variance

MAIN = Frame("main", "/app/app.py", 5)
WALK = Frame("walk", "/app/tree.py", 20)
BUILD = Frame("build_node", "/app/tree.py", 31)
INIT_A = Frame("__init__", "/app/a.py", 3)
INIT_B = Frame("__init__", "/app/b.py", 8)
SIDECAR_TOTALS = {
    "allocated_bytes": 128,
    "allocations": 4,
    "freed_bytes": 64,
    "frees": 2,
    "size_classes": [[3, 1], [5, 2], [6, 1]],
}


def exact_profile() -> HeapProfile:
    """Exact values, so every figure can be checked by hand (and against pprof)."""
    return HeapProfile(
        rate=1,
        time_ns=1_700_000_000_000_000_000,
        duration_ns=12_000_000_000,
        exact=(
            # recursion: walk appears twice in one stack, its cum counts the value once
            ((MAIN, WALK, WALK, BUILD), SiteCounts(10, 10_000, 8, 8_000)),
            ((MAIN, WALK, INIT_A), SiteCounts(100, 3_200, 50, 1_600)),
            ((MAIN, INIT_B), SiteCounts(4, 4 << 20, 1, 1 << 20)),
            ((MAIN,), SiteCounts(1, 24, 1, 24)),
        ),
        comments=("heapspy test",),
    )


def write_dump(directory: Path, sidecar: object = None, name: str = "heap.pb.gz") -> Path:
    dump = directory / name
    dump.write_bytes(encode_profile(exact_profile()))
    if sidecar is not None:
        sidecar_path(dump).write_text(json.dumps(sidecar))
    return dump


def golden_text(name: str, text: str, tmp_path: Path) -> None:
    text = text.replace(str(tmp_path), "<tmp>")
    assert text == golden(name, text)


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heapspy", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


# --- formatting helpers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "k"), [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (1024, 10), (1025, 11)]
)
def test_size_class_of_matches_sidecar_definition(size: int, k: int) -> None:
    assert size_class_of(size) == k
    if size > 1:
        assert 2 ** (k - 1) < size <= 2**k


def test_size_class_label() -> None:
    assert size_class_label(10) == "(512 B, 1.0 KiB]"
    assert size_class_label(0) == "0-1 B"


def test_sidecar_path() -> None:
    assert sidecar_path(Path("/d/heap-1-x.pb.gz")) == Path("/d/heap-1-x.json")
    assert sidecar_path(Path("/d/heap.pb")) == Path("/d/heap.json")


def test_bad_sample_index_lists_the_valid_ones() -> None:
    with pytest.raises(UsageError) as info:
        check_sample_index("inuse")
    for name in ("inuse_space", "alloc_space", "inuse_objects", "alloc_objects"):
        assert name in info.value.message
    assert info.value.exit_code == 2
    with pytest.raises(UsageError):
        ReportConfig(dump=Path("x"), top=0)


# --- the report ----------------------------------------------------------------------------


def test_totals_come_from_the_sidecar(tmp_path: Path) -> None:
    dump = write_dump(tmp_path, {"totals": SIDECAR_TOTALS, "rule": "final"})
    report = build_report(ReportConfig(dump=dump))
    assert report.sidecar_status == "found"
    assert (report.totals.allocated_bytes, report.totals.allocations) == (128, 4)
    assert (report.totals.live_bytes, report.totals.live_objects) == (64, 2)
    text = report.render("text")
    assert "Total Allocated Memory: 128 B\nNumber of Allocations: 4\n" in text
    assert "Live Heap Estimate: 64 B in 2 objects" in text
    assert "(16 B, 32 B]" in text


def test_without_sidecar_the_profile_alone_is_used_and_said(tmp_path: Path) -> None:
    dump = write_dump(tmp_path)
    report = build_report(ReportConfig(dump=dump))
    assert report.sidecar_status == "missing"
    text = report.render("text")
    assert f"No totals sidecar at {tmp_path / 'heap.json'}" in text
    allocated = 10_000 + 3_200 + (4 << 20) + 24
    assert report.totals.allocated_bytes == allocated
    assert report.totals.allocations == 115
    assert report.totals.live_bytes == 8_000 + 1_600 + (1 << 20) + 24
    # approximate classes from each site's average size: 1000 B, 32 B, 1 MiB, 24 B
    assert dict(report.totals.size_classes) == {10: 10, 5: 101, 20: 4}


def test_sidecar_with_null_totals(tmp_path: Path) -> None:
    dump = write_dump(tmp_path, {"totals": None})
    report = build_report(ReportConfig(dump=dump))
    assert report.sidecar_status == "no_totals"
    assert "holds no totals" in report.render("text")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"totals": 3}', "no 'totals' object"),
        ('{"totals": {"allocations": 1}}', "totals.allocated_bytes"),
        (
            json.dumps({"totals": {**SIDECAR_TOTALS, "size_classes": [[1]]}}),
            "malformed totals.size_classes",
        ),
    ],
)
def test_broken_sidecar_is_an_error(tmp_path: Path, content: str, message: str) -> None:
    dump = write_dump(tmp_path)
    sidecar_path(dump).write_text(content)
    with pytest.raises(DumpError, match=message):
        build_report(ReportConfig(dump=dump))


def test_functions_are_told_apart_by_file(tmp_path: Path) -> None:
    report = build_report(ReportConfig(dump=write_dump(tmp_path), sample_index="alloc_objects"))
    inits = [row for row in report.top if row.site.function == "__init__"]
    assert {row.site.filename: row.flat for row in inits} == {"/app/a.py": 100, "/app/b.py": 4}


def test_top_table_agrees_with_go_pprof(tmp_path: Path) -> None:
    # Go's pprof merges functions by name, so compare on names that are unique.
    dump = write_dump(tmp_path)
    for index in ("inuse_space", "alloc_space", "inuse_objects", "alloc_objects"):
        ours = build_report(ReportConfig(dump=dump, top=100, sample_index=index))
        theirs = {row.name: row for row in top(dump, f"-sample_index={index}", cwd=tmp_path)}
        for row in ours.top:
            if row.site.function == "__init__":
                continue
            go_row = theirs[row.site.function]
            assert (row.flat, row.cum) == (go_row.flat, go_row.cum), (index, row)
    default = build_report(ReportConfig(dump=dump))
    assert default.sample_index == "inuse_space"
    assert default.top[0].site.function == top(dump, cwd=tmp_path)[0].name == "__init__"


def test_recursion_counts_once_in_cum(tmp_path: Path) -> None:
    report = build_report(ReportConfig(dump=write_dump(tmp_path), top=100))
    walk = next(row for row in report.top if row.site.function == "walk")
    assert (walk.flat, walk.cum) == (0, 8_000 + 1_600)
    main = next(row for row in report.top if row.site.function == "main")
    assert main.cum == report.total and main.cum_pct == 100.0


def test_percentages_and_sum(tmp_path: Path) -> None:
    report = build_report(ReportConfig(dump=write_dump(tmp_path), top=100))
    assert report.total == 8_000 + 1_600 + (1 << 20) + 24
    running = 0.0
    for row in report.top:
        running += row.flat_pct
        assert row.sum_pct == pytest.approx(running)
        assert row.flat_pct == pytest.approx(100 * row.flat / report.total)
    assert report.top[-1].sum_pct == pytest.approx(100.0)
    flats = [(row.flat, row.cum) for row in report.top]
    assert flats == sorted(flats, key=lambda pair: (-pair[0], -pair[1]))


def test_top_limits_rows(tmp_path: Path) -> None:
    report = build_report(ReportConfig(dump=write_dump(tmp_path), top=2))
    assert len(report.top) == 2
    assert report.functions == 5


def test_json_structure(tmp_path: Path) -> None:
    dump = write_dump(tmp_path, {"totals": SIDECAR_TOTALS})
    document = json.loads(build_report(ReportConfig(dump=dump, top=3)).render("json"))
    assert document == report_to_json(build_report(ReportConfig(dump=dump, top=3)))
    assert document["schema"] == "heapspy-report/1"
    assert set(document) == {
        "schema", "dump", "sidecar", "sidecar_status", "sample_index", "unit", "period",
        "sampling", "time_nanos", "duration_nanos", "comments", "totals", "size_classes",
        "total", "functions", "top", "runtime", "memory", "census", "by", "stacks",
        "retainers",
    }  # fmt: skip
    assert document["by"] is None  # by function (--by KEY: a label)
    assert document["retainers"] is None  # no retainers in this sidecar
    assert document["census"] is None  # a heap dump, not a census
    # no mode in this sidecar: the period (1) says
    assert document["sampling"] == {"mode": "exact", "rate": 1, "frames": 64}
    assert document["totals"] == {
        "source": "sidecar",
        "allocated_bytes": 128,
        "allocations": 4,
        "freed_bytes": 64,
        "frees": 2,
        "live_bytes": 64,
        "live_objects": 2,
        "live_err95_pct": 0.0,  # allocated - freed: exact
    }
    assert document["size_classes"][0] == {"class": 3, "min_bytes": 5, "max_bytes": 8, "count": 1}
    assert document["top"][0] == {
        "function": "__init__",
        "filename": "/app/b.py",
        "flat": 1 << 20,
        "flat_pct": round(100 * (1 << 20) / document["total"], 2),
        "sum_pct": round(100 * (1 << 20) / document["total"], 2),
        "cum": 1 << 20,
        "cum_pct": round(100 * (1 << 20) / document["total"], 2),
        "flat_err95_pct": 0.0,  # an exact dump has no sampling error
        "cum_err95_pct": 0.0,
    }


def test_text_golden_with_sidecar(tmp_path: Path) -> None:
    dump = write_dump(tmp_path, {"totals": SIDECAR_TOTALS})
    golden_text(
        "report_sidecar.txt", build_report(ReportConfig(dump)).render("text"), tmp_path
    )


def test_text_golden_without_sidecar(tmp_path: Path) -> None:
    dump = write_dump(tmp_path)
    config = ReportConfig(dump, sample_index="alloc_objects")
    golden_text("report_no_sidecar.txt", build_report(config).render("text"), tmp_path)


# --- sampling error --------------------------------------------------------------------------

RATE = 512 * 1024


def sampled_profile() -> HeapProfile:
    """Raw sampled counts, upscaled by the writer as Go does; in-use = allocated."""

    def counts(samples: int, size: int) -> SiteCounts:
        return SiteCounts(samples, samples * size, samples, samples * size)

    return HeapProfile(
        rate=RATE,
        time_ns=1_700_000_000_000_000_000,
        duration_ns=12_000_000_000,
        sampled=(
            ((MAIN, WALK, WALK, BUILD), counts(128, 3300)),  # ~64 MiB: ±17%
            ((MAIN, WALK, INIT_A), counts(2, 1000)),
            ((MAIN,), counts(1, 64)),
        ),
    )


def sampled_report(tmp_path: Path, **options: Any) -> Report:
    dump = tmp_path / "sampled.pb.gz"
    dump.write_bytes(encode_profile(sampled_profile()))
    return build_report(ReportConfig(dump=dump, top=100, **options))


def test_sampled_report_has_error_columns(tmp_path: Path) -> None:
    report = sampled_report(tmp_path)
    assert report.sampled
    rows = {row.site.function: row for row in report.top}
    # 128 samples of one small size: 1.96·sqrt((1-p)/128)
    p = -math.expm1(-3300 / RATE)
    assert rows["build_node"].flat_error == pytest.approx(1.96 * math.sqrt((1 - p) / 128), 0.01)
    assert rows["walk"].flat_error is None  # flat 0: nothing to be relative to
    text = report.render("text")
    lines = text.splitlines()
    head = lines.index(next(line for line in lines if line.lstrip().startswith("flat")))
    assert lines[head].split() == ["flat", "±95%", "flat%", "sum%", "cum", "±95%", "cum%", "site"]
    first = lines[head + 1]
    assert first.split()[2] == "±17%" and first.endswith("build_node (/app/tree.py)")
    assert "±95%: sampling error" in lines[-1]
    # what comes before the site column leaves room for it in 100 columns
    assert lines[head].index("site") <= 65


def test_cum_error_adds_the_variances_of_the_stacks_once_each(tmp_path: Path) -> None:
    report = sampled_report(tmp_path)
    decoded = read_profile(report.dump)
    var = {
        sample.stack[-1].function: sampling_variance(sample.values[2], sample.values[3], RATE)[1]
        for sample in decoded.samples
    }
    rows = {row.site.function: row for row in report.top}
    # walk is twice in build_node's stack (recursion) and once in __init__'s
    walk = rows["walk"]
    assert walk.cum_error == pytest.approx(
        relative_error(walk.cum, var["build_node"] + var["__init__"])
    )
    main = rows["main"]
    assert main.cum_error == pytest.approx(relative_error(main.cum, sum(var.values())))
    assert main.flat_error == pytest.approx(relative_error(main.flat, var["main"]))
    # more bytes under one estimate, relatively less error
    assert main.cum_error < rows["__init__"].flat_error


def test_sampled_json_and_objects_index(tmp_path: Path) -> None:
    document = report_to_json(sampled_report(tmp_path, sample_index="inuse_objects"))
    build = next(row for row in document["top"] if row["function"] == "build_node")
    p = -math.expm1(-3300 / RATE)
    expected = 100 * 1.96 * math.sqrt((1 - p) / 128)  # one size: objects err as bytes do
    assert build["flat_err95_pct"] == pytest.approx(expected, abs=0.1)
    walk = next(row for row in document["top"] if row["function"] == "walk")
    assert walk["flat_err95_pct"] is None and walk["cum_err95_pct"] > 0


def test_exact_report_has_no_error_column(tmp_path: Path) -> None:
    report = build_report(ReportConfig(dump=write_dump(tmp_path)))
    assert not report.sampled
    assert "±" not in report.render("text")
    assert all(row.flat_error in (0.0, None) for row in report.top)


def test_only_byte_sampled_heap_profiles_get_errors(tmp_path: Path) -> None:
    profile = read_profile(sampled_report(tmp_path).dump)
    index = profile.sample_type_names.index("inuse_space")
    assert is_sampled(profile, index)
    assert not is_sampled(replace(profile, period_type=("cpu", "nanoseconds")), index)
    assert not is_sampled(replace(profile, period=1), index)


# --- through the real command line ------------------------------------------------------------


def test_cli_report_text_and_json(tmp_path: Path) -> None:
    dump = write_dump(tmp_path, {"totals": SIDECAR_TOTALS})
    result = run_cli("report", dump, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Total Allocated Memory: 128 B" in result.stdout
    result = run_cli(
        "report", dump, "--top", "1", "--sample-index", "alloc_objects", "--format", "json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["sample_index"] == "alloc_objects"
    assert [(row["function"], row["flat"]) for row in document["top"]] == [("__init__", 100)]


def test_cli_report_errors(tmp_path: Path) -> None:
    dump = write_dump(tmp_path)
    result = run_cli("report", dump, "--sample-index", "bogus", cwd=tmp_path)
    assert result.returncode == 2
    assert "alloc_objects, alloc_space, inuse_objects, inuse_space" in result.stderr
    result = run_cli("report", tmp_path / "nope.pb.gz", cwd=tmp_path)
    assert result.returncode == 16
    assert result.stderr.strip() == f"heapspy: The dump {tmp_path / 'nope.pb.gz'} does not exist."
    (tmp_path / "text.pb.gz").write_text("not a profile")
    result = run_cli("report", tmp_path / "text.pb.gz", cwd=tmp_path)
    assert result.returncode == 16
    assert "is not a usable pprof dump" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_report_help_is_the_docstring(tmp_path: Path) -> None:
    result = run_cli("report", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "top allocation sites by function" in result.stdout
