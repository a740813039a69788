"""The sampling mode: the command line's spelling decoded once, live changes, the wire,
and what readers make of sidecars old and new."""

from __future__ import annotations

import pytest
from heapspy_agent import protocol, schema

from heapspy.config import AttachConfig
from heapspy.reporters.base import describe_sampling
from heapspy.sampling import EXACT, SAMPLED, TOTALS, Sampling, read_sampling


def test_the_rate_as_people_spell_it() -> None:
    assert Sampling.of_rate(0) == Sampling(TOTALS, 0)
    assert Sampling.of_rate(1, 32) == Sampling(EXACT, 1, 32)
    sampled = Sampling.of_rate(512 * 1024)
    assert (sampled.mode, sampled.rate, sampled.frames) == (SAMPLED, 512 * 1024, 64)
    assert AttachConfig(rate=0, frames=8).sampling == Sampling(TOTALS, 0, 8)
    with pytest.raises(ValueError):
        Sampling.of_rate(-1)


def test_what_each_mode_means() -> None:
    sampled, exact, totals = Sampling.of_rate(4096), Sampling.of_rate(1), Sampling.of_rate(0)
    assert [s.estimates for s in (sampled, exact, totals)] == [True, False, False]
    assert [s.period for s in (sampled, exact, totals)] == [4096, 1, 1]
    assert [s.shim_rate for s in (sampled, exact, totals)] == [4096, 0, 0]
    with pytest.raises(ValueError):
        Sampling(SAMPLED, 1)  # "every allocation sampled" is exact mode's job


def test_live_rate_changes() -> None:
    sampled = Sampling.of_rate(4096, 16)
    assert sampled.with_rate(0) == Sampling(TOTALS, 0, 16)
    assert sampled.with_rate(0).with_rate(8192) == Sampling(SAMPLED, 8192, 16)
    for bad in (1, -5):
        with pytest.raises(ValueError, match="rates of 0 or 2 bytes and up"):
            sampled.with_rate(bad)
    with pytest.raises(ValueError):
        Sampling.of_rate(1).with_rate(4096)  # tracemalloc has no rate


def test_the_wire_record() -> None:
    sampling = Sampling.of_rate(4096, 16)
    body = schema.check(protocol.READY, {"sampling": sampling.to_json()})
    assert Sampling.from_json(body["sampling"]) == sampling
    with pytest.raises(protocol.ProtocolError, match="sampled mode takes a rate"):
        Sampling.from_json({"mode": SAMPLED, "rate": 1, "frames": 64})


def test_readers_of_old_and_new_sidecars() -> None:
    assert read_sampling({"sampling": {"mode": TOTALS, "rate": 0, "frames": 8}}) == Sampling(
        TOTALS, 0, 8
    )
    # an older heapspy wrote rate-0 sessions as sampled mode with rate 0
    assert read_sampling({"mode": "sampled", "rate": 0, "frames": 64}) == Sampling(TOTALS, 0)
    assert read_sampling({"mode": "exact", "rate": 1}).mode == EXACT
    assert read_sampling(None, 524288) == Sampling(SAMPLED, 524288)  # Go's, no sidecar
    assert read_sampling(None, 1) == Sampling(EXACT, 1)
    assert read_sampling({"mode": "sampled", "rate": "lots"}, 4096) == Sampling(SAMPLED, 4096)


def test_a_totals_dump_is_not_called_exact() -> None:
    assert describe_sampling(Sampling.of_rate(0)).startswith("totals only")
    assert describe_sampling(Sampling.of_rate(1)) == "exact (every allocation recorded)"
    assert describe_sampling(Sampling.of_rate(512 * 1024)) == (
        "one sample every 512.0 KiB on average"
    )
