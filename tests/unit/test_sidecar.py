"""The sidecar's layout, written by a session and read back by the reporters."""

from __future__ import annotations

import json

from heapspy.aggregate import Point
from heapspy.model import AllocTotals
from heapspy.sampling import Sampling, read_sampling
from heapspy.sidecar import SERIES_COLUMNS, Header, Sidecar


def sidecar(**changes: object) -> Sidecar:
    fields: dict[str, object] = {
        "pid": 4242,
        "command_line": ["python3", "worker.py"],
        "executable": "/usr/bin/python3.11",
        "python": "3.11.2",
        "sampling": Sampling.of_rate(0),
        "rate_changes": ((1.0, 0),),
        "rule": "final",
        "heap_estimate": 0,
        "series": tuple(Point(float(t), 100, 10, rate=4096 if t < 150 else 0) for t in range(200)),
        "totals": AllocTotals(128, 4, 64, 2, ((5, 4),)),
        "agent_totals": {"overflow_samples": 7, "evicted_stacks": 5},
        "facts": {},
        "cgroup": None,
        "dropped_stacks": 0,
        "dropped_agent_sites": 3,
        "protocol_violation": None,
        "census": None,
    }
    fields.update(changes)
    return Sidecar(**fields)  # type: ignore[arg-type]


def test_what_a_session_writes_reads_back() -> None:
    document = json.loads(json.dumps(sidecar().to_json()))
    assert read_sampling(document) == Sampling.of_rate(0)  # totals, not "exact"
    assert (document["mode"], document["rate"], document["frames"]) == ("totals", 0, 64)
    assert document["series_columns"] == list(SERIES_COLUMNS)
    assert len(document["rss_series"]) == 120 and document["rss_series"][-1][0] == 199.0
    assert document["totals"]["size_classes"] == [[5, 4]]
    # samples the shim could not give a stack are counted, and stacks it evicted
    assert document["dropped"] == {"stacks": 0, "agent_sites": 3, "overflow_samples": 7}
    assert document["evicted_stacks"] == 5
    assert document["reporting"] is None  # not given here; a session's has its counts
    merged = sidecar(reporting={"intervals": 12, "reports": 3, "idle_report": 10.0})
    assert merged.to_json()["reporting"] == {"intervals": 12, "reports": 3, "idle_report": 10.0}
    # each point says the rate it was taken at (a `heapspy rate` at t=150)
    rate = document["series_columns"].index("rate")
    assert document["rss_series"][0][rate] == 4096 and document["rss_series"][-1][rate] == 0
    head = Header.read(document)
    assert head == Header(4242, ("python3", "worker.py"), "/usr/bin/python3.11", "3.11.2",
                          "totals", "final")  # fmt: skip


def test_a_header_of_the_wrong_types_is_left_out() -> None:
    hostile = {"pid": True, "command_line": ["x", 3], "python": 3.11, "rule": ""}
    assert Header.read(hostile) == Header()
    assert Header.read(None) == Header()
