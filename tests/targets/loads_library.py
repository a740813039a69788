"""Loads the shared library named on the command line, then idles.

Usage: loads_library.py PATH
Prints "READY <pid>" once ``ctypes.CDLL(PATH)`` returned.
"""

import ctypes
import os
import sys
import time


def main():
    ctypes.CDLL(sys.argv[1])
    print("READY", os.getpid(), flush=True)
    while True:
        time.sleep(0.05)


if __name__ == "__main__":
    main()
