"""One attached target: inject, handshake, stream, detach.

``Session.attach`` returns only once the agent has acknowledged ("attached" means the
agent said so, not that memory was written). ``run`` then multiplexes the agent socket
and the session's control socket in one thread; signal handlers only set flags.

The session coordinates; each concept lives in its own module: the connection to the
agent (handshake, framed socket, calls) in ``heapspy.channel``, the control socket's
server beside its client in ``heapspy.control``, when and where dumps are written in
``heapspy.dump_policy`` (their sidecar's layout in ``heapspy.sidecar``), what psutil
sees of the target in ``heapspy.target.outside``, the heap figures in
``heapspy.aggregate``, what a scraper is served in ``heapspy.serve.snapshot``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from heapspy_agent import protocol, schema
from heapspy_agent.schema import SAMPLED

from heapspy.aggregate import Aggregator
from heapspy.census import (
    CensusOptions,
    CensusResult,
    ProgressSink,
    census_note,
    record_census,
)
from heapspy.census import serve_client as census_for_client
from heapspy.census_run import SessionCensus
from heapspy.channel import (
    AgentChannel,
    FramedSocket,
    Greeting,
    Pollable,
    handshake,
    readable,
    violation_error,
)
from heapspy.config import AttachConfig
from heapspy.control import ControlServer
from heapspy.dump_policy import DumpPolicy, leak_note
from heapspy.errors import (
    AgentFailed,
    AgentTimeout,
    DumpError,
    HeapspyError,
    TargetExited,
)
from heapspy.inject.bootstrap import Placement, place_agent
from heapspy.inject.dispatch import Injection, start_injection
from heapspy.label_totals import labels_summary
from heapspy.leak_stacks import capture_stacks
from heapspy.limits import limit_dumps
from heapspy.live_types import TypeClassifier
from heapspy.memory_account import MemoryAccount
from heapspy.model import LABEL_KEYS, TYPE
from heapspy.oomwatch import CgroupWatch
from heapspy.registry import SessionLock
from heapspy.retainer_run import SessionRetainers, wanted
from heapspy.retainers import Retainers
from heapspy.rss import Breakdown, measure
from heapspy.rule_inputs import observation
from heapspy.rules import Observation, Rule
from heapspy.serve.snapshot import ServedProfile, metrics_of
from heapspy.sidecar import Sidecar
from heapspy.stack_groups import AGENT, StackDump
from heapspy.symbolize import Symbolizer
from heapspy.target.outside import Outside, exits_soon
from heapspy.target.process import PythonTarget, has_exited, inspect_target
from heapspy.top import ORDERS, top_view
from heapspy.waker import Waker

log = logging.getLogger("heapspy")

Progress = Callable[[str, float], None]
# How long a dump waits for the agent's collection (exact mode on a big heap: seconds)
COLLECT_TIMEOUT = 30.0


@dataclass
class AttachInfo:
    pid: int
    python: str
    method: str
    mode: str
    latency_ms: float
    notes: list[str] = field(default_factory=list)


class Session:
    def __init__(self, target: PythonTarget, config: AttachConfig) -> None:
        self.target = target
        self.config = config
        self.lock = SessionLock(target.pid)
        self.placement: Placement | None = None
        self.injection: Injection | None = None
        self.channel: AgentChannel | None = None  # from the handshake to the detach
        self.control: ControlServer | None = None
        self.info: AttachInfo | None = None
        self.aggregator = Aggregator(
            sampling=config.sampling,
            symbolizer=Symbolizer.of_process(target.pid),
            qualify=target.version < (3, 11),
        )
        self.end_reason = ""
        self.violation = ""  # how the agent broke the protocol, if it did: the session ended
        # what its holder must release when it ends (a daemon's handed-over pidfd): a
        # long-lived process may keep ended sessions' objects for a while
        self.closers: list[Callable[[], object]] = []
        self.detached_by_user = False  # `heapspy detach` ended it (not anything the agent said)
        self._stop = False
        self._firing = False  # serving the rules that fired (they call the agent)
        self._agent_ran = False
        self._stretch_shown = 0.0  # the stretched interval last reported, 0: none
        self.on_samples: Callable[[Session], None] | None = None
        self.policy = DumpPolicy.of(config, time.time())
        # the last profile served over HTTP, keyed by the aggregator's state (snapshot.py)
        self.served_profile = ServedProfile()
        self.memory_account = MemoryAccount(target.pid)  # where its RSS is (rss.py)
        self.types = TypeClassifier()  # the live samples' types (sampled mode)
        # Held while a frame changes the aggregator, and while another thread of this
        # process reads it: the daemon's HTTP threads serve its sessions' figures and
        # profiles from here (scrape_metrics, scrape_profile), not through their threads.
        self.data_lock = threading.Lock()
        # (unix time, rate): the rate at attach, then each `heapspy rate`
        self.rate_changes: list[tuple[float, int]] = []
        self.hello: dict[str, Any] = {}
        self.greeting: Greeting | None = None  # the handshake's, until the session moves
        self.outside = Outside(target.pid)
        self.memcg = CgroupWatch.for_pid(target.pid, config.last_chance)
        self.censuses = SessionCensus(target.pid)  # at attach, and those asked for
        self._waker: Waker | None = None  # while run() runs: wakes it for a request
        self.retainers = SessionRetainers()  # the last found: retainers.last

    def target_facts(self) -> dict[str, Any]:
        """What a census's sidecar says of the target (as a heap dump's sidecar does)."""
        info = self.info
        return {
            "command_line": self.hello.get("argv") or [],
            "executable": self.hello.get("executable"),
            "python": info.python if info else self.target.version_text,
        }

    @property
    def dumps(self) -> list[str]:
        """Each dump written, oldest first."""
        return self.policy.paths

    @property
    def dump_rules(self) -> list[str]:
        """The rule of each dump written, for /metrics."""
        return self.policy.rules_written

    # --- opening ---------------------------------------------------------------
    @classmethod
    def attach(
        cls,
        pid: int,
        config: AttachConfig,
        progress: Progress | None = None,
        start_time: int | None = None,
        serve: bool = True,
    ) -> Session:
        """``start_time``: the process start time the caller saw (the daemon); another
        process holding ``pid`` by now is refused as if the target had exited.
        ``serve``: open the control socket now; the daemon's attach helper does not (the
        session moves into the daemon, which serves it: ``heapspy.daemon.handoff``)."""
        t0 = time.monotonic()
        target = inspect_target(pid, start_time)
        session = cls(target, config)
        session.lock.acquire()
        try:
            session._open(t0, progress)
            if serve:
                session.serve()
        except BaseException:
            session._abandon()
            raise
        return session

    @classmethod
    def resume(
        cls,
        target: PythonTarget,
        config: AttachConfig,
        lock_fd: int,
        conn: FramedSocket,
        greeting: Greeting,
        info: AttachInfo,
    ) -> Session:
        """A session attached by another process (the daemon's attach helper), carried
        on here: its lock, its agent's connection and what the handshake said."""
        session = cls(target, config)
        session.lock.adopt(lock_fd)
        session._agent_ran = True
        try:
            session._greeted(conn, greeting)
            session.info = info
            session.serve()
        except BaseException:
            session._abandon()
            raise
        return session

    def serve(self) -> None:
        """Open the control socket (``heapspy dump/rate/detach/status PID`` reach the
        session from now on) and start watching the target from outside."""
        self.control = ControlServer(
            self.target.pid, self._control_command, {"census": self._census_for_client}
        )
        self.outside.start()

    def _settings(self) -> dict[str, Any]:
        """What WELCOME tells the agent (the placed config file only says how to reach
        heapspy: the settings travel once, here)."""
        return {
            "sampling": self.config.sampling.to_json(),
            "interval": self.config.interval,
            "idle_report": self.config.idle_report,
            "collect_budget": self.config.collect_budget,
            "require_sampling": self.config.require_sampling,
            "native": self.config.native,
            "native_frames": self.config.native_frames,
        }

    def _open(self, t0: float, progress: Progress | None) -> None:
        cfg = self.config
        deadline = time.time() + cfg.attach_timeout
        placement = place_agent(self.target, {}, deadline)
        self.placement = placement
        self.injection = start_injection(self.target, placement, cfg)
        sock = self._wait_for_agent(t0, progress)
        try:
            self._handshake(FramedSocket(sock), t0)
        except protocol.ProtocolError as exc:
            sock.close()
            raise violation_error(self.target.pid, str(exc)) from None
        except (AgentFailed, OSError) as exc:
            sock.close()
            # an agent cut off mid-handshake is most often a target that is exiting
            if exits_soon(self.target.pid):
                raise TargetExited(
                    f"Process {self.target.pid} exited while the agent was starting."
                ) from None
            if isinstance(exc, HeapspyError):
                raise
            raise AgentFailed(
                f"The connection to the agent in process {self.target.pid} failed during the "
                f"handshake: {exc}."
            ) from None
        except BaseException:
            sock.close()
            raise

    def _handshake(self, conn: FramedSocket, t0: float) -> None:
        assert self.placement is not None and self.injection is not None
        placement = self.placement
        greeting = handshake(conn, self.target.pid, placement.token, self._settings())
        self.greeting = greeting
        sampling = self._greeted(conn, greeting)
        self.info = AttachInfo(
            pid=self.target.pid,
            python=str(greeting.hello.get("python") or self.target.version_text),
            method=self.injection.method,
            mode=sampling.mode,
            latency_ms=(time.monotonic() - t0) * 1000,
            notes=[n for n in (self.injection.chosen,) if n]
            + list(greeting.ready.get("notes", [])),
        )
        placement.cleanup()  # the socket path and directory are no longer needed

    def _greeted(self, conn: FramedSocket, greeting: Greeting) -> schema.Sampling:
        """The running connection, after the handshake."""
        # the agent's answer is the truth (without the shim, sampled became exact)
        sampling = schema.Sampling.from_json(greeting.ready["sampling"])
        self.hello = greeting.hello
        self.channel = AgentChannel(conn, self._on_agent_frame, self._violated, self._agent_gone)
        self.aggregator.sampling = sampling
        self.rate_changes = [(time.time(), sampling.rate)]
        return sampling

    def _wait_for_agent(self, t0: float, progress: Progress | None) -> socket.socket:
        assert self.placement is not None and self.injection is not None
        listener = self.placement.listener
        limit = t0 + self.config.attach_timeout
        while True:
            now = time.monotonic()
            if now >= limit:
                raise self._timeout_error()
            if readable([listener], min(0.05, limit - now)):
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(True)
                if protocol.peer_pid(sock) != self.target.pid:
                    sock.close()  # someone else: keep waiting for the real agent
                    continue
                self._agent_ran = True
                return sock
            if has_exited(self.target.pid):
                raise TargetExited(f"Process {self.target.pid} exited before the agent started.")
            if progress is not None:
                progress(self.injection.waiting_for(), time.monotonic() - t0)

    def _timeout_error(self) -> HeapspyError:
        assert self.injection is not None
        what = self.injection.waiting_for()
        hint, remedies = self.injection.advice()
        return AgentTimeout(
            f"The agent did not start in process {self.target.pid} within "
            f"{self.config.attach_timeout:g} s: its main thread is {what}.",
            hint=hint,
            remedies=remedies,
        )

    def _abandon(self) -> None:
        """Undo a failed open, leaving the target as it was."""
        if self.injection is not None:
            try:
                self.injection.cancel()
            except Exception:  # noqa: BLE001 - best effort; the original error matters
                pass
        if self.placement is not None:
            if (
                not self._agent_ran
                and self.injection is not None
                and self.injection.still_pending()
                and not has_exited(self.target.pid)
            ):
                # The bootstrap may still run later: leave its files so that it can find
                # them, clean up after itself and unmap its page; the deadline in the
                # config (already passed) tells it not to start. Should the target exit
                # first, a watcher removes them.
                self.placement.leave_for_bootstrap(self.target)
            else:
                self.placement.cleanup()
        if self.channel is not None:
            self.channel.close()
        self.outside.close()
        self.lock.release()

    # --- running ---------------------------------------------------------------
    def request_stop(self, reason: str = "detached", by: float | None = None) -> None:
        """``by``: when (``time.monotonic``) the detach must be done (the daemon's
        stop_timeout). The agent is asked nothing after the first third of what is left,
        answered or not, whatever it sends meanwhile (a flood kept each call reading until
        its own timeout, 43 s in all): the rest is for a frame being handled and the
        final dump (~1.5 s for 50k sites on a loaded 2-core host), which need no agent."""
        if not self._stop:
            self.end_reason = reason
        channel = self.channel
        if by is not None and channel is not None:
            now = time.monotonic()
            cutoff = now + max(0.0, by - now) / 3
            channel.cutoff = cutoff if channel.cutoff is None else min(cutoff, channel.cutoff)
        self._stop = True
        self._wake()

    def request_dump(self, reason: str = "on-demand") -> None:
        self.policy.requests.append(reason)
        self._wake()

    def _wake(self) -> None:
        """Wake ``run`` now for a request made from another thread or a signal handler
        (``run`` looks at ``_stop`` after making its waker: one made earlier is seen)."""
        waker = self._waker
        if waker is not None:
            waker.wake()

    def run(self, duration: float | None = None) -> str:
        """Stream until detached, the duration passes, or the agent goes away.

        The loop sleeps until the agent sends something, a control client comes, a
        request wakes it (``_wake``) or the next thing is due: a heartbeat, the cgroup's
        poll (which rides on the agent's frames when it can: ``CgroupWatch.poll``), the
        end of the duration. An idle session of the daemon wakes about once an interval,
        for its frame."""
        assert self.channel is not None and self.control is not None
        channel, control = self.channel, self.control
        start = time.monotonic()
        agent = channel.sock
        agent.setblocking(False)
        if not channel.take_pending():
            return self.end_reason
        waker = self._waker = Waker()
        if self.memcg is not None:
            self.memcg.follow(self._wake)
        try:
            return self._run(channel, control, agent, waker, start, duration)
        finally:
            if self.memcg is not None:
                self.memcg.unfollow()
            self._waker = None
            waker.close()

    def _run(
        self,
        channel: AgentChannel,
        control: ControlServer,
        agent: socket.socket,
        waker: Waker,
        start: float,
        duration: float | None,
    ) -> str:
        while not self._stop:
            now = time.monotonic()
            if duration is not None and now - start >= duration:
                return "duration elapsed"
            due = channel.next_beat
            if self.memcg is not None:
                due = min(due, self.memcg.due)
            if duration is not None:
                due = min(due, start + duration)
            waits: list[Pollable] = [agent, waker, *control.sockets()]
            for sock in readable(waits, due - now):
                if sock is agent:
                    if not channel.read():
                        return self.end_reason
                elif sock is waker:
                    waker.drain()  # what it was woken for is looked at below
                elif isinstance(sock, socket.socket) and control.owns(sock):
                    control.ready(sock)  # (a client served earlier in this round may be gone)
            now = time.monotonic()
            if channel.silent(now):
                self.end_reason = "agent stopped answering"
                return self.end_reason
            channel.beat(now)
            while self.policy.requests:
                self._dump(self.policy.requests.pop(0))
            if self.memcg is not None and (why := self.memcg.poll(now)):
                self._dump("last-chance", why)
        return self.end_reason

    def _agent_call(self, cmd: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
        """Send a command to the agent and wait for its reply, handling other frames."""
        assert self.channel is not None
        return self.channel.call(cmd, timeout, **args)

    def _agent_gone(self) -> None:
        """The agent's end closed: say why, once."""
        self.end_reason = self.end_reason or self.outside.why_gone(self.memcg)

    def _violated(self, exc: protocol.ProtocolError) -> None:
        """End the session on a protocol violation; what was collected stays for the
        final dump."""
        if not self.violation:
            self.violation = str(exc)
            self.end_reason = f"protocol violation: {exc}"
        self._stop = True

    def _on_agent_frame(self, kind: int, body: dict[str, Any]) -> None:
        """One checked frame of the running session."""
        if kind == protocol.STACKS:
            with self.data_lock:
                if body.get("labelled"):
                    self.aggregator.add_labelled_stacks(body["stacks"])
                else:
                    self.aggregator.add_stacks(body["stacks"])
        elif kind == protocol.SAMPLES and body.get("labelled"):
            with self.data_lock:  # exact mode's label samples: the exact frame follows
                self.aggregator.apply_labelled(body)
        elif kind == protocol.SAMPLES:
            agg = self.aggregator
            facts = self.outside.facts()  # /proc reads: not under the lock
            with self.data_lock:
                agg.apply(body)
                point = agg.record(facts)
            self._note_stretch(agg.facts)
            if self.on_samples is not None:
                self.on_samples(self)
            # not while a rule that fired is being served: its calls to the agent handle
            # the frames that come meanwhile, and rules wait for the next interval
            if self.policy.rules.rules and not self._stop and not self._firing:
                account = None
                if self.policy.needs_memory:  # native>/unexplained>
                    account = self.memory_account.recent(point.time, self._agent_call)
                obs = observation(
                    point,
                    agg,
                    self.memcg.state if self.memcg is not None else None,
                    account,
                    self.policy.rules.needs_limits,
                )
                self._firing = True
                try:
                    for rule in self.policy.observe(obs, agg):
                        self._fire(rule, obs)
                finally:
                    self._firing = False
        elif kind in (protocol.CENSUS, protocol.CENSUS_PROGRESS):
            self.censuses.on_frame(kind, body, lambda done: record_census(self, done))
        elif kind == protocol.RETAINERS:
            self.retainers.on_frame(body)
        elif kind == protocol.BYE:
            self.end_reason = self.end_reason or str(body.get("reason", "agent said goodbye"))
        elif kind == protocol.ERROR:
            self.end_reason = f"agent error: {body.get('message')}"
        elif kind in (protocol.HELLO, protocol.READY):
            raise protocol.ProtocolError(f"a second {schema.messages()[kind].name} mid-session")

    def _fire(self, rule: Rule, obs: Observation) -> None:
        """A rule fired: its dump (none with action=log); a thread or task rule's says
        what every thread and task was doing, and so does the log."""
        if rule.is_limit:
            for limit in limit_dumps(rule, self.policy.rules.offenders.get(rule, ())):
                self._dump(limit.rule, limit.why, offender=limit.offender)
            return
        why, stacks, seen = rule.text, None, ""
        if rule.wants_stacks:
            seen = self.policy.rules.explain(rule, obs)
            why = f"{rule.text}: {seen}"
            frames = self.aggregator.sampling.frames
            stacks = capture_stacks(self._agent_call, self.target.pid, frames, obs.tasks or 0)
        if rule.action == "log" or stacks is not None:
            logged = " (action=log: no dump)" if rule.action == "log" else ""
            log.warning("rule %s fired%s%s", rule.name, f": {seen}" if seen else "", logged)
            for line in stacks.headlines() if stacks is not None else ():
                log.warning("  %s", line)
        if rule.action == "dump":
            self._dump(rule.name, why, stacks)

    def _note_stretch(self, facts: dict[str, Any]) -> None:
        """Say once, and again when it changes much, that the agent collects less often
        than asked because collecting costs too much CPU in the target (exact mode on a
        big heap); the agent decides, within its budget."""
        every = float(facts.get("interval") or self.config.interval)
        shown = self._stretch_shown or self.config.interval
        if every > self.config.interval * 1.5 and not 0.67 < every / shown < 1.5:
            log.warning(
                "collecting took %.2f s of CPU in the target: the agent now collects every "
                "%.3g s instead of %g s, to stay under %g%% of one core",
                float(facts.get("collect_cpu") or 0.0),
                every,
                self.config.interval,
                self.config.collect_budget * 100,
            )
            self._stretch_shown = every
        elif every <= self.config.interval * 1.5 and self._stretch_shown:
            log.info("collecting is cheap again: every %g s", self.config.interval)
            self._stretch_shown = 0.0

    def _census_for_client(self, sock: socket.socket, body: dict[str, Any]) -> None:
        """`heapspy census` through the control socket: progress frames, then its reply."""
        census_for_client(self, sock, body)

    def _control_command(self, body: dict[str, Any]) -> dict[str, Any]:
        cmd = body.get("cmd")
        if cmd == "detach":
            self.request_stop("detached by `heapspy detach`")
            self.detached_by_user = True
            return {"ok": True}
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "rate":
            return self.set_rate(int(body.get("rate", -1)))
        if cmd == "top":
            order = str(body.get("order", "inuse_space"))
            if order not in ORDERS:
                return {"ok": False, "error": f"unknown order {order!r}"}
            by = str(body.get("by", ""))
            if by and by not in LABEL_KEYS:
                return {"ok": False, "error": f"unknown label {by!r}"}
            if by == TYPE:
                self.types_for_view()
            view = top_view(self.aggregator, max(1, min(int(body.get("n", 20)), 500)), order, by)
            return {"ok": True, "view": {**view.to_json(), "memory": self.memory_for_view()}}
        if cmd == "dump":
            try:
                path = self.write_dump(str(body.get("rule", "on-demand")), "heapspy dump")
            except DumpError as exc:
                return {"ok": False, "error": exc.message}
            self.policy.record(path, str(body.get("rule", "on-demand")))
            return {"ok": True, "path": path}
        if cmd == "memory":
            found = self.memory()
            if found is None:
                return {"ok": False, "error": "the process is gone"}
            return {"ok": True, "memory": found.to_json()}
        if cmd == "trim":
            return self.trim()
        if cmd == "metrics":
            return {"ok": True, "metrics": self.scrape_metrics()}
        if cmd == "profile":
            if body.get("gc"):
                if not self.config.allow_gc:
                    return {"ok": False, "error": "gc=1 is not allowed for this session"}
                reply = self._agent_call("gc", timeout=30.0)
                if not reply.get("ok"):
                    return reply
            with self.data_lock:
                return self.served_profile.reply(self.aggregator)
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def scrape_metrics(self) -> dict[str, Any]:
        """What ``/metrics`` shows of this session; callable from any thread."""
        rules, agg = list(self.dump_rules), self.aggregator
        with self.data_lock:
            return metrics_of(agg, self.target.pid, self.config.watch, rules, self.memcg)

    def scrape_profile(self) -> bytes:
        """The current heap profile (gzipped pprof); callable from any thread."""
        with self.data_lock:
            return self.served_profile.encoded(self.aggregator)

    def set_rate(self, rate: int) -> dict[str, Any]:
        """Change the sampling rate of the live session (the shim's modes: sampled and
        totals; exact mode is tracemalloc, which has no rate)."""
        now = self.aggregator.sampling
        if now.mode == schema.EXACT:
            return {"ok": False, "error": f"the session runs in {now.mode} mode"}
        try:
            now.with_rate(rate)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        reply = self._agent_call("rate", rate=rate)
        if reply.get("ok"):
            try:  # what the agent now does, as it says
                self.aggregator.sampling = schema.Sampling.from_json(reply["sampling"])
            except (KeyError, protocol.ProtocolError) as exc:
                self._violated(protocol.ProtocolError(f"rate reply: {exc}"))
                return {"ok": False, "error": "the agent's reply broke the protocol"}
            self.rate_changes.append((time.time(), self.aggregator.sampling.rate))
        return reply

    def census(
        self,
        options: CensusOptions,
        on_progress: ProgressSink | None = None,
        should_stop: Callable[[], str] | None = None,
    ) -> CensusResult:
        """Run a heap census in the target (``heapspy.census_run``), serving the agent
        meanwhile. ``should_stop`` returns why to stop ("" to go on): the agent then
        sends what it has counted, a partial census."""
        assert self.channel is not None
        return self.censuses.run(
            self.channel, options, on_progress, should_stop, lambda: self.end_reason
        )

    def census_at_attach(
        self, on_progress: ProgressSink | None, should_stop: Callable[[], str] | None
    ) -> dict[str, Any] | None:
        """Wait for the census at attach while it runs; its summary, None when none runs."""
        assert self.channel is not None
        return self.censuses.at_attach(
            self.channel, on_progress, should_stop, lambda: self.end_reason
        )

    def start_census(
        self,
        options: CensusOptions,
        on_progress: ProgressSink | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> bool:
        """Start a census that runs while the session does (``attach``): the session
        writes it once the agent has sent it (``census_summary``)."""
        return self.censuses.start(self._agent_call, options, on_progress, on_end)

    def skip_census(self, why: str) -> None:
        """No census at attach (``--no-census``): dumps and status say the live heap
        counts only what was allocated since."""
        self.censuses.skipped = why

    @property
    def census_summary(self) -> dict[str, Any] | None:
        """The census of the heap at attach, once written."""
        return self.censuses.summary

    def _dump(
        self,
        reason: str,
        why: str = "",
        stacks: StackDump | None = None,
        offender: dict[str, Any] | None = None,
    ) -> str | None:
        try:
            path = self.write_dump(reason, why, stacks, offender)
        except DumpError as exc:
            log.error("%s", exc)
            return None
        log.info("wrote %s", path)
        self.policy.record(path, reason)
        return path

    def sidecar(
        self,
        rule: str,
        memory: Breakdown | None = None,
        stacks: StackDump | None = None,
        offender: dict[str, Any] | None = None,
        retainers: Retainers | None = None,
    ) -> Sidecar:
        agg = self.aggregator
        return Sidecar(
            pid=self.target.pid,
            command_line=self.hello.get("argv") or [],
            executable=self.hello.get("executable"),
            python=self.info.python if self.info else self.target.version_text,
            sampling=agg.sampling,
            rate_changes=tuple(self.rate_changes),
            rule=rule,
            heap_estimate=agg.heap_estimate(),
            series=tuple(agg.series)[-120:],
            totals=agg.alloc_totals(),
            agent_totals=agg.totals,
            facts=agg.facts,
            cgroup=self.memcg.as_json() if self.memcg is not None else None,
            dropped_stacks=agg.dropped_stacks,
            dropped_agent_sites=agg.agent_dropped,
            protocol_violation=self.violation or None,
            census=self.censuses.progress(),
            memory=memory.to_json() if memory is not None else None,
            stacks=stacks.to_json() if stacks is not None else None,
            labels=labels_summary(agg),
            offender=offender,
            retainers=retainers.to_json() if retainers is not None else None,
            reporting=self.reporting(),
        )

    def write_dump(
        self,
        rule: str,
        why: str = "",
        stacks: StackDump | None = None,
        offender: dict[str, Any] | None = None,
    ) -> str:
        notes = [f"heapspy dump of pid {self.target.pid}: {why or rule}"]
        found = self.censuses.progress()
        if found is not None:  # "live heap 0 B" must not hide a full heap
            notes.append(census_note(found, self.aggregator.heap_estimate()))
        if rule == self.config.final_rule and "OOM killer" in self.end_reason:
            notes.append(f"the session ended: {self.end_reason}")
        if rule.startswith("leak") and (note := leak_note(self.aggregator)):
            notes.append(note)
        busy = False
        if stacks is not None:
            notes.extend(stacks.headlines(limit=2))
            busy = stacks.source != AGENT  # the agent did not answer: do not wait again
        held = None
        if not busy:
            self.collect_now()
            self.classify_types()  # inuse_* by type (the label `type`)
            if wanted(rule):
                held = self.find_retainers(leak=rule.startswith("leak"))
        if rule == self.config.final_rule:
            held = self.retainers.last  # found at the detach, if they were
        profile = self.aggregator.profile(tuple(notes))
        memory = measure(self.target.pid, None) if busy else self.memory()
        side = self.sidecar(rule, memory, stacks, offender, held)
        return self.policy.write(profile, self.target.pid, rule, side)

    def collect_now(self) -> None:
        """Have the agent collect and send what it holds now, before a dump: a frame held
        back in a quiet interval (``idle_report``) is in it. Sampled mode's ``types`` call
        (classify_types) has the agent do that first anyway; without idle_report the last
        frame is at most an interval old, as it always was (an exact collection of a big
        heap costs the target seconds)."""
        if (
            self.channel is None
            or self.violation
            or not self.config.idle_report
            or self.aggregator.sampling.mode == SAMPLED
        ):
            return
        reply = self._agent_call("sample", timeout=COLLECT_TIMEOUT)
        if not reply.get("ok"):
            log.info("the dump holds the figures of the last interval sent: %s", reply.get("error"))

    def classify_types(self) -> float | None:
        """Have the agent name the type of every live sample (sampled mode; heapspy_agent.
        object_types) and fold the answer into the aggregator, for the next dump or view.
        Returns what it cost the target in seconds, None when it could not be done."""
        if self.channel is None or self.violation:
            return None  # an agent that broke the protocol is asked nothing more
        agg = self.aggregator
        return self.types.classify(self._agent_call, agg.sampling, agg.sites, self.data_lock)

    def find_retainers(self, leak: bool = False) -> Retainers | None:
        """Which roots hold the live samples of the top sites (``heapspy.retainer_run``):
        a census-like walk in the target, in GIL slices; ``leak``: a leak rule fired, its
        site is marked as such. None when not asked for (``config.retainers``), not
        sampled, a census is under way, or it failed."""
        channel = self.channel
        self.retainers.last = None  # none found: none shown, rather than older ones
        if (
            not self.config.retainers
            or channel is None
            or self.violation
            or self.aggregator.sampling.mode != SAMPLED
            or self.censuses.collector is not None
        ):
            return None
        return self.retainers.find(channel, self.aggregator, leak)

    def types_for_view(self) -> None:
        """Types for `top --by type`: classified at most every TYPES_EVERY seconds (it
        visits every live sample in the target)."""
        if self.types.due():
            self.classify_types()

    def memory(self) -> Breakdown | None:
        """Where the target's RSS is now (heapspy/rss.py); kept for the final dump, which
        is written after the agent has gone."""
        return self.memory_account.measure(self._agent_call if self.channel else None)

    def memory_for_view(self) -> dict[str, Any] | None:
        """The RSS breakdown for `heapspy top`: measured at most every MEMORY_EVERY s."""
        found = self.memory_account.recent(time.time(), self._agent_call if self.channel else None)
        return found.to_json() if found is not None else None

    def trim(self) -> dict[str, Any]:
        """glibc's malloc_trim(0) in the target, with RSS before and after."""
        return self.memory_account.trim(self._agent_call)

    def reporting(self) -> dict[str, Any]:
        """Collections, and the reports that carried them: fewer in quiet times, with
        idle_report on (the status and each sidecar say so)."""
        return {
            "intervals": self.aggregator.intervals,
            "reports": self.aggregator.reports,
            "idle_report": self.config.idle_report,
        }

    def status(self) -> dict[str, Any]:
        info = asdict(self.info) if self.info else {}
        info["heap_estimate"] = self.aggregator.heap_estimate()
        info.update(self.reporting())
        info["holder_pid"] = os.getpid()
        sampling = self.aggregator.sampling  # as now, after any `heapspy rate`
        info["mode"] = sampling.mode
        info["rate"] = sampling.rate
        info["frames"] = sampling.frames
        info["sampling"] = sampling.to_json()
        info["interval"] = float(self.aggregator.facts.get("interval") or self.config.interval)
        info["started"] = self.aggregator.started
        last = self.aggregator.series[-1] if self.aggregator.series else None
        info["rss"] = last.rss if last else None
        info["dump_dir"] = str(self.config.dump_dir.resolve())
        info["dumps"] = len(self.dumps)
        info["dropped_stacks"] = self.aggregator.dropped_stacks
        totals = self.aggregator.totals
        info["overflow_samples"] = int(totals.get("overflow_samples", 0) or 0)
        info["evicted_stacks"] = int(totals.get("evicted_stacks", 0) or 0)
        info["last_dump"] = self.dumps[-1] if self.dumps else None
        info["census"] = self.censuses.progress()
        native = self.aggregator.totals.get("native")
        info["native"] = native if isinstance(native, dict) else None
        info["labels"] = labels_summary(self.aggregator, 3)
        return info

    # --- closing ---------------------------------------------------------------
    def detach(self) -> None:
        """Ask the agent to switch off, collect its last samples, release everything."""
        try:
            channel = self.channel
            if (
                channel is not None
                and self.config.final_dump
                and self.info is not None
                and not self.violation  # asked nothing more: each call would wait it out
            ):
                self.memory()  # the allocators' account, for the final dump
                self.classify_types()  # sites that change before the end lose their split
                self.find_retainers()  # for the final dump and attach's last table
            if channel is not None:
                self.censuses.stop(channel, self.end_reason or "detached")
                channel.send(protocol.COMMAND, {"id": 0, "cmd": "detach"})
                deadline = channel.until(time.monotonic() + 3.0)
                while time.monotonic() < deadline:
                    if not channel.wait(0.1):
                        break
                channel.close()
                self.channel = None
            if self.config.final_dump and self.info is not None:
                self._dump(self.config.final_rule)
        finally:
            self.outside.close()
            if self.control is not None:
                self.control.close()
                self.control = None
            if self.placement is not None:
                self.placement.cleanup()
            self.lock.release()
