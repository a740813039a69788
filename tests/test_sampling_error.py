"""The ``±95%`` sampling error: the variance formula against a simulation of Poisson byte
sampling, then the column in what ``heapspy attach`` and ``heapspy report`` print for a
real sampled dump, and its absence for an exact one."""

from __future__ import annotations

import json
import math
import random
import re
import statistics
from pathlib import Path
from typing import Callable

import pytest
from support import Target, run_heapspy

from heapspy.reporters.dump import Dump
from heapspy.reporters.flamegraph import header_facts
from heapspy.scaling import Z_95, format_error, relative_error, sampling_variance

Spawn = Callable[..., Target]

# --- the formula against a simulation ---------------------------------------------------------

RATE = 16 * 1024
# (block size, blocks) per stack: many small blocks (p ~ 0.004, where the error is about
# 1.96*sqrt(rate/bytes)), blocks a quarter of the rate, and blocks above it (p ~ 0.91,
# where (1-p)/p matters: the small-block shortcut would be 2x off there).
STACKS = ((64, 20_000), (4096, 1_000), (40_000, 100))
TRIALS = 2000


def simulate(rng: random.Random) -> list[int]:
    """How many blocks of each stack one run samples, the way the shim does it: a Poisson
    process over the allocated bytes (exponential gaps of mean RATE), a block sampled when
    a point falls in it. All blocks are laid end to end in one byte stream."""
    sampled = []
    start = 0.0
    point = rng.expovariate(1 / RATE)
    for size, count in STACKS:
        end = start + size * count
        blocks = set()
        while point < end:
            blocks.add(int((point - start) // size))
            point += rng.expovariate(1 / RATE)
        sampled.append(len(blocks))
        start = end
    return sampled


def test_variance_matches_a_simulation_of_poisson_byte_sampling() -> None:
    rng = random.Random(20240611)
    runs = [simulate(rng) for _ in range(TRIALS)]
    totals: list[float] = []
    predicted_total = 0.0
    for i, (size, count) in enumerate(STACKS):
        p = -math.expm1(-size / RATE)
        objects = [k / p for k in (run[i] for run in runs)]  # Horvitz-Thompson, as scale()
        nbytes = [n * size for n in objects]
        totals = [t + b for t, b in zip(totals, nbytes)] if totals else nbytes
        var_objects, var_bytes = sampling_variance(count, count * size, RATE)
        predicted_total += var_bytes
        assert statistics.fmean(nbytes) == pytest.approx(count * size, rel=0.02)  # unbiased
        assert statistics.stdev(nbytes) == pytest.approx(math.sqrt(var_bytes), rel=0.1), size
        assert statistics.stdev(objects) == pytest.approx(math.sqrt(var_objects), rel=0.1), size
        # what a dump offers is the estimate, not the truth: plugged in, it still gives
        # the error on average
        plugged = statistics.fmean(
            math.sqrt(sampling_variance(n, b, RATE)[1]) for n, b in zip(objects, nbytes)
        )
        assert plugged == pytest.approx(math.sqrt(var_bytes), rel=0.1), size
    # stacks are sampled independently: their variances add
    assert statistics.stdev(totals) == pytest.approx(math.sqrt(predicted_total), rel=0.1)


def test_small_blocks_err_by_about_1_96_sqrt_rate_over_bytes() -> None:
    rate, nbytes = 512 * 1024, 64 << 20
    for size in (16, 64, 1024):
        _, var = sampling_variance(nbytes / size, nbytes, rate)
        assert relative_error(nbytes, var) == pytest.approx(Z_95 * math.sqrt(rate / nbytes), 0.01)
        assert format_error(relative_error(nbytes, var)) == "±17%"


def test_average_size_is_close_for_small_mixed_blocks() -> None:
    """The docstring's claim: below the rate, the bytes variance hardly depends on the mix."""
    rate = 512 * 1024
    mix = ((32, 100_000), (4096, 2_000))  # (size, blocks)
    exact = sum(sampling_variance(n, n * s, rate)[1] for s, n in mix)
    averaged = sampling_variance(sum(n for _, n in mix), sum(n * s for s, n in mix), rate)[1]
    assert averaged == pytest.approx(exact, rel=0.01)


def test_exact_and_empty_values_have_no_error() -> None:
    assert sampling_variance(10, 1000, 1) == (0.0, 0.0)
    assert sampling_variance(0, 0, 512 * 1024) == (0.0, 0.0)
    assert sampling_variance(1, 1 << 40, 512 * 1024) == (0.0, 0.0)  # sampled for sure
    assert relative_error(0, 5.0) is None


@pytest.mark.parametrize(
    ("relative", "text"),
    [(None, "-"), (0.0, "±<1%"), (0.00499, "±<1%"), (0.005, "±1%"), (0.1727, "±17%"),
     (1.96, "±196%")],
)  # fmt: skip
def test_format_error(relative: float | None, text: str) -> None:
    assert format_error(relative) == text


# --- real dumps ------------------------------------------------------------------------------

ERROR = re.compile(r"±(\d+)%")


def expected_percent(nbytes: float, objects: float, rate: int) -> float:
    """1.96·sqrt((1-p)/(N·p)) for N blocks of the average size: grow_cache keeps one size."""
    p = -math.expm1(-(nbytes / objects) / rate)
    return 100 * Z_95 * math.sqrt((1 - p) / (objects * p))


def attach(spawn: Spawn, tmp_path: Path, *args: str) -> tuple[str, Path]:
    """Attach to a growing target for 3 s; the summary table printed and the final dump."""
    target = spawn(None, "probe_target.py", "grow")
    out = run_heapspy(
        "attach", str(target.pid), "--duration", "3s", "--dump-dir", str(tmp_path), *args
    )
    assert out.returncode == 0, out.stderr
    (dump,) = tmp_path.glob("*-final.pb.gz")
    assert f"Read the final dump with: heapspy report {dump}\n" in out.stdout, out.stdout
    return out.stdout, dump


def report(dump: Path, *args: str) -> str:
    out = run_heapspy("report", str(dump), *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_sampled_dump_shows_plausible_errors(spawn: Spawn, tmp_path: Path) -> None:
    rate = 64 * 1024
    summary, dump = attach(spawn, tmp_path, "--rate", "64KiB", "--require-sampling")
    head, row = summary.splitlines()[:2]
    assert head.split() == ["live", "bytes", "±95%", "objects", "function"], summary
    assert "grow_cache (probe_target.py:" in row, summary

    document = json.loads(report(dump, "--format", "json"))
    assert document["period"] == rate
    grow = next(r for r in document["top"] if r["function"] == "grow_cache")
    objects_row = json.loads(report(dump, "--format", "json", "--sample-index", "inuse_objects"))
    objects = next(r for r in objects_row["top"] if r["function"] == "grow_cache")["flat"]
    # ~6.4 MiB/s of 64 KiB blocks for 3 s: ~300 blocks, ~190 of them sampled at 64 KiB
    formula = expected_percent(grow["flat"], objects, rate)
    assert 3 < formula < 30, (grow, objects)
    # The error bar is summed over the stack's own samples (each at its own size and rate);
    # the one-size formula from the stack's totals only approximates it: this stack's blocks
    # are not all of one size, and dumps split live samples by type.
    assert grow["flat_err95_pct"] == pytest.approx(formula, rel=0.3), (grow, objects)
    expected = grow["flat_err95_pct"]
    # the table of `attach` judged the same heap the same way
    match = ERROR.search(row)
    assert match and abs(int(match[1]) - expected) <= 2, (row, expected)

    # The whole live heap: grow_cache's variance plus the other stacks' (a few small ones)
    totals = document["totals"]
    grow_abs = grow["flat"] * grow["flat_err95_pct"]
    live_abs = totals["live_bytes"] * totals["live_err95_pct"]
    assert grow_abs * 0.99 <= live_abs <= grow_abs * 1.5, (totals, grow)

    text = report(dump)
    lines = text.splitlines()
    live = next(line for line in lines if line.startswith("Live Heap Estimate:"))
    assert (m := ERROR.search(live)) and abs(int(m[1]) - totals["live_err95_pct"]) <= 0.5, live
    facts = dict(header_facts(Dump.load(dump)))
    assert f" {m[0]} in " in facts["Live Heap Estimate"], facts  # the flame graph's header
    head = next(line for line in lines if line.lstrip().startswith("flat"))
    assert head.split() == ["flat", "±95%", "flat%", "sum%", "cum", "±95%", "cum%", "site"]
    row = next(line for line in lines if "grow_cache (" in line)
    errors = [int(e) for e in ERROR.findall(row)]  # flat's and cum's: one stack, the same
    assert len(errors) == 2 and all(abs(e - expected) <= 0.5 for e in errors), (row, expected)
    # the module's own code (<module>, named probe_target in dumps) allocates nothing
    # itself: no error for its zero flat
    module = next(line for line in lines if "probe_target (" in line)
    assert module.split()[2] == "-" and ERROR.search(module), module
    assert "±95%: sampling error" in text


def test_exact_dump_has_no_error_column(spawn: Spawn, tmp_path: Path) -> None:
    summary, dump = attach(spawn, tmp_path, "--rate", "1")
    assert summary.splitlines()[0].split() == ["live", "bytes", "objects", "function"], summary
    assert "±" not in summary
    text = report(dump)
    assert "Sampling: exact" in text and "±" not in text
    document = json.loads(report(dump, "--format", "json"))
    grow = next(r for r in document["top"] if r["function"] == "grow_cache")
    assert (grow["flat_err95_pct"], grow["cum_err95_pct"]) == (0.0, 0.0)
    assert document["totals"]["live_err95_pct"] == 0.0
