"""A prefork server in miniature: forks many short-lived children while an agent works.

Usage: forker.py COUNT [SHAPES] [TIMEOUT]
Prints "READY <pid>", builds a few hundred distinct live stacks and keeps allocating so
that an attached agent is always busy draining, then waits for SIGUSR1. On each, forks
COUNT children from the main thread, in batches of 8 alive at once, in the shapes named by
SHAPES (comma separated, taken in turn): "gunicorn" (os.fork; the child allocates and
leaves with os._exit(0)), "mp" (multiprocessing's fork context: Process.start / join).
Each batch must have exited 0 within TIMEOUT seconds (default 30): otherwise its children
are killed, "HANG <index> <shape>" names the first one not reaped, and the target exits 3;
a child that exits otherwise:
"BAD <index> <shape> <status>", exit 4. After the last child: "FORKED <count>", and the
target churns on, waiting for the next SIGUSR1. Written for Python 3.8+.
"""

import multiprocessing
import os
import signal
import sys
import time

COUNT = int(sys.argv[1])
SHAPES = (sys.argv[2] if len(sys.argv) > 2 else "gunicorn").split(",")
TIMEOUT = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
BATCH = 8  # children alive at once, as a prefork server keeps several workers
kept = []
go = []


def nest(depth, size):
    """A distinct stack per depth: hundreds of live stacks for the agent to drain."""
    if depth:
        return nest(depth - 1, size)
    return bytearray(size)


def churn(i):
    kept[i % len(kept)] = nest(i % 200, 64 + i % 900)
    return [str(n) for n in range(30)]


def child_work():
    churn(7)  # the hooks the child inherited must still work (or be gone)


class Hung(Exception):
    pass


def _alarm(_sig, _frame):
    raise Hung()


def reap(children):
    """Wait for each (index, shape, pid or Process), blocking in waitpid (the agent thread
    gets the GIL meanwhile), the whole batch bounded by SIGALRM."""
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
    pending = list(children)
    try:
        while pending:
            index, shape, child = pending[0]
            if shape == "mp":
                child.join()
                status = child.exitcode
                ok = status == 0
            else:
                _, status = os.waitpid(child, 0)
                ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            if not ok:
                print("BAD %d %s %s" % (index, shape, status), flush=True)
                sys.exit(4)
            pending.pop(0)
    except Hung:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for _, shape, child in pending:
            if shape == "mp":
                child.kill()
                child.join()
            else:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
        print("HANG %d %s" % pending[0][:2], flush=True)
        sys.exit(3)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def fork_gunicorn():
    pid = os.fork()
    if pid == 0:
        try:
            child_work()
        finally:
            os._exit(0)
    return pid


def fork_mp(ctx):
    proc = ctx.Process(target=child_work)
    proc.start()
    return proc


def main():
    kept.extend(nest(d, 128) for d in range(200))
    signal.signal(signal.SIGUSR1, lambda *_: go.append(1))
    signal.signal(signal.SIGALRM, _alarm)
    print("READY %d" % os.getpid(), flush=True)
    ctx = multiprocessing.get_context("fork")
    i = 0
    while True:
        while not go:
            churn(i)
            i += 1
            time.sleep(0.001)
        go.clear()
        fork_many(ctx, COUNT)


def fork_many(ctx, count):
    batch = []
    for index in range(count):
        shape = SHAPES[index % len(SHAPES)]
        batch.append((index, shape, fork_mp(ctx) if shape == "mp" else fork_gunicorn()))
        churn(index)
        if len(batch) == BATCH:
            reap(batch)
            batch = []
    reap(batch)
    print("FORKED %d" % count, flush=True)


main()
