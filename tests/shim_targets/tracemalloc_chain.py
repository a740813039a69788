"""The shim and tracemalloc in one process. argv: scenario.

under:  tracemalloc first, shim on top (chained); take_snapshot() while every allocation
        is sampled; stop restores tracemalloc's hooks, which keep tracing.
stale:  tracemalloc.stop() behind the shim's back; the shim's stop must not restore the
        stale hooks: it leaves them (pinned), and nothing crashes.
over:   tracemalloc started after the shim (it chains to us); our stop leaves the hooks as
        pass-throughs; tracemalloc.stop() puts them back on top, and a new session reuses
        them, then stops cleanly and unloads.
"""

import gc
import sys
import tracemalloc

from heapspy_agent.shim import STATE_IDLE, STATE_LEFT, ShimError

from _common import emit, load, maps_mention


def workload(n=20000):
    keep = [bytes(100 + i % 900) for i in range(n)]
    tmp = [str(i) * 3 for i in range(n)]
    del tmp
    return keep


def under(shim, out):
    tracemalloc.start(5)
    shim.start(4096, seed=5)
    keep = workload()
    out["drain_stacks"] = len(shim.drain().new_stacks)
    shim.set_rate(1)
    snap = tracemalloc.take_snapshot()  # allocates under tracemalloc's tables lock (3.14)
    shim.set_rate(4096)
    out["snapshot_traces"] = len(snap.traces)
    del snap
    out["stop_restored"] = shim.stop()
    before = tracemalloc.get_traced_memory()[0]
    more = [bytes(1000) for _ in range(1000)]
    out["traced_growth"] = tracemalloc.get_traced_memory()[0] - before
    del more, keep
    tracemalloc.stop()
    shim.unload()
    out["mapped_after_unload"] = maps_mention(shim.path)


def stale(shim, out):
    tracemalloc.start()
    shim.start(4096, seed=5)
    keep = workload()
    tracemalloc.stop()  # restores what it saved: our hooks are gone
    keep += workload()
    out["stop_restored"] = shim.stop()
    out["state"] = shim.state
    try:
        shim.unload()
        out["unload"] = "unloaded"
    except ShimError as exc:
        out["unload"] = f"refused: {exc}"
    del keep
    gc.collect()
    keep = workload()
    tracemalloc.start()
    keep += workload()
    tracemalloc.stop()
    out["stop_again"] = shim.stop()  # retry: still not ours
    out["alive"] = True


def over(shim, out):
    shim.start(4096, seed=5)
    tracemalloc.start()
    keep = workload()
    out["stop_restored"] = shim.stop()
    out["state_after_stop"] = shim.state
    keep += workload()
    tracemalloc.stop()  # puts our (pass-through) hooks back on top
    keep += workload()
    shim.start(4096, seed=6)
    keep += workload()
    d = shim.drain()
    out["samples_in_second_session"] = d.totals.sampled_count
    out["second_stop_restored"] = shim.stop()
    out["state_final"] = shim.state
    del keep
    shim.unload()
    out["mapped_after_unload"] = maps_mention(shim.path)


def main():
    scenario = sys.argv[1]
    shim = load()
    out = {"scenario": scenario, "idle": STATE_IDLE, "left": STATE_LEFT}
    {"under": under, "stale": stale, "over": over}[scenario](shim, out)
    emit(out)


main()
