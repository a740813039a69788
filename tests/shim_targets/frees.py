"""Every free of a sampled block is seen, in any order, past map growth and filter sharing.

Rate 1 samples every allocation: N blocks held in a preallocated array (so the only
live objects made on the marked line are the blocks themselves) make the pointer map
grow many times, and dozens of pairs of them share a bit of the free path's filter.
Freed in a shuffled order, half then all, the line's live count must drop to exactly
N / 2 and then 0: a filter bit cleared while another live block still needed it leaves
that block's free unseen (a build that always clears it: 15013 and 49).
"""

import array
import random

from _common import Profile, emit, load, obj_free, obj_malloc

N = 30000


def hold(slots, sizes):
    for i in range(N):
        slots[i] = obj_malloc(sizes[i])  # LINE: hold


def main():
    shim = load()
    prof = Profile(shim)
    slots = array.array("Q", bytes(8 * N))
    rng = random.Random(7)
    # Sizes across pymalloc's classes: one size's blocks are evenly spaced, and Fibonacci
    # hashing spreads an even spacing so evenly that no two would share a filter bit.
    sizes = array.array("Q", (rng.randrange(1, 513) for _ in range(N)))
    order = list(range(N))
    rng.shuffle(order)
    shim.start(1, max_frames=8)
    hold(slots, sizes)
    prof.drain()
    held = prof.summary("hold", 1)["live_count"]
    for j in order[: N // 2]:
        obj_free(slots[j])
    prof.drain()
    half = prof.summary("hold", 1)["live_count"]
    for j in order[N // 2 :]:
        obj_free(slots[j])
    prof.drain()
    done = prof.summary("hold", 1)["live_count"]
    totals = prof.last.totals
    shim.stop()
    emit({"n": N, "held": held, "half": half, "done": done, "shim_memory": totals.shim_memory})


main()
