"""A small worker that leaks, for `heapspy demo`: run it, attach, find the leak.

``Shipper.buffer_line`` keeps every line it was meant to ship (the leak);
``parse_record`` makes short-lived garbage (churn that is freed at once). A real
profiler must put the first at the top of ``inuse_space`` and the second at the top of
``alloc_space``. Prints ``READY <pid>`` once running. Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time


class Shipper:
    def __init__(self) -> None:
        self.pending: list[bytes] = []

    def buffer_line(self, line: str) -> None:
        # The bug: lines are buffered but never flushed.
        self.pending.append(line.encode() * 16)


def parse_record(i: int) -> dict[str, object]:
    text = json.dumps({"id": i, "payload": "z" * 200, "tags": list(range(20))})
    return dict(json.loads(text))


def main() -> None:
    pause = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0002
    shipper = Shipper()
    print(f"READY {os.getpid()}", flush=True)
    i = 0
    while True:
        record = parse_record(i)
        i += 1
        if i % 10 == 0:
            shipper.buffer_line(f"{record['id']}:{record['payload']}")
        time.sleep(pause)


if __name__ == "__main__":
    main()
