"""A server whose requests run freshly generated code, as template engines, ORMs and
validation libraries do: each request compiles a new function in a new file name, calls
it (its request data is freed when it returns), and drops it. A small cache stays live.

Reads commands on stdin: "report" prints one line ``REPORT {json}``: requests served,
generated code objects still alive (something else holds them: the profiler), RSS,
pymalloc's block count, and its arenas and allocated bytes (from
``sys._debugmallocstats``, which says nothing while another allocator hook is installed:
then null). Prints "READY <pid>" first. Python 3.8+.
"""

import json
import os
import sys
import tempfile
import threading
import weakref

alive_code = weakref.WeakSet()  # the generated code objects that still exist
served = [0]
cache = []


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pymalloc() -> "tuple[int | None, int | None]":
    """pymalloc's arenas and bytes in allocated blocks, by its own account (read from the
    C stderr sys._debugmallocstats writes to); (None, None) when it gives none."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode("ascii", "replace")
    arenas = allocated = None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "# arenas allocated current":
            arenas = int(value.replace(",", ""))
        elif key.strip() == "# bytes in allocated blocks":
            allocated = int(value.replace(",", ""))
    return arenas, allocated


def commands() -> None:
    for line in sys.stdin:
        if line.strip() == "report":
            arenas, allocated = pymalloc()
            report = {
                "requests": served[0],
                "alive_code": len(alive_code),
                "rss": rss(),
                "blocks": sys.getallocatedblocks(),
                "arenas": arenas,
                "allocated": allocated,
            }
            sys.stdout.write("REPORT " + json.dumps(report) + "\n")
            sys.stdout.flush()
    os._exit(0)


def serve(n: int) -> None:
    source = (
        f"def render_{n}(rows):\n"
        f"    out = [dict(row, n={n}) for row in rows]\n"
        "    return ''.join(str(r) for r in out)\n"
    )
    scope = {}
    exec(compile(source, f"template_{n}.py", "exec"), scope)
    render = scope[f"render_{n}"]
    alive_code.add(render.__code__)
    page = render([{"id": i, "name": "x" * 20} for i in range(30)])
    if n % 100 == 0:
        cache.append(page)
        del cache[:-50]  # a small live set
    served[0] += 1


threading.Thread(target=commands, daemon=True).start()
print(f"READY {os.getpid()}", flush=True)
n = 0
while True:
    serve(n)
    n += 1
