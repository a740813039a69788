"""The bootstrap script the interpreter runs first inside the target.

Kept apart from file placement: what runs in the target (this text) and how root puts
files there (``bootstrap.py``) are separate concerns with separate threats.
"""

from __future__ import annotations

_BOOT = """\
# heapspy bootstrap: imports the agent heapspy placed beside this file; the agent then
# deletes these files. Nothing may escape into the target, so every error is caught.
# It runs where the interpreter ran it (a pending call, or a PEP 768 request), which can
# be in the middle of one of the target's own imports: importing there would hand the
# agent that module half-initialised. So all the work happens in a new thread, whose
# imports wait for the target's to finish.
def _heapspy_boot():
    import sys
    d = {dir!r}
    saved = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    sys.path.insert(0, d)
    try:
        import heapspy_agent.agent
    finally:
        sys.dont_write_bytecode = saved
        if d in sys.path:
            sys.path.remove(d)
    heapspy_agent.agent.start(d, {token!r}, globals().get("_heapspy_page"))


def _heapspy_report(exc):
    import json, socket, struct, traceback
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2.0)
    s.connect({sock!r})
    for kind, body in ((1, {{"version": 1, "token": {token!r}, "pid": __import__("os").getpid()}}),
                       (5, {{"code": "boot", "message": "%s: %s" % (type(exc).__name__, exc),
                            "traceback": traceback.format_exc()}})):
        data = json.dumps(body).encode()
        s.sendall(struct.pack(">IB", len(data), kind) + data)
    s.close()


def _heapspy_run():
    try:
        _heapspy_boot()
    except BaseException as e:
        try:
            _heapspy_report(e)
        except BaseException:
            pass


try:
    __import__("_thread").start_new_thread(_heapspy_run, ())
except BaseException:
    pass
"""


def boot_source(target_dir: str, token: str, socket_path: str) -> str:
    """The bootstrap for one session: inert unless the agent beside it imports cleanly."""
    return _BOOT.format(dir=target_dir, token=token, sock=socket_path)
