"""Which sites a dump asks the retainers of (heapspy.retainers.choose), and how the
agent's per-stack answer is summed per site (collect): hand-made bodies, no process."""

from __future__ import annotations

from typing import Any

from heapspy_agent import protocol, schema

from heapspy.aggregate import Aggregator
from heapspy.retainers import (
    Retainers,
    SiteKey,
    choose,
    collect,
    describe_path,
    leak_site,
    table_lines,
)
from heapspy.sampling import Sampling

MAIN = ["main", "/app/app.py", 40]


def samples(**body: Any) -> dict[str, Any]:
    return schema.check(protocol.SAMPLES, {"seq": 0, **body})


def leaf(n: int) -> list[Any]:
    return [f"site{n}", "/app/sites.py", n]


def test_top_sites_and_the_leak_site_are_chosen_and_summed() -> None:
    agg = Aggregator(Sampling("sampled", 512 * 1024))
    # 12 sites of one stack each, site n holding n MiB; site 13 two stacks of one line;
    # site 1 (the smallest) is the only one that grows interval after interval
    stacks = [{"id": n, "frames": [MAIN, leaf(n)]} for n in range(1, 13)]
    stacks.append({"id": 13, "frames": [MAIN, ["caller", "/app/app.py", 9], leaf(13)]})
    stacks.append({"id": 14, "frames": [MAIN, leaf(13)]})
    inuse = {str(n): [n, n << 20] for n in range(1, 15)}
    agg.apply(samples(stacks=stacks, inuse=inuse))
    for grown in (2, 3):
        agg.apply(samples(inuse={"1": [grown, grown << 20]}))
    chosen = choose(agg, n=10)
    keys = list(chosen)
    assert keys[0] == SiteKey("site13", "/app/sites.py", 13) and chosen[keys[0]] == [14, 13]
    assert len(keys) == 11 and keys[-1] == leak_site(agg) == SiteKey("site1", "/app/sites.py", 1)
    body = schema.check(
        protocol.RETAINERS,
        {
            "stacks": {
                "13": [
                    [["app.CACHE", "dict"], 9, 9000.0, ["", ""]],
                    [["(not a Python object)"], 1, 1000.0, [""]],
                ],
                # the agent names a stack's top path only: the first named row is taken
                "14": [[["app.CACHE", "dict", "list"], 10, 10000.0, ["", "", "['users']"]]],
                "1": [
                    [
                        ["thread w: run", "app.State", "dict", "list"],
                        4,
                        4000.0,
                        ["", "", ".seen", "[42]"],
                    ]
                ],
                "99": [[["never", "asked"], 1, 1e12, ["", ""]]],  # a stack nobody asked about
            },
            "elapsed": 1.5,
        },
    )
    found = collect(body, chosen, leak_site(agg))
    top = found.sites[0]
    assert top.site.function == "site13" and top.live_bytes == 20000.0
    assert top.holders[0].path == ("app.CACHE", "dict", "list") and top.holders[0].samples == 10
    assert top.holders[1].path == ("app.CACHE", "dict") and top.holders[1].share == 0.45
    leak = next(s for s in found.sites if s.leak)
    assert leak.site.function == "site1" and leak.holders[0].share == 1.0
    lines = table_lines(found)
    # a named step drops the root object's type (its name says it); unnamed ones stay
    assert lines[0] == "site13 (sites.py:13) 19.5 KiB, held by app.CACHE ['users'] (list) 50 %"
    assert lines[1] == "    and by app.CACHE > dict 45 %"
    held = ("site1 (sites.py:1) 3.9 KiB, held by thread w: run .seen (dict) [42] (list) "
            "100 %  (leak rule's site)")  # fmt: skip
    assert held in lines
    assert Retainers.from_json(found.to_json()) == found  # the sidecar keeps the names
    assert all(s.holders == () for s in found.sites if s.site.function not in ("site13", "site1"))
    assert found.elapsed == 1.5


def test_a_path_through_an_instance_dict_reads_as_its_attribute() -> None:
    """Before 3.11 the walk goes through an instance's attribute dict: the agent marks
    that step (OWN_DICT) and it is left out, so every interpreter reads the same."""
    through = ("m.S", "m.Shipper", "dict", "list")
    assert describe_path(through, ("", "", schema.OWN_DICT, ".pending")) == "m.S .pending (list)"
    assert describe_path(("m.S", "m.Shipper", "list"), ("", "", ".pending")) == (
        "m.S .pending (list)"
    )
    assert describe_path(through) == "m.S > m.Shipper > dict > list"  # nothing named
