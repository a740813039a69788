"""Native leaks two C calls deep, for `heapspy attach --native --native-frames`.

Usage: native_frames.py LIB_WITH_FRAME_POINTERS LIB_WITHOUT
Both are tests/native_lib/nframes.c. The first is called through ctypes.PyDLL (the GIL
stays held: the sample's Python stack is read in the hook), the second through
ctypes.CDLL (the GIL is released: the sample gets its Python stack when the thread takes
the GIL back). Prints "READY <pid>", waits until the agent's collector runs, leaks
BYTES through each from its own line, prints "DONE" and idles until killed.
"""

import ctypes
import os
import sys
import time

BYTES = 8 << 20
BLOCK = 64 << 10

with_fp = ctypes.PyDLL(sys.argv[1])
without_fp = ctypes.CDLL(sys.argv[2])
for lib in (with_fp, without_fp):
    lib.nf_outer.restype = ctypes.c_int
    lib.nf_outer.argtypes = [ctypes.c_size_t]


def leak_with_frame_pointers():
    for _ in range(BYTES // BLOCK):
        with_fp.nf_outer(BLOCK)  # LINE: fp


def leak_without_frame_pointers():
    for _ in range(BYTES // BLOCK):
        without_fp.nf_outer(BLOCK)  # LINE: nofp


def collecting():
    agent = sys.modules.get("heapspy_agent.agent")
    active = getattr(agent, "_active", None)
    return active is not None and getattr(active, "collector", None) is not None


def main():
    print("READY", os.getpid(), flush=True)
    while not collecting():
        time.sleep(0.01)
    leak_with_frame_pointers()
    leak_without_frame_pointers()
    print("DONE", flush=True)
    while True:
        time.sleep(0.05)


if __name__ == "__main__":
    main()
