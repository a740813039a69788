"""An idle-ish worker (as benchmarks/daemon_fleet.py's), in phases that SIGUSR1 moves on:

0. idle: allocates nothing;
1. grow() keeps one BLOCK-byte bytes object every TICK seconds (the live heap grows every
   interval), and churn() makes one and frees it at once (one allocation, on one line);
2. churn() only: the allocation counters move, the live heap does not;
3. idle again: once ``settled`` is true the counts are final.

SIGHUP starts pulse(): one block made and freed at once every PULSE seconds, whatever
the phase. SIGUSR2 writes the phase, ``settled`` and how many blocks churn() and grow() made as JSON
to $HEAPSPY_PROBE. Prints "READY <pid>". Python 3.8+.
"""

import json
import os
import signal
import time

TICK = 0.05
PULSE = 1.0
BLOCK = 64 * 1024
counts = {"phase": 0, "churn": 0, "grow": 0, "pulse": 0, "settled": False}
pulsing = []  # when the next pulse is due, once SIGHUP came
kept = []


def probe(_sig, _frame):
    # no file object (its 8 KiB buffer would be a sample, live if a collection came
    # meanwhile): the test asks often, and must not make live changes itself
    path = os.environ["HEAPSPY_PROBE"]
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, json.dumps(counts).encode())
    finally:
        os.close(fd)
    os.replace(path + ".tmp", path)


def next_phase(_sig, _frame):
    counts["phase"] += 1


def start_pulses(_sig, _frame):
    if not pulsing:
        pulsing.append(time.monotonic())


def pulse():
    block = bytes(BLOCK)
    del block
    counts["pulse"] += 1


def churn():
    block = bytes(BLOCK)
    del block
    counts["churn"] += 1


def grow():
    kept.append(bytes(BLOCK))
    counts["grow"] += 1


signal.signal(signal.SIGUSR2, probe)
signal.signal(signal.SIGUSR1, next_phase)
signal.signal(signal.SIGHUP, start_pulses)
print("READY %d" % os.getpid(), flush=True)
while True:
    phase = counts["phase"]  # read once: a signal meanwhile takes effect next tick
    if phase == 1:
        grow()
    if phase in (1, 2):
        churn()
    if pulsing and time.monotonic() >= pulsing[0]:
        pulsing[0] += PULSE
        pulse()
    if phase >= 3:
        counts["settled"] = True  # nothing is allocated after this
    time.sleep(TICK)
