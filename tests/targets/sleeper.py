"""Main thread sleeping in a loop; checks that no sleep came back early.

Usage: sleeper.py STOPFILE SECONDS
Prints "READY <pid>", then sleeps SECONDS at a time until STOPFILE exists, and prints
"DONE <sleeps> <short>" where <short> counts sleeps that returned more than 1 ms early
(an interrupted clock_nanosleep/select that was not restarted properly). Exit status 0
only if none did.
"""

import os
import sys
import time


def main():
    stop_file, seconds = sys.argv[1], float(sys.argv[2])
    sleeps = short = 0
    print("READY", os.getpid(), flush=True)
    while not os.path.exists(stop_file):
        start = time.monotonic()
        time.sleep(seconds)
        if time.monotonic() - start < seconds - 0.001:
            short += 1
        sleeps += 1
    print("DONE", sleeps, short, flush=True)
    sys.exit(1 if short else 0)


if __name__ == "__main__":
    main()
