"""The agent's life inside the target: connect back, profile, stream, switch off.

``start`` is called by the bootstrap in whichever thread ran it and returns at once; the
work happens in one daemon thread. Whatever ends the session (a detach command, heapspy
vanishing, an error) goes through ``Agent._shutdown``, which stops profiling, closes the
socket and drops the agent's modules, so the target goes back to what it was.
"""

import atexit
import ctypes
import gc
import json
import os
import select
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional

# Every agent module, and every module the agent uses, is imported here, at start, under
# the bootstrap's import lock: the files are deleted right after, and once it runs the
# agent imports nothing (the target may be importing: see heapspy/inject/boot_script.py).
from heapspy_agent import census_walk, memstats, protocol, retainers, runtime, schema, stacks
from heapspy_agent.census import Census, new_census
from heapspy_agent.exact import LABEL_RATE, TracemallocCollector
from heapspy_agent.quiet import QuietIntervals
from heapspy_agent.sampled import ShimCollector, evict_after, load_shim
from heapspy_agent.shim import STATE_RUNNING, Shim, ShimError

# No frame at all from heapspy for this long: assume it is gone. Its end is seen at once
# (the socket closes); this is for a heapspy that hangs. A daemon holding many sessions
# in one process can be late with heartbeats on a loaded host (5 s dropped most of 50
# sessions at load 50), so it is long, as heapspy's own AGENT_TIMEOUT for the agent is.
PEER_TIMEOUT = 60.0
# At most this share of one core goes to collecting: a tracemalloc snapshot of a million
# blocks costs seconds of CPU (and the GIL), so exact mode on a big heap collects less
# often rather than slow the target down. Sampled mode costs ~1-2 ms per interval.
COLLECT_BUDGET = 0.02
# Only when nothing else went out for that long (or idle_report + 2 intervals): at the
# default interval the samples say "alive" every second, or at least every idle_report,
# and a daemon serving many targets wakes once per frame per target.
HEARTBEAT = 1.0
PAGE = 4096
# The target's exit waits for one last collection only if collections are this cheap
# (sampled mode: ~1-2 ms; exact mode on a big heap: up to ~1 s, then it is skipped).
EXIT_COLLECT_MAX = 0.25
# Every send says MSG_NOSIGNAL: a target that restored SIGPIPE's default action (CLI
# tools, some servers do) would otherwise be killed by our first write after heapspy
# died, instead of us noticing EPIPE and switching off.
NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
# A heap census works in slices of at most CENSUS_SLICE seconds, each followed by
# CENSUS_PAUSE seconds of rest (the target runs; the agent serves heapspy): at most a
# quarter of one core. heapspy may ask for others (attach/census --slice, --pause).
CENSUS_SLICE = 0.01
CENSUS_PAUSE = 0.03
CENSUS_PROGRESS_EVERY = 0.25

_active: "Optional[Agent]" = None


def _remove_tree(path: str) -> None:
    """Delete the files heapspy placed for us; the socket is heapspy's to remove."""
    for root, dirs, files in os.walk(path, topdown=False):  # noqa: B007
        for name in files:
            full = os.path.join(root, name)
            if full != os.path.join(path, "agent.sock"):
                try:
                    os.unlink(full)
                except OSError:
                    pass
        for name in dirs:
            try:
                os.rmdir(os.path.join(root, name))
            except OSError:  # noqa: PERF203 - a rare, tiny loop
                pass
    try:
        os.rmdir(path)  # only once heapspy has removed its socket
    except OSError:
        pass


