"""Main thread blocked on a futex: a Lock, a Thread.join() or an Event.wait().

Usage: lock_waiter.py lock|join|event
Prints "READY <pid>"; the main thread then waits until a line arrives on stdin (a helper
thread blocked in read() releases it), and prints "WOKE <seconds since the release>".
A futex nudge from heapspy must not end the wait early: the release is the only way out.
"""

import os
import sys
import threading
import time

released_at = []


def main():
    mode = sys.argv[1]
    lock = threading.Lock()
    lock.acquire()
    event = threading.Event()

    def release():
        sys.stdin.readline()
        released_at.append(time.monotonic())
        if mode == "lock":
            lock.release()
        elif mode == "event":
            event.set()

    helper = threading.Thread(target=release, daemon=True)
    helper.start()
    print("READY", os.getpid(), flush=True)
    if mode == "lock":
        lock.acquire()
    elif mode == "event":
        event.wait()
    else:
        helper.join()
    woke = time.monotonic()
    if not released_at:
        print("EARLY", flush=True)
        sys.exit(1)
    print("WOKE %.3f" % (woke - released_at[0]), flush=True)


if __name__ == "__main__":
    main()
