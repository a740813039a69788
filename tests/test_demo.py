"""`heapspy demo` (what `make demo` runs): the whole job on the bundled worker."""

from __future__ import annotations

import re
from pathlib import Path

from support import run_heapspy

from heapspy.dumps import PATTERN


def test_demo_finds_the_leak_and_writes_a_dump_and_a_page(tmp_path: Path) -> None:
    out = run_heapspy("demo", "--duration", "3s", "--dump-dir", str(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    table = lines[lines.index("Largest live allocation sites:") + 2]
    assert table.split()[-2:] == ["Shipper.buffer_line", "(leaky_worker.py:32)"], out.stdout
    (dump,) = tmp_path.glob("*.pb.gz")
    assert PATTERN.match(dump.name) and dump.name.endswith("-final.pb.gz")
    assert "Total Allocated Memory:" in out.stdout
    page = dump.with_name(dump.name[: -len(".pb.gz")] + ".html")
    assert f"As a flame graph (open in a browser; works offline): {page}" in out.stdout
    assert "Shipper.buffer_line" in page.read_text()
    truth = TRUTH.search(out.stdout)
    assert truth, out.stdout
    assert "--rate 64KiB would narrow it ~2.8x" in truth[0]


TRUTH = re.compile(
    r"The worker counted ([\d.]+ [KM]iB) kept in Shipper.buffer_line while attached"
    r"(?: \(([\d,]+) bytes\); heapspy \(exact\): ([\d,]+) bytes\.|; heapspy estimated "
    r"([\d.]+ [KM]iB) ±(\d+)% .*)"
)


def _bytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * {"KiB": 1 << 10, "MiB": 1 << 20}[unit]


def test_demo_estimate_against_what_the_worker_kept(tmp_path: Path) -> None:
    """The worker's own count of the bytes it kept while attached is the truth the demo
    shows heapspy's figure beside: exact mode matches it, a sampled estimate is near."""
    args = ("demo", "--duration", "3s", "--dump-dir", str(tmp_path))
    exact = run_heapspy(*args, "--rate", "1", timeout=120)
    assert exact.returncode == 0, exact.stderr
    m = TRUTH.search(exact.stdout)
    assert m and m[2] and m[3], exact.stdout
    kept, found = int(m[2].replace(",", "")), int(m[3].replace(",", ""))
    # heapspy sees a little more: the list's array growing, and the lines kept in the
    # few milliseconds between the hooks starting and the worker's count starting
    # (on a quiet machine it keeps ~2 MB in 3 s of exact mode; a loaded one, a tenth)
    assert kept > 100_000 and kept <= found <= kept * 1.05, exact.stdout

    sampled = run_heapspy(*args, "--rate", "64KiB", timeout=120)
    assert sampled.returncode == 0, sampled.stderr
    m = TRUTH.search(sampled.stdout)
    assert m and m[4] and m[5], sampled.stdout
    kept_text, estimate, error = m[1], _bytes(m[4]), int(m[5]) / 100
    # 64 KiB on a few MiB: about ±20% (±50-80% when a loaded machine lets it keep less)
    assert 0.05 < error < 0.9, sampled.stdout
    # unbiased with sigma = error / 1.96: four sigmas fail once in ~15,000 runs
    assert abs(estimate - _bytes(kept_text)) <= 4 * error / 1.96 * _bytes(kept_text)
    assert "would narrow it" not in m[0]
