"""The process exits (with a daemon thread still allocating) while the shim runs."""

import threading

from _common import emit, load


def spin():
    while True:
        [str(i) for i in range(1000)]


def main():
    shim = load()
    shim.start(1024, seed=4)
    keep = [bytes(i % 500) for i in range(50000)]
    threading.Thread(target=spin, daemon=True).start()
    emit({"kept": len(keep)})


main()
