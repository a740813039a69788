"""An attach target with a probe: SIGUSR2 makes it write its own state as JSON.

Usage: probe_target.py MODE, MODE one of busy, sleep, sleep-worker, accept, lock,
threads (8 pure-Python spinners), workers (4 allocating threads), asyncio, exit-soon,
grow (keeps 64 KiB per 10 ms at grow_cache), last-words (on SIGUSR1: keeps 32 MiB at
last_words, then exits), fork (on SIGUSR1: forks a child that allocates, writes its
probe to $HEAPSPY_PROBE.child and exits; the parent writes its wait status to .status),
exec (on SIGUSR1: replaces itself with /bin/sleep 30), join-workers (the main thread in
Thread.join() while two threads spin in Python; READY gives their TIDs), join-idle (the
main thread in Thread.join() of a thread that sleeps: no thread runs Python).
Prints "READY <pid>" once set up. $PROBE_SLEEP: seconds per sleep in the sleep modes
(3). The probe file is named by $HEAPSPY_PROBE.
Written for Python 3.8+.
"""

import gc
import json
import os
import signal
import socket
import sys
import threading
import time

MODE = sys.argv[1] if len(sys.argv) > 1 else "busy"
kept = []


def _fds():
    """Open fds as "n -> target", leaving out the one listdir itself uses."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            out.append("%s -> %s" % (name, os.readlink("/proc/self/fd/" + name)))
        except OSError:  # noqa: PERF203 - the listing's own fd is gone by now
            pass
    return sorted(out)


def probe(_sig, _frame):
    import tracemalloc

    state = {
        "modules": sorted(m for m in sys.modules if m.startswith("heapspy_agent")),
        "tracing": tracemalloc.is_tracing(),
        "threads": [t.name for t in threading.enumerate()],
        "fds": _fds(),
        "path": [p for p in sys.path if "heapspy" in p],
        "main_globals": sorted(k for k in globals() if k.startswith("_heapspy")),
        "kept": len(kept),
        # instances of the agent's classes still alive (e.g. held by an atexit entry)
        "agent_objects": sorted(
            type(o).__name__
            for o in gc.get_objects()
            if getattr(type(o), "__module__", "").startswith("heapspy_agent")
        ),
    }
    path = os.environ["HEAPSPY_PROBE"]
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)


def retain_blocks():
    kept.append(bytearray(4096))


def churn():
    return [str(i) for i in range(50)]


def grow_cache():
    kept.append(bytearray(65536))


def spin():
    x = 0.5
    while True:
        x = (x * 1.0000001) % 7.0
        retain_blocks() if len(kept) < 2000 else None
        churn()


signal.signal(signal.SIGUSR2, probe)
if os.environ.get("SIGPIPE_DEFAULT"):  # as CLI tools and some servers do: EPIPE kills
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)

if MODE == "threads":
    for _ in range(8):
        threading.Thread(target=spin, daemon=True).start()
elif MODE == "workers":
    def work():
        while True:
            churn()
            time.sleep(0.001)

    for _ in range(4):
        threading.Thread(target=work, daemon=True).start()
elif MODE == "sleep-worker":
    worker = threading.Thread(target=spin, name="worker", daemon=True)
    worker.start()
elif MODE == "join-workers":
    joined = [threading.Thread(target=spin, daemon=True) for _ in range(2)]
elif MODE == "join-idle":
    joined = [threading.Thread(target=time.sleep, args=(3600,), daemon=True)]
if MODE.startswith("join-"):
    for t in joined:
        t.start()

if MODE == "sleep-worker":
    print("READY %d %d" % (os.getpid(), worker.native_id), flush=True)
elif MODE == "join-workers":
    print("READY %d %s" % (os.getpid(), " ".join(str(t.native_id) for t in joined)), flush=True)
else:
    print("READY %d" % os.getpid(), flush=True)

if MODE in ("busy", "threads", "alloc", "workers"):
    while True:
        retain_blocks() if len(kept) < 2000 else None
        churn()
        time.sleep(0.0005 if MODE == "busy" else 0.0001)
elif MODE == "grow":  # 6.4 MiB/s retained at grow_cache, churn beside it
    while True:
        grow_cache() if len(kept) < 6000 else None
        for _ in range(20):
            churn()
        time.sleep(0.01)
elif MODE in ("sleep", "sleep-worker"):
    while True:
        time.sleep(float(os.environ.get("PROBE_SLEEP", "3")))
elif MODE.startswith("join-"):  # a server's main thread once its workers are started
    joined[0].join()
elif MODE == "accept":
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    while True:
        srv.accept()
elif MODE == "lock":
    lock = threading.Lock()
    lock.acquire()
    while True:
        lock.acquire(timeout=60)
elif MODE == "asyncio":
    import asyncio

    async def idle():
        while True:
            await asyncio.sleep(0.5)

    asyncio.run(idle())
elif MODE == "gil-hog":
    # one C call that holds the GIL for seconds, once the agent is there and has
    # finished its handshake (the hog is meant for a running session, not its start)
    while threading.active_count() == 1:
        time.sleep(0.01)
    time.sleep(1.0)
    while True:
        sum(map(abs, range(int(os.environ.get("HOG", "200000000")))))
        time.sleep(0.2)
elif MODE == "last-words":  # churns until SIGUSR1, then keeps 32 MiB and exits
    told = []
    signal.signal(signal.SIGUSR1, lambda *_: told.append(1))

    def last_words():
        words = []
        for _ in range(8192):  # a loop: before 3.12 a comprehension is a frame of its own
            words.append(bytearray(4096))  # noqa: PERF401
        return words

    while not told:
        churn()
        time.sleep(0.001)
    hoard = last_words()
    sys.exit(0)
elif MODE == "exec":  # churns until SIGUSR1, then becomes another program
    told = []
    signal.signal(signal.SIGUSR1, lambda *_: told.append(1))
    while not told:
        churn()
        time.sleep(0.001)
    os.execv("/bin/sleep", ["sleep", "30"])
elif MODE == "fork":  # on SIGUSR1: fork a child that allocates, probes itself, exits
    told = []
    signal.signal(signal.SIGUSR1, lambda *_: told.append(1))
    while True:
        churn()
        time.sleep(0.001)
        if told:
            told.clear()
            child = os.fork()
            if child == 0:
                kept.extend(bytearray(4096) for _ in range(2048))
                os.environ["HEAPSPY_PROBE"] += ".child"
                probe(None, None)
                sys.exit(0)  # runs the child's atexit callbacks
            _, status = os.waitpid(child, 0)
            with open(os.environ["HEAPSPY_PROBE"] + ".status", "w") as f:
                f.write(str(status))
elif MODE == "exit-soon":
    time.sleep(float(os.environ.get("EXIT_AFTER", "0.2")))
    sys.exit(0)
