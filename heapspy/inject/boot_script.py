"""The bootstrap script the interpreter runs first inside the target.

Kept apart from file placement: what runs in the target (this text) and how root puts
files there (``bootstrap.py``) are separate concerns with separate threats.
"""

from __future__ import annotations

from heapspy_agent import protocol

_BOOT = """\
# heapspy bootstrap: imports the agent heapspy placed beside this file; the agent then
# deletes these files. Nothing may escape into the target, so every error is caught.
# It runs where the interpreter ran it (a pending call, or a PEP 768 request), which can
# be in the middle of one of the target's own imports, so all the work happens in a new
# thread. That thread must not import while the target imports either: when two threads
# each hold a module lock the other needs, importlib hands one of them the module
# half-initialised, and that can be the target (it dies of an AttributeError). So the
# thread waits until no import is under way anywhere, then holds the global import lock
# (no import can start while it is held) for every import the agent and this script make.
def _heapspy_importing(sys, bootstrap):
    # An import under way holds a module lock, listed (weakly) in _module_locks while
    # anyone uses it; while it runs its module's code, that module's spec says
    # _initializing. Read without running the target's code: a module subclass (a lazy
    # module) may load itself on attribute access.
    for ref in list(getattr(bootstrap, "_module_locks", {{}}).values()):
        if ref() is not None:
            return True
    module_type = type(sys)
    spec_type = type(sys.__spec__)
    module_dict = module_type.__dict__["__dict__"].__get__
    for module in list(sys.modules.values()):
        if issubclass(type(module), module_type):
            spec = module_dict(module).get("__spec__")
            if type(spec) is spec_type and spec.__dict__.get("_initializing"):
                return True
    return False


def _heapspy_quiet_imports(sys):
    # True with the global import lock held once no import is under way; False once the
    # deadline has passed (heapspy has given up by then: a bootstrap that runs late, after
    # a long sleep of the main thread, imports nothing and only deletes its files).
    modules = sys.modules  # each of these is loaded at every interpreter's start
    imp, bootstrap, time = modules["_imp"], modules["_frozen_importlib"], modules["time"]
    nap = modules["_thread"].allocate_lock()
    nap.acquire()
    deadline = {deadline!r} or time.time() + 30.0
    while True:
        if time.time() > deadline:  # heapspy gave up: nothing may be imported now
            return False
        if not _heapspy_importing(sys, bootstrap):
            imp.acquire_lock()
            if not _heapspy_importing(sys, bootstrap):  # none started before we held it
                return True
            imp.release_lock()
        nap.acquire(True, 0.005)  # a sleep that needs no import


def _heapspy_import(sys):
    d = {dir!r}
    saved = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    sys.path.insert(0, d)
    try:
        for attempt in (1, 2, 3):
            try:
                import heapspy_agent.agent
                break
            except KeyError:
                # a module we import was dropped from sys.modules by the target meanwhile
                # (it needs no import lock to do so: 3.14's ctypes imports ctypes._layout
                # lazily); what failed was removed from sys.modules, so import it again
                if attempt == 3:
                    raise
    finally:
        sys.dont_write_bytecode = saved
        if d in sys.path:
            sys.path.remove(d)
    return heapspy_agent.agent


def _heapspy_report(exc):
    import json, os, socket, struct, traceback
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2.0)
    s.connect({sock!r})
    for kind, body in (({hello}, {{"version": {version}, "token": {token!r}, "pid": os.getpid()}}),
                       ({error}, {{"code": "boot", "message": "%s: %s" % (type(exc).__name__, exc),
                            "traceback": traceback.format_exc()}})):
        data = json.dumps(body).encode()
        s.sendall(struct.pack({header!r}, len(data), kind) + data)
    s.close()


def _heapspy_forget(sys):
    # The target was still importing when heapspy gave up: delete the files as the agent
    # would have (not the socket, heapspy's), with posix, loaded at every start.
    posix = sys.modules["posix"]
    d = {dir!r}
    for sub in (d + "/heapspy_agent", d):
        try:
            names = posix.listdir(sub)
        except OSError:
            continue
        for name in names:
            if name != "agent.sock":
                try:
                    posix.unlink(sub + "/" + name)
                except OSError:
                    pass
        try:
            posix.rmdir(sub)
        except OSError:
            pass


def _heapspy_locked(sys, work):
    # work(sys) under the global import lock once no import is under way; None if the
    # target was still importing at the deadline
    if not _heapspy_quiet_imports(sys):
        _heapspy_forget(sys)
        return None
    try:
        return work(sys)
    finally:
        sys.modules["_imp"].release_lock()


def _heapspy_run():
    import sys
    try:
        agent = _heapspy_locked(sys, _heapspy_import)
        if agent is not None:  # start() imports nothing, and is this thread's last act
            agent.start({dir!r}, {token!r}, globals().get("_heapspy_page"))
    except BaseException as e:
        try:
            _heapspy_locked(sys, lambda sys: _heapspy_report(e))
        except BaseException:
            pass


try:
    __import__("_thread").start_new_thread(_heapspy_run, ())
except BaseException:
    pass
"""


def boot_source(
    target_dir: str, token: str, socket_path: str, deadline: float | None = None
) -> str:
    """The bootstrap for one session: inert unless the agent beside it imports cleanly.

    ``deadline``: the session's (``time.time()``) deadline; a target still importing
    then is left alone (None: 30 s after the bootstrap runs).
    """
    return _BOOT.format(
        dir=target_dir,
        token=token,
        sock=socket_path,
        deadline=deadline,
        hello=protocol.HELLO,
        error=protocol.ERROR,
        version=protocol.VERSION,
        header=protocol.HEADER.format,
    )
