"""The reporters' shared parts: a ``Dump`` loaded once, and the ``Rendering`` base that
every command prints through. Hand-made dumps in a temporary directory, no process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heapspy.dumps import sidecar_path
from heapspy.errors import DumpError, UsageError
from heapspy.model import Frame, HeapProfile, SiteCounts, TopRow
from heapspy.pprof import encode_profile
from heapspy.reporters.base import Rendering
from heapspy.reporters.diff import DiffConfig, build_diff
from heapspy.reporters.dump import Dump
from heapspy.reporters.report import ReportConfig, build_report
from heapspy.reporters.status import SessionStatus, Status
from heapspy.reporters.top import TopTable
from heapspy.reporters.totals import SIDECAR_FOUND, SIDECAR_MISSING, SIDECAR_NO_TOTALS

# A function name as a hostile target could send it: an OSC retitle and a forged line.
EVIL = "f\x1b]0;owned\x07\nERROR forged"
MAIN = Frame("main", "/app/app.py", 5)
LEAF = Frame(EVIL, "/app/evil.py", 9)
TOTALS = {"allocated_bytes": 4096, "allocations": 2, "freed_bytes": 1024, "frees": 1}


def write_dump(directory: Path, name: str, sidecar: object = None) -> Path:
    """An exact dump of two sites; ``sidecar`` is written as JSON (a str as it is)."""
    profile = HeapProfile(
        rate=1,
        time_ns=1_700_000_000_000_000_000,
        duration_ns=1_000_000_000,
        exact=(
            ((MAIN, LEAF), SiteCounts(2, 3072, 1, 2048)),
            ((MAIN,), SiteCounts(1, 24, 1, 24)),
        ),
    )
    dump = directory / name
    dump.write_bytes(encode_profile(profile))
    if sidecar is not None:
        text = sidecar if isinstance(sidecar, str) else json.dumps(sidecar)
        sidecar_path(dump).write_text(text)
    return dump


def test_dump_reads_profile_and_sidecar_once(tmp_path: Path) -> None:
    name = "heap-41-20231114T221320.000Z-final.pb.gz"
    path = write_dump(tmp_path, name, {"pid": 7, "totals": TOTALS})
    dump = Dump.load(path)
    sidecar_path(path).unlink()  # everything below comes from what was loaded
    assert dump.sidecar_status == SIDECAR_FOUND
    assert (dump.totals.allocated_bytes, dump.totals.live_bytes) == (4096, 3072)
    assert dump.pid == 7  # the sidecar's, not the file name's 41
    assert dump.sample_index("alloc_space") == dump.profile.sample_type_names.index("alloc_space")
    with pytest.raises(UsageError, match="no sample type 'cpu'"):
        dump.sample_index("cpu")


def test_dump_without_sidecar_or_totals(tmp_path: Path) -> None:
    alone = Dump.load(write_dump(tmp_path, "heap-41-20231114T221320.000Z-final.pb.gz"))
    assert alone.sidecar is None and alone.sidecar_status == SIDECAR_MISSING
    assert alone.pid == 41  # from the name heapspy gave the dump
    assert alone.totals.source == "profile" and alone.totals.live_bytes == 2048 + 24
    empty = Dump.load(write_dump(tmp_path, "empty.pb.gz", {"totals": None}))
    assert empty.sidecar_status == SIDECAR_NO_TOTALS and empty.pid is None


def test_a_broken_sidecar_fails_report_but_not_diff(tmp_path: Path) -> None:
    """Report needs the sidecar's totals; diff only wants a pid from it and does without."""
    base = write_dump(tmp_path, "heap-41-20231114T221320.000Z-a.pb.gz", "{not json")
    new = write_dump(tmp_path, "heap-41-20231114T223320.000Z-b.pb.gz", {"pid": 41})
    broken = Dump.load(base)  # loading keeps the error for what needs the sidecar
    assert broken.pid == 41
    with pytest.raises(DumpError, match="is not valid JSON"):
        print(broken.totals)
    with pytest.raises(DumpError, match="is not valid JSON"):
        build_report(ReportConfig(base))
    diff = build_diff(DiffConfig(base, new))
    assert diff.notes == ()  # same pid, same sampling, in order


def test_output_escapes_target_text_in_every_format(tmp_path: Path) -> None:
    report = build_report(ReportConfig(write_dump(tmp_path, "heap.pb.gz", {"totals": TOTALS})))
    assert report.top[0].site.function == EVIL  # kept exact; escaped where laid out
    text = report.output("text")
    assert "\x1b" not in text and "\x07" not in text
    assert "f\\x1b]0;owned\\x07\\nERROR forged (/app/evil.py)" in text
    assert "\nERROR forged" not in text  # a newline in a name forges no line
    document = json.loads(report.output("json"))
    assert document["top"][0]["function"] == EVIL  # JSON keeps it exact, escaped by JSON
    with pytest.raises(UsageError, match="Unknown format 'html'"):
        report.output("html")


def test_json_only_where_offered() -> None:
    row = TopRow(EVIL, 2048, 1, 3072, 2)
    table = TopTable((row,), sampled=False)
    assert "\x1b" not in table.output() and "2.0 KiB" in table.output()
    assert "\nERROR forged" not in table.output()
    with pytest.raises(UsageError, match="no JSON output"):
        table.output("json")
    status = Status((SessionStatus(4242, None, {"z": 1, "mode": "exact", "python": EVIL}),))
    assert "\nERROR forged" not in status.output() and "f\\x1b]0;owned" in status.output()
    # status has always sorted its keys; report and diff keep their documented order
    assert status.output("json").index('"mode"') < status.output("json").index('"target_pid"')
    assert isinstance(status, Rendering) and isinstance(table, Rendering)
