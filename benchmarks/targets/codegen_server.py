"""A server whose requests run freshly generated code, as template engines, ORMs and
validation libraries do: each request compiles a new function in a new file name, calls
it (its request data is freed when it returns), and drops it. A small cache stays live.

Reads commands on stdin: "report" prints one line ``REPORT {json}``: requests served,
generated code objects still alive (something else holds them: the profiler), RSS, and
pymalloc's block count. Prints "READY <pid>" first. Python 3.8+.
"""

import json
import os
import sys
import threading
import weakref

alive_code = weakref.WeakSet()  # the generated code objects that still exist
served = [0]
cache = []


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def commands() -> None:
    for line in sys.stdin:
        if line.strip() == "report":
            report = {
                "requests": served[0],
                "alive_code": len(alive_code),
                "rss": rss(),
                "blocks": sys.getallocatedblocks(),
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
