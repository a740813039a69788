"""`heapspy demo` (what `make demo` runs): the whole job on the bundled worker."""

from __future__ import annotations

from pathlib import Path

from conftest import run_heapspy

from heapspy.dumps import PATTERN


def test_demo_finds_the_leak_and_writes_a_dump_and_a_page(tmp_path: Path) -> None:
    out = run_heapspy("demo", "--duration", "3s", "--dump-dir", str(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    table = lines[lines.index("Largest live allocation sites:") + 2]
    assert table.split()[-2:] == ["Shipper.buffer_line", "(leaky_worker.py:23)"], out.stdout
    (dump,) = tmp_path.glob("*.pb.gz")
    assert PATTERN.match(dump.name) and dump.name.endswith("-final.pb.gz")
    assert "Total Allocated Memory:" in out.stdout
    page = dump.with_name(dump.name[: -len(".pb.gz")] + ".html")
    assert f"As a flame graph (open in a browser; works offline): {page}" in out.stdout
    assert "Shipper.buffer_line" in page.read_text()
