"""Code objects whose co_filename names files chosen by the caller (hostile ones, in tests).

Usage: named_files.py PATH...
Compiles, for each PATH i, ``class Box: def alloc_i(keep)`` under that file name (so
tracemalloc frames and code objects name PATH, line 3), prints "READY <pid>" and then
keeps calling every alloc_i, each holding 64 blocks of 4 KiB alive.
"""

import os
import sys
import time

SOURCE = """class Box:
    def alloc_{i}(keep):
        keep.append(bytearray(4096))
"""


def main():
    functions = []
    for i, path in enumerate(sys.argv[1:]):
        namespace = {}
        exec(compile(SOURCE.format(i=i), path, "exec"), namespace)
        functions.append(getattr(namespace["Box"], f"alloc_{i}"))
    kept = [[] for _ in functions]
    print("READY", os.getpid(), flush=True)
    while True:
        for function, keep in zip(functions, kept):
            function(keep)
            if len(keep) > 64:
                del keep[0]
        time.sleep(0.001)


if __name__ == "__main__":
    main()
