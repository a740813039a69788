"""start/stop cycles while 4 threads allocate: no crash, and exact totals per cycle.

argv: cycles. Each thread also makes 1.5 MB PyMem_Malloc calls (size class 21, which
nothing else here uses) under a lock, counting them; the main thread starts and stops the
shim under the same lock, so each session's class-21 count must equal the calls made.
"""

import random
import sys
import threading
import time

from _common import emit, load, maps_mention, mem_free, mem_malloc

CYCLES = int(sys.argv[1])
THREADS = 4
BIG = 1_500_000

lock = threading.Lock()
calls = [0] * THREADS
running = True


def storm(k):
    rnd = random.Random(k)
    junk = []
    while running:
        junk.append({"s": str(rnd.random()) * rnd.randint(1, 20), "l": [0] * rnd.randint(0, 300)})
        if len(junk) > 3000:
            del junk[:1500]
        b = bytearray(rnd.randint(1, 3000))
        b.extend(b"x" * rnd.randint(0, 3000))  # realloc
        try:
            raise KeyError(k)
        except KeyError:
            pass
        with lock:
            p = mem_malloc(BIG)
            calls[k] += 1
        mem_free(p)


def main():
    global running
    sys.setswitchinterval(1e-4)
    shim = load()
    threads = [threading.Thread(target=storm, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    rnd = random.Random(0)
    mismatches = []
    restored = 0
    samples = 0
    for i in range(CYCLES):
        with lock:
            rate = rnd.choice([4096, 65536, 512 * 1024])
            shim.start(rate, max_frames=rnd.choice([1, 8, 64]), seed=i + 1)
            before = sum(calls)
        time.sleep(rnd.uniform(0, 0.004))
        if rnd.random() < 0.5:
            shim.set_rate(rnd.choice([0, 1024, 65536]))
        d = shim.drain()
        time.sleep(rnd.uniform(0, 0.002))
        with lock:
            restored += shim.stop()
            made = sum(calls) - before
        t = shim.totals()
        samples += t.sampled_count
        if t.mem.size_classes[21] != made or t.obj.size_classes[21] != 0:
            mismatches.append([i, made, t.mem.size_classes[21], t.obj.size_classes[21]])
        mismatches += [
            [i, "histogram", sum(dom.size_classes), dom.alloc_count]
            for dom in (t.mem, t.obj)
            if sum(dom.size_classes) != dom.alloc_count
        ]
        assert d.totals.state == 1
    running = False
    for t in threads:
        t.join()
    path = shim.path
    shim.unload()
    emit(
        {
            "cycles": CYCLES,
            "restored": restored,
            "mismatches": mismatches,
            "calls": sum(calls),
            "samples": samples,
            "mapped_after_unload": maps_mention(path),
        }
    )


main()