def _unmap_boot_page(page: int) -> bool:
    """Unmap the page the ptrace injector wrote our bootstrap into."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.munmap.restype = ctypes.c_int
    return bool(libc.munmap(page, PAGE) == 0)


class RequirementError(Exception):
    """--require-sampling was given and sampling cannot run here."""


class Agent:
    def __init__(self, directory: str, config: Dict[str, Any]) -> None:
        self.directory = directory
        self.config = config
        self.sock: Optional[socket.socket] = None
        self.collector: Any = None
        self.reason = "detached"
        self.notes: List[str] = []
        self.stopping = threading.Event()
        # Held while a frame is written, and across a collection and its sending: the
        # target's main thread sends the last samples at exit while this thread may be
        # mid-collection, and samples carry absolute values, so they must not cross.
        self._lock = threading.RLock()
        self._last_tx = 0.0  # when the last frame went to heapspy (time.monotonic)
        self._last_collect_cpu = 0.0
        self._exit_hook = False
        self.thread: Optional[threading.Thread] = None
        self.seq = 0
        # the totals and facts as last sent: a SAMPLES frame carries those that changed
        self._sent = {}  # type: Dict[str, Dict[str, Any]]
        self.base_interval = self.interval = 1.0  # seconds; set from the config in _serve
        # scheduled collections with nothing live changed wait (quiet.py); set in _serve
        self.quiet = QuietIntervals(0.0, 1.0)
        self.budget = COLLECT_BUDGET
        self.shim: Optional[Shim] = None
        self.shim_problem = ""
        self.census_lib: Optional[census_walk.Library] = None  # the census's native walk
        self._gc_base = gc.get_stats()
        self.gc_timer = runtime.GcTimer()
        # a census, or a retainer search walking as one (they never run at once)
        self.census: Optional[Any] = None
        self.census_slice = CENSUS_SLICE
        self.census_pause = CENSUS_PAUSE
        self.census_next = 0.0  # when the next slice of the census is due
        self.census_told = 0.0  # when progress was last sent
        self.parked = False  # benchmarks only: see park()
        self.shim_parked = False

    # --- life cycle -------------------------------------------------------------
    def run(self) -> None:
        global _active
        try:
            self._connect()
            self._serve()
        except RequirementError as exc:
            self.reason = str(exc)
            message = schema.clip_text(self.reason)
            self._send_quietly(protocol.ERROR, {"code": "no_sampling", "message": message})
        except BaseException as exc:  # noqa: BLE001 - nothing may escape into the target
            self.reason = schema.clip_text("agent error: %s: %s" % (type(exc).__name__, exc))
            self._send_quietly(protocol.ERROR, {"code": "agent", "message": self.reason})
        finally:
            try:
                self._shutdown()
            except BaseException:  # noqa: BLE001 - never print into the target's stderr
                pass

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = sock
        sock.settimeout(5.0)
        sock.connect(self.config["socket"])
        expected = int(self.config.get("heapspy_pid", 0))
        peer = protocol.peer_pid(sock)
        # pid 0: heapspy is outside our pid namespace, where its pid cannot be named
        if expected and peer and peer != expected:
            raise RuntimeError("socket is held by pid %d, not heapspy (%d)" % (peer, expected))
        self._send(
            protocol.HELLO,
            {
                "version": protocol.VERSION,
                "token": self.config["token"],
                "pid": os.getpid(),
                "python": schema.clip_text(sys.version.split()[0], 64),
                "hexversion": sys.hexversion,
                "argv": schema.clip_argv(list(getattr(sys, "argv", []))),
                "executable": schema.clip_text(sys.executable or ""),
                "threads": threading.active_count(),
            },
        )
        reader = protocol.FrameReader()
        pending: List[protocol.Message] = []
        msg = protocol.recv_one(sock, reader, pending)
        if msg is None or msg[0] != protocol.WELCOME:
            raise RuntimeError("heapspy did not welcome the agent")
        self.config.update(msg[1].get("config", {}))
        self._reader = reader
        self._pending = pending
        self.collector = self._make_collector()
        self._send(
            protocol.READY,
            {
                "sampling": self.collector.sampling().to_json(),
                "notes": [schema.clip_text(n) for n in self.notes[: schema.MAX_NOTES]],
                "tracemalloc_owned": getattr(self.collector, "owned", None),
            },
        )
        atexit.register(self._at_exit)
        self._exit_hook = True

    def _make_collector(self) -> Any:
        asked = schema.Sampling.from_json(self.config["sampling"])
        frames = asked.frames
        problem = self.shim_problem
        if asked.mode != schema.EXACT and self.shim is not None:
            try:
                sampled = ShimCollector(
                    self.shim,
                    asked.shim_rate,
                    frames,
                    self.directory,
                    native=bool(self.config.get("native", False)),
                    native_frames=bool(self.config.get("native_frames", False)),
                )
                self.notes.extend(sampled.notes)
                return sampled
            except ShimError as exc:
                problem = "the sampling shim refused to start: %s" % exc
        if asked.mode != schema.EXACT:
            if self.config.get("require_sampling"):
                raise RequirementError(problem)
            self.notes.append(
                problem + "; using tracemalloc instead (exact mode: every allocation is traced, "
                "which slows allocation-heavy code several-fold; attach with "
                "--require-sampling to refuse rather than fall back)"
            )
        collector = TracemallocCollector(frames, self.directory)
        if self.config.get("native"):
            self.notes.append("native allocations are sampled in sampled mode only, not here")
        if self.shim is not None and not problem:
            try:  # exact totals and label samples: the shim chained on top of tracemalloc
                collector.totals_source = ShimCollector(
                    self.shim, LABEL_RATE, frames, self.directory
                )
            except ShimError as exc:
                self.notes.append("no exact totals: %s" % exc)
        return collector

    def _serve(self) -> None:
        sock = self.sock
        assert sock is not None
        self.base_interval = self.interval = float(self.config.get("interval", 1.0))
        self.budget = float(self.config.get("collect_budget", COLLECT_BUDGET))
        idle_report = float(self.config.get("idle_report", 0.0))
        self.quiet = QuietIntervals(idle_report, self.base_interval)
        for shim_side in (self.collector, getattr(self.collector, "totals_source", None)):
            if isinstance(shim_side, ShimCollector):
                shim_side.evict_after = evict_after(idle_report, self.base_interval)
        # with idle_report, a frame goes out every idle_report (within half an interval
        # of it); the heartbeat waits two intervals longer, so that it never comes first
        beat_every = max(HEARTBEAT, idle_report + 2 * self.base_interval if idle_report else 0)
        self.gc_timer.install()
        # A send waits for heapspy to drain the socket as long as silence is tolerated:
        # the connect's 5 s ended sessions of a daemon GIL-starved at load 40 mid-census
        # ("agent error: TimeoutError: timed out"). It blocks only this thread.
        sock.settimeout(PEER_TIMEOUT)
        now = time.monotonic()
        last_rx = now
        next_beat = now + beat_every
        next_sample = now + self.interval
        for kind, body in self._pending:
            self._handle(kind, body)
        self._pending = []
        while not self.stopping.is_set():
            now = time.monotonic()
            due = min(next_beat, next_sample)
            if self.census is not None:
                due = min(due, self.census_next)
            wait = max(0.0, due - now)
            ready, _, _ = select.select([sock], [], [], wait)
            now = time.monotonic()
            if ready:
                data = sock.recv(65536)
                if not data:
                    self.reason = "heapspy went away"
                    return
                last_rx = now
                for kind, body in self._reader.feed(data):
                    self._handle(kind, body)
            elif now - last_rx > PEER_TIMEOUT and not select.select([sock], [], [], 0)[0]:
                # polled once more: after a long wait for the GIL the heartbeats that came
                # meanwhile are queued, and the earlier select could not see them
                self.reason = "heapspy stopped answering"
                return
            if now >= next_sample:
                if not self.parked:
                    self._send_samples(scheduled=True)
                next_sample = now + self.interval
            if now >= next_beat:
                if now - self._last_tx >= beat_every * 0.9:
                    self._send(protocol.HEARTBEAT, {})
                next_beat = now + beat_every
            if self.census is not None and now >= self.census_next:
                self._census_step()

    def _handle(self, kind: int, body: Dict[str, Any]) -> None:
        if kind != protocol.COMMAND:
            return
        cmd = body.get("cmd")
        reply: Dict[str, Any] = {"id": body.get("id"), "ok": True}
        if cmd == "detach":
            self.reason = "detached"
            self.stopping.set()
            self._send_samples()
        elif cmd == "sample":
            self._send_samples()
        elif cmd == "memstats":  # at a dump, `heapspy status`: see memstats.py
            began = time.perf_counter()
            reply["pymalloc"] = memstats.pymalloc(
                self.shim.pymalloc_stats if self.shim is not None else None
            )
            if body.get("glibc"):
                reply["glibc"] = memstats.glibc()
            reply["seconds"] = time.perf_counter() - began  # what it cost the target
        elif cmd == "stacks":  # a thread or task rule fired: what every one is doing
            depth = int(body.get("depth", schema.DEFAULT_STACK_DEPTH))
            try:
                reply.update(stacks.stacks_reply(threading.get_ident(), depth))
            except Exception as exc:  # noqa: BLE001 - the session goes on without them
                error = schema.clip_text("stacks: %s: %s" % (type(exc).__name__, exc))
                reply = {"id": body.get("id"), "ok": False, "error": error}
        elif cmd == "types":  # a dump, `top --by type`: the live samples' types
            types = getattr(self.collector, "types", None)
            if types is None:
                reply = {"id": body.get("id"), "ok": False, "error": "exact mode has no types"}
            else:
                self._send_samples()  # first: heapspy then knows every stack named
                began = time.perf_counter()
                with self._lock:
                    reply.update(types())
                reply["seconds"] = time.perf_counter() - began
        elif cmd == "trim":  # `heapspy trim`: heapspy checked that this is glibc's malloc
            reply["trimmed"] = memstats.trim()
        elif cmd == "gc":  # a scraper's /debug/pprof/heap?gc=1, as Go's runtime.GC() first
            reply["collected"] = gc.collect()
            self._send_samples()
        elif cmd == "census":
            if self.census is not None:
                reply = {"id": body.get("id"), "ok": False, "error": "a census is running"}
            else:
                self._census_start(body)
        elif cmd == "retainers":  # a dump: which roots hold the live samples of stacks
            shim = getattr(self.collector, "shim", None)
            if self.census is not None:
                reply = {"id": body.get("id"), "ok": False, "error": "a census is running"}
            elif not isinstance(shim, Shim):
                reply = {"id": body.get("id"), "ok": False, "error": "only sampled mode"}
            else:
                self._send_samples()  # first: heapspy then knows every stack named
                try:
                    self._census_start(body, [int(s) for s in body.get("stacks", [])])
                except Exception as exc:  # noqa: BLE001 - the session goes on without them
                    self._drop_census()
                    error = schema.clip_text("retainers: %s: %s" % (type(exc).__name__, exc))
                    reply = {"id": body.get("id"), "ok": False, "error": error}
        elif cmd == "census_stop":
            if self.census is not None:
                self.census.stop()
                self._census_finish()
        elif cmd == "rate":
            if not hasattr(self.collector, "set_rate"):
                reply = {"id": body.get("id"), "ok": False, "error": "exact mode has no rate"}
            else:
                with self._lock:  # what was held was sampled at the old rate: first
                    self._send_held()
                    self.collector.set_rate(int(body["rate"]))
                reply["sampling"] = self.collector.sampling().to_json()
        else:
            reply = {"id": body.get("id"), "ok": False, "error": "unknown command %r" % cmd}
        self._send(protocol.REPLY, reply)

    def park(self, level: str) -> None:
        """Benchmarks only (benchmarks/session_cost.py, called by the target itself):
        switch the session's cost off and on in place, many times in one session.
        "off": the shim's hooks out, no collections, no gc timer; "shim": only the
        hooks in; "collect": the hooks and the interval collections, no gc timer; "on":
        everything as in a session. Heartbeats go on throughout (the
        connection must stay up): a few microseconds every HEARTBEAT seconds."""
        collector = self.collector
        if not isinstance(collector, ShimCollector):
            raise RuntimeError("only a sampled session can be parked")
        with self._lock:
            hooked = level != "off"
            if self.shim_parked == hooked:
                collector.shim.park(not hooked)
                self.shim_parked = not hooked
            if level == "on":
                self.gc_timer.install()
            else:
                self.gc_timer.remove()
            self.parked = level not in ("on", "collect")

    # --- heap census (heapspy_agent.census) ---------------------------------------
    def _drop_census(self) -> None:
        """End a census under way: its walk state refers back to the agent (a cycle the
        target's gc would have to find), so it is taken apart here."""
        census, self.census = self.census, None
        if census is not None:
            census.close()

    def _census_start(self, body: Dict[str, Any], targets: Optional[List[int]] = None) -> None:
        """Start a census; with ``targets`` (stack ids), a retainer search instead."""
        self.census_slice = float(body.get("slice", CENSUS_SLICE))
        self.census_pause = float(body.get("pause", CENSUS_PAUSE))
        own: List[Any] = [
            module.__dict__
            for name, module in list(sys.modules.items())
            if name == "heapspy_agent" or name.startswith("heapspy_agent.")
        ]
        own.append(self)
        walk = new_census(own, threading.get_ident(), self.census_lib)
        if targets is None:
            self.census = walk
        else:
            assert self.shim is not None
            self.census = retainers.RetainerWalk(self.shim, targets, walk)
        self.census_next = self.census_told = time.monotonic()

    def _census_step(self) -> None:
        census = self.census
        assert census is not None
        done = census.step(self.census_slice)
        now = time.monotonic()
        self.census_next = now + self.census_pause
        if done:
            self._census_finish()
        elif now - self.census_told >= CENSUS_PROGRESS_EVERY and isinstance(census, Census):
            self.census_told = now
            self._send(protocol.CENSUS_PROGRESS, census.progress())

    def _census_finish(self) -> None:
        census, self.census = self.census, None
        if census is None:
            return
        if isinstance(census, retainers.RetainerWalk):
            try:
                found = census.result()
            finally:
                census.close()
            self._send(protocol.RETAINERS, found)
            return
        try:
            parts = census.result_frames(schema.MAX_CENSUS_SITES_PER_FRAME)
        finally:
            census.close()
        for part in parts:
            self._send(protocol.CENSUS, part)

    def _at_exit(self) -> None:
        """The target is exiting (its atexit callbacks run): send what it holds now, which
        is what a user of a short-lived or crashing-out worker wants to see, then say why
        the connection ends. Never holds the exit up for long: skipped when collections
        are costly, and at most ~1 s waiting for the agent thread or the socket."""
        if _active is not self or self.stopping.is_set():
            return  # a forked child's copy, or already detaching
        if not self._lock.acquire(timeout=1.0):
            return
        try:
            self.stopping.set()
            assert self.sock is not None
            self.sock.settimeout(1.0)
            if self.collector is not None and self._last_collect_cpu <= EXIT_COLLECT_MAX:
                self._send_samples()
            else:
                self._send_held()
            self.reason = "target exited, its last state collected at exit"
            self._send(protocol.BYE, {"reason": self.reason})
        except Exception:  # noqa: BLE001 - nothing may escape into the target's exit
            pass
        finally:
            self._lock.release()

    def _send_samples(self, scheduled: bool = False) -> None:
        """Collect and send what changed. A scheduled collection also sets when the next
        one is due: not before its CPU time is within the budget again; and its frame
        may be held back while nothing live changes (quiet.py), where any other is sent
        at once, with what was held."""
        with self._lock:
            self._collect_and_send(scheduled)

    def _collect_and_send(self, scheduled: bool) -> None:
        self.seq += 1
        cpu = time.thread_time()
        body = self.collector.collect()
        spent = time.thread_time() - cpu
        self._last_collect_cpu = spent
        if scheduled:
            self.interval = self.base_interval
            if self.budget > 0:
                self.interval = max(self.base_interval, spent / self.budget)
        body["seq"] = self.seq
        facts = {
            "gc_counts": list(gc.get_count()),
            "gc_seconds": self.gc_timer.seconds,
            "threads": threading.active_count(),
            "thread_names": runtime.thread_names(threading.get_ident()),
            "asyncio_tasks": runtime.asyncio_tasks(),
            "collect_cpu": spent,
            "interval": self.interval,  # until the next scheduled collection
        }  # type: Dict[str, Any]
        facts.update(runtime.gc_facts(self._gc_base))
        body["facts"] = facts
        bodies = self.quiet.take(body)
        body = bodies.pop()
        for earlier in bodies:
            self._send_collection(earlier)
        if not (scheduled and self.quiet.hold(body, self._sent)):
            self._send_collection(body)

    def _send_held(self) -> None:
        """Send what was held back (quiet.py), without collecting."""
        held = self.quiet.flush()
        if held is not None:
            self._send_collection(held)

    def _send_collection(self, body: Dict[str, Any]) -> None:
        self.quiet.sending(body)
        labelled = body.pop("labelled", None)
        if labelled is not None:  # exact mode's label samples: first, for this frame's rules
            labelled["seq"] = body["seq"]
            for kind, part in schema.fit_samples(labelled):
                part["labelled"] = True
                self._send(kind, part)
        for kind, part in schema.fit_samples(body):
            self._send(kind, self._news(part) if kind == protocol.SAMPLES else part)

    def _news(self, body: Dict[str, Any]) -> Dict[str, Any]:
        """The SAMPLES frame without what heapspy already has: totals and facts that
        have not changed since the last frame (heapspy folds them in key by key), and
        empty parts. A daemon handles every frame of each of its sessions every
        interval; an idle worker's frame is then a few bytes, not a kilobyte to parse
        and check. Sent under the lock, in order: what heapspy has is what was sent."""
        for part in ("totals", "facts"):
            now = body.get(part)
            if isinstance(now, dict):
                last = self._sent.get(part, {})
                body[part] = {k: v for k, v in now.items() if k not in last or last[k] != v}
                self._sent[part] = dict(last, **now)
        return {k: v for k, v in body.items() if v or k == "seq"}

    def _send(self, kind: int, body: Dict[str, Any]) -> None:
        assert self.sock is not None
        data = protocol.encode(kind, body)
        with self._lock:
            self.sock.sendall(data, NOSIGNAL)
            self._last_tx = time.monotonic()

    def _send_quietly(self, kind: int, body: Dict[str, Any]) -> None:
        try:
            if self.sock is not None:
                self.sock.settimeout(0.5)
                self._send(kind, body)
        except Exception:  # noqa: BLE001
            pass

    def _shutdown(self) -> None:
        """Undo everything, then say goodbye: once heapspy sees the socket close, the
        target is back as it was (only this thread's last instructions remain)."""
        global _active
        self._forget_exit_hook()
        self.gc_timer.remove()
        self._drop_census()
        if self.census_lib is not None:
            self.census_lib.unload()
            self.census_lib = None
        if self.collector is not None:
            try:
                self.collector.stop()
            except Exception:  # noqa: BLE001
                pass
            self.collector = None
        if self.shim is not None:
            try:
                if self.shim.state == 0:  # loaded but never started
                    self.shim.unload()
            except Exception:  # noqa: BLE001 - already unloaded by the collector
                pass
            self.shim = None
        _drop_modules()
        if _active is self:
            _active = None
        self._send_quietly(protocol.BYE, {"reason": schema.clip_text(self.reason)})
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass

    def _forget_exit_hook(self) -> None:
        if self._exit_hook:
            self._exit_hook = False
            try:
                atexit.unregister(self._at_exit)
            except Exception:  # noqa: BLE001
                pass


def _report_refusal(config: Dict[str, Any], code: str, message: str, **extra: Any) -> None:
    """Tell a second heapspy why this agent will not start, then go away."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(2.0)
        sock.connect(config["socket"])
        hello = {"version": protocol.VERSION, "token": config["token"], "pid": os.getpid()}
        sock.sendall(protocol.encode(protocol.HELLO, hello), NOSIGNAL)
        body = {"code": code, "message": message}
        body.update(extra)
        sock.sendall(protocol.encode(protocol.ERROR, body), NOSIGNAL)
        sock.close()
    except Exception:  # noqa: BLE001
        pass


def _drop_modules() -> None:
    for name in [n for n in sys.modules if n == "heapspy_agent" or n.startswith("heapspy_agent.")]:
        sys.modules.pop(name, None)


def _after_fork_in_child() -> None:
    """A forked child inherits the hooks but not the thread: switch them off there.

    Runs inside the child's ``os.fork()``, which returns only when this does, and the
    parent's other threads are gone: any lock one of them held at the fork stays held.
    So nothing here may wait on a lock those threads take: the agent's lock is not
    touched, the shim's is replaced before the shim is stopped, and the socket is closed
    without a goodbye (heapspy keeps talking to the parent).
    """
    global _active
    agent = _active
    if agent is None:
        return
    _active = None
    agent._forget_exit_hook()  # the child's copy of our atexit entry
    agent._drop_census()  # the child's copy of a census under way: no lock involved
    agent.gc_timer.remove()  # and of our gc.callbacks entry (a list: no lock to take)
    shim = agent.shim
    if shim is not None:
        shim.after_fork_in_child()
    collector, agent.collector = agent.collector, None
    try:
        if collector is not None:
            collector.stop(wait=0.0)  # the threads the shim may wait for are gone
        elif shim is not None and shim.state == STATE_RUNNING:
            # forked while the agent thread was still starting its collector
            ShimCollector.stop_shim(shim, wait=0.0)
    except Exception:  # noqa: BLE001
        pass
    try:
        if agent.sock is not None:
            agent.sock.close()
    except Exception:  # noqa: BLE001
        pass
    for name in [n for n in sys.modules if n.startswith("heapspy_agent")]:
        sys.modules.pop(name, None)


def start(directory: str, token: str, page: Optional[int] = None) -> None:
    """Entry point called by the bootstrap; must return quickly and never raise.

    ``page``: where the ptrace injector mapped the bootstrap source, to unmap.
    """
    global _active
    config_path = os.path.join(directory, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    if config.get("token") != token:
        _drop_modules()
        return
    late = time.time() > float(config.get("deadline", 0))
    busy = _active is not None and _active.thread is not None and _active.thread.is_alive()
    shim = None
    census_lib = None
    shim_problem = ""
    if not late and not busy:
        shim, shim_problem = load_shim(directory)  # dlopen before its file is deleted
        census_lib = census_walk.load(shim.path) if shim is not None else None
    _remove_tree(directory)
    if page:
        try:
            _unmap_boot_page(page)
        except Exception:  # noqa: BLE001
            pass
    if late:
        _drop_modules()
        return  # heapspy gave up waiting for us; nothing is listening
    if busy:
        # the live agent's own module was imported: report, and leave it alone
        holder = int(_active.config.get("heapspy_pid", 0)) if _active is not None else 0
        threading.Thread(
            target=_report_refusal,
            args=(config, "already_attached", "a heapspy session already holds this process"),
            kwargs={"holder_pid": holder},
            daemon=True,
        ).start()
        return
    agent = Agent(directory, config)
    agent.shim, agent.shim_problem = shim, shim_problem
    agent.census_lib = census_lib
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
    thread = threading.Thread(target=agent.run, name="heapspy-agent", daemon=True)
    agent.thread = thread
    _active = agent
    thread.start()
