"""Dump files: names, atomic writes, retention, and failures that leave nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from heapspy.dumps import PATTERN, DumpWriter, Retention, dump_name, sidecar_path
from heapspy.errors import DumpError
from heapspy.model import Frame, HeapProfile, SiteCounts
from heapspy.pprof import decode_profile


def _profile(t: float) -> HeapProfile:
    stack = (Frame("main", "/app/m.py", 1), Frame("leak", "/app/m.py", 9))
    return HeapProfile(
        rate=1,
        time_ns=int(t * 1e9),
        duration_ns=10**9,
        exact=((stack, SiteCounts(3, 300, 2, 200)),),
    )


def test_name_sorts_by_time_and_says_pid_and_rule() -> None:
    a = dump_name(42, "rss>1.5GiB", 1_700_000_000.5)
    b = dump_name(42, "final", 1_700_000_001.0)
    assert a == "heap-42-20231114T221320.500Z-rss_1.5GiB.pb.gz"
    assert PATTERN.match(a) and PATTERN.match(b)
    assert sorted([b, a]) == [a, b]


def test_write_is_complete_with_sidecar(tmp_path: Path) -> None:
    writer = DumpWriter(tmp_path / "d")
    path = writer.write(_profile(1_700_000_000), 42, "final", {"python": "3.12.1"})
    assert oct(os.stat(tmp_path / "d").st_mode & 0o777) == "0o700"
    decoded = decode_profile(path.read_bytes())
    assert [f.function for f in decoded.samples[0].stack] == ["main", "leak"]
    side = json.loads(sidecar_path(path).read_text())
    assert side["rule"] == "final" and side["pid"] == 42 and side["python"] == "3.12.1"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(
        [path.name, sidecar_path(path).name]
    )


def test_retention_keeps_newest(tmp_path: Path) -> None:
    writer = DumpWriter(tmp_path, Retention(keep=2))
    paths = [writer.write(_profile(1_700_000_000 + i), 7, f"r{i}", {}) for i in range(4)]
    assert writer.dumps() == paths[2:]
    assert not sidecar_path(paths[0]).exists()


def test_retention_by_bytes(tmp_path: Path) -> None:
    writer = DumpWriter(tmp_path, Retention(max_bytes=1))
    paths = [writer.write(_profile(1_700_000_000 + i), 7, "every", {}) for i in range(3)]
    assert writer.dumps() == paths[-1:]  # the newest always stays


def test_unwritable_directory_is_reported(tmp_path: Path) -> None:
    # root may write anywhere, so make the directory impossible instead: under a file
    (tmp_path / "file").write_text("")
    with pytest.raises(DumpError, match="Could not write a heap dump"):
        DumpWriter(tmp_path / "file" / "dumps").write(_profile(1_700_000_000), 1, "final", {})


def test_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    """A write that fails half-way (RLIMIT_FSIZE stands in for a full disk) is reported
    and removes its temporary file."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
        from pathlib import Path
        from heapspy.dumps import DumpWriter
        from heapspy.errors import DumpError
        from heapspy.model import Frame, HeapProfile, SiteCounts
        stacks = tuple(((Frame("f%d" % i, "/a.py", i),), SiteCounts(1, 10, 1, 10))
                       for i in range(200))
        p = HeapProfile(rate=1, time_ns=1, duration_ns=1, exact=stacks)
        try:
            DumpWriter(Path({str(tmp_path / "d")!r})).write(p, 1, "final", {{}})
        except DumpError as e:
            print("ERR", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "ERR Could not write a heap dump" in out.stdout, out.stderr
    assert list((tmp_path / "d").iterdir()) == []
