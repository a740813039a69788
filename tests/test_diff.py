"""``heapspy diff``: growth per function and per line, largest first, as Go's pprof sees it.

The text output is also compared with tests/golden/diff_small.txt; regenerate it with
``HEAPSPY_REGEN_GOLDEN=1 python -m pytest tests/test_diff.py`` after an intended change.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from gotool import top
from support import golden

from heapspy.errors import DumpError, UsageError
from heapspy.model import Frame, HeapProfile, SiteCounts
from heapspy.pprof import encode_profile
from heapspy.reporters.diff import DiffConfig, build_diff, diff_to_json

RATE = 256 * 1024

MAIN = Frame("main", "/app/server.py", 90)
HANDLE = Frame("handle", "/app/server.py", 50)
REMEMBER = Frame("remember", "/app/cache.py", 14)
REMEMBER_KEYS = Frame("remember", "/app/cache.py", 15)
PARSE = Frame("parse", "/app/parse.py", 7)
WARMUP = Frame("warmup", "/app/boot.py", 3)
SESSION = Frame("new_session", "/app/auth.py", 22)


def _profile(sites: tuple[tuple[tuple[Frame, ...], SiteCounts], ...], minute: int) -> HeapProfile:
    return HeapProfile(
        rate=RATE,
        time_ns=1_700_000_000_000_000_000 + minute * 60 * 10**9,
        duration_ns=minute * 60 * 10**9,
        sampled=sites,
    )


def base_profile() -> HeapProfile:
    return _profile(
        (
            ((MAIN, HANDLE, REMEMBER), SiteCounts(10, 10 << 20, 10, 10 << 20)),
            ((MAIN, HANDLE, REMEMBER_KEYS), SiteCounts(2, 2 << 10, 2, 2 << 10)),
            ((MAIN, HANDLE, PARSE), SiteCounts(30, 30 * 512, 3, 3 * 512)),
            ((MAIN, WARMUP), SiteCounts(4, 4 << 20, 4, 4 << 20)),
        ),
        minute=1,
    )


def new_profile() -> HeapProfile:
    # remember leaks (grows on both lines), parse is steady, warmup was freed,
    # new_session appeared.
    return _profile(
        (
            ((MAIN, HANDLE, REMEMBER), SiteCounts(60, 60 << 20, 60, 60 << 20)),
            ((MAIN, HANDLE, REMEMBER_KEYS), SiteCounts(12, 12 << 10, 12, 12 << 10)),
            ((MAIN, HANDLE, PARSE), SiteCounts(90, 90 * 512, 3, 3 * 512)),
            ((MAIN, WARMUP), SiteCounts(4, 4 << 20, 0, 0)),
            ((MAIN, HANDLE, SESSION), SiteCounts(5, 5 << 16, 5, 5 << 16)),
        ),
        minute=11,
    )


@pytest.fixture
def dumps(tmp_path: Path) -> tuple[Path, Path]:
    base = tmp_path / "base.pb.gz"
    new = tmp_path / "new.pb.gz"
    base.write_bytes(encode_profile(base_profile()))
    new.write_bytes(encode_profile(new_profile()))
    return base, new


def _inuse(profile: HeapProfile, leaf: Frame) -> int:
    """inuse_space of the site ending at ``leaf`` after upscaling, via a decode round trip."""
    from heapspy.pprof import decode_profile

    decoded = decode_profile(encode_profile(profile))
    return sum(s.values[3] for s in decoded.samples if s.stack[-1] == leaf)


def test_leak_is_first_by_function_and_by_line(dumps: tuple[Path, Path]) -> None:
    base, new = dumps
    diff = build_diff(DiffConfig(base=base, new=new))
    assert diff.sample_index == "inuse_space"
    first = diff.functions[0]
    assert (first.site.function, first.site.filename) == ("remember", "/app/cache.py")
    grown = sum(
        _inuse(new_profile(), f) - _inuse(base_profile(), f) for f in (REMEMBER, REMEMBER_KEYS)
    )
    assert first.flat_delta == first.cum_delta == grown
    top_line = diff.lines[0]
    assert (top_line.site.filename, top_line.site.line) == ("/app/cache.py", 14)
    deltas = [(row.flat_delta, row.cum_delta) for row in diff.functions]
    assert deltas == sorted(deltas, key=lambda pair: (-pair[0], -pair[1]))
    # the freed warmup shrinks and comes last; the steady parse is not listed
    assert diff.functions[-1].site.function == "warmup"
    assert diff.functions[-1].flat_delta == -_inuse(base_profile(), WARMUP)
    assert "parse" not in {row.site.function for row in diff.functions}
    new_row = next(row for row in diff.functions if row.site.function == "new_session")
    assert new_row.base_cum == 0 and new_row.new_flat == new_row.flat_delta > 0
    assert diff.delta_total == diff.new_total - diff.base_total


def test_sample_index_alloc_objects(dumps: tuple[Path, Path]) -> None:
    base, new = dumps
    diff = build_diff(DiffConfig(base=base, new=new, sample_index="alloc_objects"))
    # 512-byte parse blocks: 60 more samples upscale to far more objects than the
    # leak's 1 MiB blocks, so by object count parse grew most
    assert diff.functions[0].site.function == "parse"
    assert diff.lines[0].site == ("parse", "/app/parse.py", 7)


def test_function_deltas_agree_with_go_pprof_diff_base(
    dumps: tuple[Path, Path], tmp_path: Path
) -> None:
    base, new = dumps
    for index in ("inuse_space", "alloc_space", "alloc_objects"):
        diff = build_diff(DiffConfig(base=base, new=new, top=100, sample_index=index))
        rows = top(new, f"-diff_base={base}", f"-sample_index={index}", cwd=tmp_path)
        theirs = {row.name: (row.flat, row.cum) for row in rows}
        ours = {row.site.function: (row.flat_delta, row.cum_delta) for row in diff.functions}
        assert ours == {name: value for name, value in theirs.items() if value != (0, 0)}, index
        assert rows[0].name == diff.functions[0].site.function


def test_line_deltas_agree_with_go_pprof_lines(dumps: tuple[Path, Path], tmp_path: Path) -> None:
    base, new = dumps
    diff = build_diff(DiffConfig(base=base, new=new, top=100))
    rows = top(new, f"-diff_base={base}", "-lines", cwd=tmp_path)
    theirs = {row.name: row.flat for row in rows if row.flat}
    ours = {row.site.describe(): row.flat_delta for row in diff.lines if row.flat_delta}
    assert ours == theirs


def test_top_limits_each_table(dumps: tuple[Path, Path]) -> None:
    base, new = dumps
    diff = build_diff(DiffConfig(base=base, new=new, top=1))
    assert len(diff.functions) == len(diff.lines) == 1
    assert diff.functions_changed == 5  # remember, handle, main, new_session, warmup
    assert diff.lines_changed == 6


def test_same_dump_has_no_changes(dumps: tuple[Path, Path]) -> None:
    base, _ = dumps
    diff = build_diff(DiffConfig(base=base, new=base))
    assert diff.functions == diff.lines == ()
    assert "No site changed." in diff.render("text")


def test_errors(dumps: tuple[Path, Path], tmp_path: Path) -> None:
    base, _ = dumps
    with pytest.raises(DumpError, match="does not exist"):
        build_diff(DiffConfig(base=base, new=tmp_path / "missing.pb.gz"))
    with pytest.raises(UsageError, match="inuse_space"):
        DiffConfig(base=base, new=base, sample_index="space")
    with pytest.raises(UsageError, match="text, json"):
        build_diff(DiffConfig(base=base, new=base)).render("html")


def test_json_structure(dumps: tuple[Path, Path]) -> None:
    base, new = dumps
    diff = build_diff(DiffConfig(base=base, new=new, top=2))
    document = json.loads(diff.render("json"))
    assert document == diff_to_json(diff)
    assert document["schema"] == "heapspy-diff/1"
    assert set(document) == {
        "schema", "base", "new", "sample_index", "unit", "base_total", "new_total",
        "delta_total", "functions_changed", "lines_changed", "notes", "functions", "lines",
        "by",
    }  # fmt: skip
    assert document["notes"] == []  # one process (no pid known), one rate, in order
    row = document["functions"][0]
    assert set(row) == {
        "function", "filename", "line", "base_flat", "new_flat", "flat_delta", "base_cum",
        "new_cum", "cum_delta",
    }  # fmt: skip
    assert row["function"] == "remember" and row["line"] == 0
    assert row["flat_delta"] == row["new_flat"] - row["base_flat"]
    assert document["lines"][0]["line"] == 14


def test_notes_when_the_dumps_are_not_one_process_over_time(tmp_path: Path) -> None:
    """Dumps of two processes, sampled differently, newest given first: each is said."""
    older = tmp_path / "heap-41-20231114T221320.000Z-manual.pb.gz"
    newer = tmp_path / "heap-42-20231114T223320.000Z-final.pb.gz"
    older.write_bytes(encode_profile(base_profile()))
    newer.write_bytes(encode_profile(replace(new_profile(), rate=1)))
    diff = build_diff(DiffConfig(base=newer, new=older))
    assert len(diff.notes) == 3, diff.notes
    assert "different processes (pid 42 and pid 41)" in diff.notes[0]
    assert "base: exact" in diff.notes[1] and "new: one sample every 256.0 KiB" in diff.notes[1]
    assert "NEW was written before BASE" in diff.notes[2]
    text = diff.render("text")
    assert all(f"Note: {note}" in text for note in diff.notes)
    # the pid a sidecar gives wins over the file name
    (tmp_path / "heap-42-20231114T223320.000Z-final.json").write_text('{"pid": 41}')
    assert build_diff(DiffConfig(base=older, new=older)).notes == ()
    diff = build_diff(DiffConfig(base=older, new=newer))
    assert not any("different processes" in note for note in diff.notes), diff.notes


def test_text_golden(dumps: tuple[Path, Path], tmp_path: Path) -> None:
    base, new = dumps
    text = build_diff(DiffConfig(base=base, new=new, top=4)).render("text")
    text = text.replace(str(tmp_path), "<tmp>")
    assert text == golden("diff_small.txt", text)


def test_cli_diff(dumps: tuple[Path, Path], tmp_path: Path) -> None:
    base, new = dumps

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "heapspy", "diff", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    result = run(base, new, "--top", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("Growth by function")))
    assert "remember (/app/cache.py)" in lines[header + 2]
    result = run(base, new, "--format", "json", "--sample-index", "alloc_objects")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["functions"][0]["function"] == "parse"
    result = run(base, new, "--sample-index", "nope")
    assert result.returncode == 2
    assert "alloc_objects, alloc_space, inuse_objects, inuse_space" in result.stderr
    result = run(base, tmp_path / "absent.pb.gz")
    assert result.returncode == 16
    assert result.stderr.strip() == f"heapspy: The dump {tmp_path / 'absent.pb.gz'} does not exist."
