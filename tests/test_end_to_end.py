"""Issue #4's acceptance run: a leaking worker, threshold dumps, a final dump, and the
leak found first by go tool pprof, heapspy diff and heapspy report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from gotool import top
from interpreters import Interpreter, interpreter_params
from support import attach_to_leaky_worker

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "interp",
    [p for p in interpreter_params() if p.values[0].label in ("3.11-pyenv", "3.14-debian")],
)
def test_leak_is_found_by_every_reader(interp: Interpreter, tmp_path: Path) -> None:
    _pid, out = attach_to_leaky_worker(
        list(interp.argv), "--duration", "12", "--dump-on", "growth>5MiB/5s",
        "--dump-dir", str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    dumps = sorted(tmp_path.glob("*.pb.gz"))
    threshold = [d for d in dumps if "-growth_5MiB_5s" in d.name]
    final = [d for d in dumps if d.name.endswith("-final.pb.gz")]
    assert threshold and len(final) == 1, [d.name for d in dumps]
    assert all(d.with_name(d.name[: -len(".pb.gz")] + ".json").exists() for d in dumps)

    inuse = top(final[0], "-sample_index=inuse_space", cwd=tmp_path)
    assert inuse[0].name == "Shipper.buffer_line", inuse[:3]
    alloc = {row.name: row.cum for row in top(final[0], "-sample_index=alloc_space", cwd=tmp_path)}
    assert alloc["parse_record"] > 5 * alloc["Shipper.buffer_line"]  # churn, freed at once

    diff = subprocess.run(
        [sys.executable, "-m", "heapspy", "diff", str(threshold[0]), str(final[0])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    first = next(line for line in diff.splitlines() if line.strip().startswith("+"))
    assert "Shipper.buffer_line" in first, diff

    report = subprocess.run(
        [sys.executable, "-m", "heapspy", "report", str(final[0])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"^Total Allocated Memory: [\d.]+ [KMG]iB$", report, re.M), report
    assert re.search(r"^Number of Allocations: [\d,]+$", report, re.M), report
    assert "Shipper.buffer_line" in report
