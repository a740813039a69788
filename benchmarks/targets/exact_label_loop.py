"""The loop exact_label_cost.py runs under cachegrind: exact mode's collector (tracemalloc
plus the shim on top of it at the label rate given, 0: totals only), an allocation-heavy
loop, a collection after each round.

Usage: exact_label_loop.py AGENT_DIR LABEL_RATE ALLOCATIONS [ROUNDS]
"""

import sys

sys.path.insert(0, sys.argv[1])
from heapspy_agent.exact import TracemallocCollector  # noqa: E402
from heapspy_agent.sampled import ShimCollector, load_shim  # noqa: E402

shim, why = load_shim(sys.argv[1])
if shim is None:
    sys.exit(why)
collector = TracemallocCollector(64, "/nonexistent")
collector.totals_source = ShimCollector(shim, int(sys.argv[2]), 64, "/nonexistent")
kept = []
for _ in range(int(sys.argv[4]) if len(sys.argv) > 4 else 3):
    for i in range(int(sys.argv[3])):
        kept.append(str(i) * 3)
        if len(kept) > 50000:
            del kept[:25000]
    collector.collect()
collector.stop()
