"""The daemon's loop: scan for workers, fork one attach helper per target, run the
sessions they hand over (``heapspy.daemon.child``: the session ``heapspy attach`` runs,
in a thread of the daemon), decide what to do when one ends, and act on signals.

Signal handlers only enqueue (and wake the loop through ``signal.set_wakeup_fd``); the
loop dispatches them between two steps:

- SIGTERM / SIGINT: drain. Every session detaches and writes its final dump (a helper
  still attaching gets SIGTERM and does so itself); after ``stop_timeout`` the daemon
  exits with the stragglers (their agents switch themselves off when their peer goes;
  helpers get SIGKILL). A second SIGTERM / SIGINT does so at once.
- SIGHUP: reload the config file. A broken file is logged and the old config kept;
  sessions whose watch was removed or changed are detached (changed ones are attached
  again with the new settings); unchanged ones keep running.

The previous handlers and wakeup fd are put back when the loop ends.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import resource
import select
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Callable

import psutil

from heapspy import control
from heapspy.daemon.child import AttachChild
from heapspy.daemon.config import DaemonConfig, Watch, load_config
from heapspy.daemon.discover import Found, Key, Scanner, alive, since_boot
from heapspy.daemon.outcome import Outcome, decide
from heapspy.daemon.sdnotify import Notifier
from heapspy.daemon.serving import DaemonWorkers, Local
from heapspy.errors import HeapspyError, NoSession
from heapspy.serve.exposition import Exposition
from heapspy.serve.http import ServeOptions, serve
from heapspy.serve.workers import Worker
from heapspy.target.process import start_time, tracer_of

log = logging.getLogger("heapspy.daemon")

# A session process that has not attached within its watch's attach_timeout plus this is
# killed and counted as a failed attempt: inspecting the target, placing the agent and
# the handshake take well under a second, so this only catches a session held up by its
# target (a crafted ELF, a hostile filesystem), which must not keep one of the
# max_attaching slots from every other target.
ATTACH_GRACE = 10.0
# Failures counted towards the backoff at most: retry_backoff doubled this many times is
# past any retry_max, so an entry at it waits retry_max (a flooder is put there at once).
MAX_FAILURES = 32


class State(enum.Enum):
    RUNNING = "running"  # a child is attaching or attached
    WAITING = "waiting"  # to be tried again at retry_at
    NEVER = "never"  # cannot be profiled: not tried again while it lives
    LEFT = "left"  # detached by hand: left alone while it lives


@dataclass
class Entry:
    """What the daemon knows about one target (one pid and start time)."""

    key: Key
    found: Found
    watch: Watch
    state: State = State.WAITING
    child: AttachChild | None = None
    failures: int = 0
    retry_at: float = 0.0
    busy: bool = False  # the last attempt found another heapspy session on it
    overdue: bool = False  # its session process was killed for not attaching in time

    @property
    def prefix(self) -> str:
        return f"[{self.watch.name} {self.key[0]}]"


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def _seconds(value: float) -> str:
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g} min"
    return f"{value:g} s"


def _held_elsewhere(pid: int) -> bool:
    """Whether another heapspy session (one the daemon did not start) holds ``pid``:
    a cheap look before starting a child that would only fail with "already attached"."""
    try:
        control.request(pid, "status", timeout=1.0)
    except NoSession:
        return False
    except (OSError, HeapspyError):
        return True  # a holder that is there but slow to answer still holds it
    return True


def _traces(session: int, target: int) -> bool:
    """Whether a thread of process ``session`` is ``target``'s tracer right now: killing
    it then could leave the target with its signals blocked (README, Limits)."""
    try:
        tracer = tracer_of(target)
    except HeapspyError:
        return False
    return tracer != 0 and os.path.exists(f"/proc/{session}/task/{tracer}")


class Supervisor:
    def __init__(
        self,
        config: DaemonConfig,
        notifier: Notifier | None = None,
        loader: Callable[[Path], DaemonConfig] = load_config,
    ) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.loader = loader
        self.entries: dict[Key, Entry] = {}
        self._pending: list[int] = []  # signals received, in order
        self._draining = False
        self._forced = False
        self._deadline = 0.0
        self._young = 0  # matching processes not yet `settle` old, or not yet started
        self._backlog: list[tuple[Key, Found]] = []  # found, held back for want of a slot
        self._status = ""
        self.attach_failures = 0  # for /metrics: attaches that failed, since start
        self._wake_fd = -1  # written to wake the loop (a session's thread ended)
        self._scanner = Scanner()  # what each process was at the last scans

    # --- signals: handlers only enqueue ----------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._pending.append(signum)

    def _on_child(self, _signum: int, _frame: FrameType | None) -> None:
        pass  # the wakeup fd already woke the loop; exits are reaped there

    def _wake(self) -> None:
        """Wake the loop (from a session's thread, once it has ended)."""
        with contextlib.suppress(OSError):  # full: it is awake already; -1: stopped
            os.write(self._wake_fd, b"\0")

    def run(self) -> int:
        """Run until stopped by SIGTERM or SIGINT; returns the exit status (0)."""
        rfd, wfd = os.pipe()
        for fd in (rfd, wfd):
            os.set_blocking(fd, False)
        previous: dict[int, signal._HANDLER] = {}
        old_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        try:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                previous[signum] = signal.signal(signum, self._on_signal)
            previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_child)
            self._wake_fd = wfd
            return self._loop(rfd)
        except BaseException:
            self._abort()
            raise
        finally:
            for number, handler in previous.items():
                signal.signal(number, signal.SIG_DFL if handler is None else handler)
            signal.set_wakeup_fd(old_wakeup)
            self._wake_fd = -1
            os.close(rfd)
            os.close(wfd)
            self.notifier.close()

    # --- the loop --------------------------------------------------------------
    def _loop(self, wakeup: int) -> int:
        cfg = self.config
        log.info(
            "watching for %s (%s); scanning every %s",
            ", ".join(f'"{w.name}"' for w in cfg.watches),
            cfg.path,
            _seconds(cfg.scan_interval),
        )
        self._scan()
        self.notifier.ready(self._status_line())
        beat = self.notifier.watchdog_interval
        now = time.monotonic()
        next_scan = now + self.config.scan_interval
        next_beat = now
        while True:
            self._dispatch()
            if self._forced:
                log.info("stopped")
                return 0
            now = time.monotonic()
            if self._draining:
                if not self._running():
                    log.info("stopped: every session detached")
                    return 0
                if now >= self._deadline:
                    self._kill_stragglers()
                    log.info("stopped")
                    return 0
            else:
                self._kill_overdue(now)
                if now >= next_scan:
                    self._scan()
                    next_scan = time.monotonic() + self.config.scan_interval
                else:
                    self._start_backlog()
            if beat is not None and now >= next_beat:
                self.notifier.watchdog()
                next_beat = now + beat
            self._publish_status()
            wake_at = self._deadline if self._draining else min(next_scan, self._next_overdue())
            if beat is not None:
                wake_at = min(wake_at, next_beat)
            self._wait(wakeup, max(0.0, wake_at - time.monotonic()))

    def _wait(self, wakeup: int, timeout: float) -> None:
        """Sleep until a signal, a child's output or exit, or the timeout; handle output."""
        by_fd = {fd: e for e in self._running() if e.child for fd in e.child.filenos()}
        poller = select.poll()  # not select(): a big host can have fds beyond 1024
        for fd in (wakeup, *by_fd):
            poller.register(fd, select.POLLIN)
        ready = [fd for fd, _ in poller.poll(timeout * 1000)]
        if wakeup in ready:
            try:
                while os.read(wakeup, 512):
                    pass
            except BlockingIOError:
                pass
        for fd in ready:
            entry = by_fd.get(fd)
            if entry is not None and entry.child is not None:
                self._log_lines(entry, entry.child.read_lines())
        self._reap()

    def _running(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.child is not None]

    def _dispatch(self) -> None:
        while self._pending:
            sig = self._pending.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                if self._draining:
                    self._force()
                else:
                    self._drain(signal.Signals(sig).name)
            elif sig == signal.SIGHUP and not self._draining:
                self._reload()

    # --- finding targets and starting children ----------------------------------
    def _scan(self) -> None:
        try:
            found = self._scanner.scan(self.config.watches, {e.key for e in self._running()})
        except (OSError, psutil.Error) as exc:
            log.error("cannot scan processes: %s", exc)
            return
        booted, now = since_boot(), time.monotonic()
        young = 0
        # Attaching costs a forked helper each: a burst (the first scan on a host with
        # many workers) runs max_attaching at a time; those held back wait in the backlog,
        # started as soon as a helper is done rather than at the next scan.
        slots = self._free_slots()
        self._backlog = []
        for key, proc in found.items():
            entry = self.entries.get(key)
            if entry is None:
                if proc.age(booted) < self.config.settle:
                    young += 1
                    continue
                if slots <= 0:
                    young += 1
                    self._backlog.append((key, proc))
                    continue
                watch = self.config.watch(proc.watch)
                assert watch is not None
                entry = self.entries[key] = Entry(key, proc, watch)
            elif entry.state is not State.WAITING or now < entry.retry_at or slots <= 0:
                continue
            elif entry.busy and _held_elsewhere(key[0]):
                self._schedule(entry)
                continue
            self._start(entry)
            slots -= 1
        for key, entry in list(self.entries.items()):
            if entry.child is None and key not in found:
                del self.entries[key]  # gone, or no longer wanted
        self._young = young

    def _free_slots(self) -> int:
        """Attach helpers that may start now: a helper holds its slot until it is reaped,
        not only until it hands its session over (it still exists meanwhile: a storm
        once showed max_attaching + 1 helpers)."""
        return self.config.max_attaching - sum(
            1
            for e in self._running()
            if e.child and (e.child.attached_at is None or e.child.helper_exists)
        )

    def _start_backlog(self) -> None:
        """Start what the last scan held back for want of a slot, as slots free up."""
        slots = self._free_slots()
        while self._backlog and slots > 0 and not self._draining:
            key, proc = self._backlog.pop(0)
            watch = self.config.watch(proc.watch)
            if key in self.entries or watch is None:
                continue
            entry = self.entries[key] = Entry(key, proc, watch)
            self._young = max(0, self._young - 1)
            self._start(entry)
            slots -= 1

    def _attach_deadline(self, entry: Entry) -> float:
        assert entry.child is not None
        return entry.child.started + entry.watch.attach.attach_timeout + ATTACH_GRACE

    def _attaching(self) -> list[Entry]:
        return [
            e
            for e in self._running()
            if e.child is not None and e.child.attached_at is None and e.child.poll() is None
            and e.child.stop_reason is None and not e.overdue
        ]  # fmt: skip

    def _next_overdue(self) -> float:
        return min((self._attach_deadline(e) for e in self._attaching()), default=float("inf"))

    def _kill_overdue(self, now: float) -> None:
        """Kill session processes that have not attached in time (see ATTACH_GRACE)."""
        for entry in self._attaching():
            assert entry.child is not None
            if now >= self._attach_deadline(entry):
                if _traces(entry.child.pid, entry.key[0]):
                    continue  # never SIGKILL a tracer mid-injection: its own timeout ends it
                entry.overdue = True
                log.warning(
                    "%s not attached within %s: killing its session process (pid %d)",
                    entry.prefix,
                    _seconds(entry.watch.attach.attach_timeout + ATTACH_GRACE),
                    entry.child.pid,
                )
                entry.child.kill()

    def _start(self, entry: Entry) -> None:
        pid = entry.key[0]
        try:
            started = start_time(pid)
        except HeapspyError:
            started = None
        if started is None or not alive(entry.key):  # gone since the scan
            del self.entries[entry.key]
            return
        # alive(key) after the read: the start time read is that of the scanned process
        entry.overdue = False
        try:
            entry.child = AttachChild(
                pid, entry.watch.attach, started, prefix=entry.prefix, wake=self._wake
            )
        except OSError as exc:
            log.error("%s cannot start a session process: %s", entry.prefix, exc)
            self._schedule(entry)
            return
        entry.state = State.RUNNING
        log.info("%s attaching to: %s", entry.prefix, entry.found.cmdline[:200])

    def _schedule(self, entry: Entry) -> str:
        """Wait before the next attempt: retry_backoff, doubling up to retry_max."""
        entry.failures = min(entry.failures + 1, MAX_FAILURES)
        delay = min(self.config.retry_backoff * 2 ** (entry.failures - 1), self.config.retry_max)
        entry.retry_at = time.monotonic() + delay
        entry.state = State.WAITING
        return _seconds(delay)

    # --- children ------------------------------------------------------------------
    def _log_lines(self, entry: Entry, lines: list[str]) -> None:
        for line in lines:
            log.info("%s %s", entry.prefix, line)

    def _reap(self) -> None:
        for entry in self._running():
            assert entry.child is not None
            code = entry.child.poll()
            if code is not None:
                self._finished(entry, code)

    def _finished(self, entry: Entry, code: int) -> None:
        child = entry.child
        assert child is not None
        self._log_lines(entry, child.finish())
        entry.child = None
        if child.stop_reason is not None:  # we asked it to stop: look at the target afresh
            del self.entries[entry.key]
            return
        outcome = decide(code, alive(entry.key), child.by_user)
        said = child.early or [f"the session process exited with status {code}"]
        if entry.overdue:
            limit = _seconds(entry.watch.attach.attach_timeout + ATTACH_GRACE)
            said = [f"not attached within {limit}", *child.early]
        first = said[0].rstrip(".")
        if outcome is Outcome.FORGET:
            log.info("%s the process exited", entry.prefix)
            del self.entries[entry.key]
        elif outcome is Outcome.NEVER:
            entry.state = State.NEVER
            log.warning("%s not profiled (exit %d): %s", entry.prefix, code, first)
            self._log_lines(entry, said[1:])
        elif outcome is Outcome.LEFT:
            entry.state = State.LEFT
            log.info("%s detached by hand: left alone until it restarts", entry.prefix)
        elif outcome is Outcome.BUSY:
            delay = self._schedule(entry)
            if not entry.busy:  # once; then quietly until it is free
                log.info("%s %s; looking again in %s", entry.prefix, first, delay)
            entry.busy = True
        else:
            ran = time.monotonic() - child.attached_at if child.attached_at else 0.0
            # an agent that sent more stacks than a session keeps (a flood costs the daemon
            # seconds of CPU each time) is not attached again before retry_max, whatever
            # its session lasted: a target cannot make the daemon re-attach every backoff
            flooded = code == 0 and child.dropped_stacks > 0
            if flooded:
                entry.failures = MAX_FAILURES  # the next wait is retry_max
            elif ran >= self.config.retry_max:
                entry.failures = 0  # a long session: start the backoff afresh
            entry.busy = False
            delay = self._schedule(entry)
            if code == 0:
                why = child.end_reason or "no reason given"
                log.warning(
                    "%s session ended while the process runs (%s)%s; attaching again in %s",
                    entry.prefix,
                    why,
                    f" after {child.dropped_stacks} stacks were dropped" if flooded else "",
                    delay,
                )
            else:
                self.attach_failures += 1
                log.warning(
                    "%s attach failed (exit %d): %s; trying again in %s",
                    entry.prefix,
                    code,
                    first,
                    delay,
                )
                self._log_lines(entry, said[1:])

    # --- stopping ------------------------------------------------------------------
    def _drain(self, why: str) -> None:
        running = self._running()
        self._draining = True
        self._deadline = time.monotonic() + self.config.stop_timeout
        log.info(
            "stopping (%s): detaching from %s, waiting up to %s",
            why,
            _processes(len(running)),
            _seconds(self.config.stop_timeout),
        )
        self.notifier.stopping(f"stopping: detaching from {_processes(len(running))}")
        for entry in running:
            assert entry.child is not None
            entry.child.stop("the daemon is stopping", by=self._deadline)

    def _kill_stragglers(self) -> None:
        running = self._running()
        for entry in running:
            assert entry.child is not None
            what = (
                "leaving it"
                if entry.child.in_daemon
                else f"killing its attach helper (pid {entry.child.pid})"
            )
            log.warning(
                "%s did not detach within %s: %s; the agent switches itself off when it "
                "loses its peer",
                entry.prefix,
                _seconds(self.config.stop_timeout),
                what,
            )
            entry.child.kill()
        self._collect(running)

    def _force(self) -> None:
        running = self._running()
        log.warning("second stop signal: killing the sessions of %s now", _processes(len(running)))
        for entry in running:
            assert entry.child is not None
            entry.child.kill()
        self._collect(running)
        self._forced = True

    def _collect(self, entries: list[Entry]) -> None:
        deadline = time.monotonic() + 5.0
        for entry in entries:
            child = entry.child
            if child is None:
                continue
            child.wait(max(0.0, deadline - time.monotonic()))  # SIGKILLed: do not hang on it
            self._log_lines(entry, child.finish())
            entry.child = None

    def _abort(self) -> None:
        """The loop failed: still give every session the chance to detach cleanly."""
        running = self._running()
        deadline = time.monotonic() + self.config.stop_timeout
        for entry in running:
            assert entry.child is not None
            entry.child.stop("the daemon failed", by=deadline)
        for entry in running:
            assert entry.child is not None
            if entry.child.wait(max(0.1, deadline - time.monotonic())) is None:
                entry.child.kill()
        self._collect(running)

    # --- reloading -------------------------------------------------------------------
    def _reload(self) -> None:
        self.notifier.reloading()
        old = self.config
        try:
            new = self.loader(old.path)
        except HeapspyError as exc:
            log.error("reload failed, keeping the configuration in force: %s", exc)
            self.notifier.ready(self._status_line())
            return
        self.config = new
        self._scanner.forget()  # what each watch wants changed
        added = [w.name for w in new.watches if old.watch(w.name) is None]
        removed = [w.name for w in old.watches if new.watch(w.name) is None]
        changed = [w.name for w in new.watches if old.watch(w.name) not in (None, w)]
        for entry in list(self.entries.values()):
            watch = new.watch(entry.watch.name)
            if watch == entry.watch:
                continue
            if entry.child is not None:
                why = "its watch was removed" if watch is None else "its watch changed"
                log.info("%s detaching: %s", entry.prefix, why)
                # as at a stop: an agent that floods cannot hold its detach up for long
                entry.child.stop(why, by=time.monotonic() + new.stop_timeout)
            elif entry.state is State.WAITING:
                del self.entries[entry.key]  # looked at afresh by the next scan
        log.info(
            "reloaded %s: %d watches (added: %s; removed: %s; changed: %s)",
            new.path,
            len(new.watches),
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
            ", ".join(changed) or "none",
        )
        self._scan()
        self.notifier.ready(self._status_line())

    # --- status --------------------------------------------------------------------
    def _status_line(self) -> str:
        running = self._running()
        attached = sum(1 for e in running if e.child and e.child.attached_at is not None)
        waiting = self._young + sum(1 for e in self.entries.values() if e.state is State.WAITING)
        ignored = sum(1 for e in self.entries.values() if e.state in (State.NEVER, State.LEFT))
        parts = [f"{attached} attached"]
        for count, what in (
            (len(running) - attached, "attaching"),
            (waiting, "waiting"),
            (ignored, "ignored"),
        ):
            if count:
                parts.append(f"{count} {what}")
        return ("stopping: " if self._draining else "") + ", ".join(parts)

    def _publish_status(self) -> None:
        status = self._status_line()
        # a datagram refused (systemd's queue full) is sent again on the next turn
        if status != self._status and self.notifier.status(status):
            self._status = status

    def served(self) -> list[Local]:
        """The sessions running in this process now, for the HTTP endpoint's threads
        (a copy of the table: the loop changes it meanwhile)."""
        out = []
        for entry in list(self.entries.values()):
            child = entry.child
            thread = child.session if child is not None else None
            if thread is not None and thread.alive():
                found = entry.found
                worker = Worker(found.pid, found.uid, found.cmdline)
                out.append(Local(worker, thread.session))
        return out

    def expose(self, expo: Exposition) -> None:
        """The daemon's own series on /metrics (the workers' come from their sessions)."""
        running = sum(1 for e in self.entries.values() if e.child is not None)
        expo.add(
            "heapspy_daemon_sessions",
            "gauge",
            "Sessions the daemon runs (attaching or attached).",
            [],
            running,
        )
        expo.add(
            "heapspy_daemon_attach_failures_total",
            "counter",
            "Attaches that failed since the daemon started.",
            [],
            self.attach_failures,
        )


def _more_descriptors() -> None:
    """Every session held here holds a few descriptors (its agent, lock, pidfd, control
    socket): raise the soft limit to the hard one, as servers do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_daemon(config: DaemonConfig, notifier: Notifier | None = None) -> int:
    """Watch and attach until SIGTERM / SIGINT; the core of `heapspy daemon`."""
    _more_descriptors()
    supervisor = Supervisor(config, notifier)
    endpoint = None
    if config.listen is not None:
        served = DaemonWorkers(supervisor.served)
        endpoint = serve(
            config.listen,
            ServeOptions(
                token=config.listen_token,
                allow_gc=config.allow_gc,
                extra_metrics=supervisor.expose,
                list_workers=served.list_workers,
                find_worker=served.find_worker,
                metrics=served.metrics,
                profile=served.profile,
            ),
        )
        log.info("serving %s/debug/pprof/ and /metrics", endpoint.url)
    try:
        return supervisor.run()
    finally:
        if endpoint is not None:
            endpoint.close()
