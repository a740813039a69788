"""A small worker that leaks, for `heapspy demo`: run it, attach, find the leak.

``Shipper.buffer_line`` keeps every line it was meant to ship (the leak);
``parse_record`` makes short-lived garbage (churn that is freed at once). A real
profiler must put the first at the top of ``inuse_space`` and the second at the top of
``alloc_space``. Prints ``READY <pid>`` once running. Standard library only.

It also counts what it keeps, so the demo can hold heapspy's estimate against the truth:
SIGUSR1 starts the count, SIGUSR2 stops the leak and prints ``KEPT <bytes>``, the sizes
(``sys.getsizeof``, what the allocator was asked for) of the lines kept in between.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from types import FrameType


class Shipper:
    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.counting = False
        self.kept = 0  # bytes kept while counting
        self.stopped = False

    def buffer_line(self, line: str) -> None:
        # The bug: lines are buffered but never flushed.
        self.pending.append(line.encode() * 16)
        if self.counting:
            self.kept += sys.getsizeof(self.pending[-1])

    def start_count(self, _signum: int, _frame: FrameType | None) -> None:
        self.counting = True

    def stop_count(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopped = True
        print(f"KEPT {self.kept}", flush=True)


def parse_record(i: int) -> dict[str, object]:
    text = json.dumps({"id": i, "payload": "z" * 200, "tags": list(range(20))})
    return dict(json.loads(text))


def main() -> None:
    pause = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0002
    shipper = Shipper()
    signal.signal(signal.SIGUSR1, shipper.start_count)
    signal.signal(signal.SIGUSR2, shipper.stop_count)
    print(f"READY {os.getpid()}", flush=True)
    i = 0
    while True:
        record = parse_record(i)
        i += 1
        if i % 10 == 0 and not shipper.stopped:
            shipper.buffer_line(f"{record['id']}:{record['payload']}")
        time.sleep(pause)


if __name__ == "__main__":
    main()
