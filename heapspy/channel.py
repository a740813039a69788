"""The connection to one agent: the handshake, the framed socket, heartbeats and calls.

Everything the agent sends is checked here (``heapspy_agent.schema``) before the
session sees it, and the replies to heapspy's own calls are taken out on the way: the
session gets the other frames, one at a time, through ``on_frame``. A frame that
breaks the protocol goes to ``on_violation`` and ends the channel; what came before it
was sent legitimately and is handled first.
"""

from __future__ import annotations

import hmac
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from heapspy_agent import protocol, schema

from heapspy.errors import (
    AgentFailed,
    AlreadyAttached,
    HeapspyError,
    ProtocolViolation,
    Remedy,
    SamplingUnavailable,
)

# The agent gives up on a silent heapspy after its PEER_TIMEOUT (60 s): a daemon whose
# threads wait long for the GIL (50 censuses at attach at load 50) needs the margin, and
# 4 beats within it are enough. Every beat is a send, a wake-up of the session's thread
# and of the agent's thread in the target, and in a daemon 64 sessions' beats compete for
# one GIL (every 0.5 s, when PEER_TIMEOUT was 5 s, they were 100 sends a second).
HEARTBEAT = 15.0
# An agent that died closes its socket (seen at once). Silence alone only means busy: a
# tracemalloc snapshot of a large heap holds the agent for seconds, and a target starved
# of CPU delays it further. So wait long before giving up on a silent agent.
AGENT_TIMEOUT = 120.0
HANDSHAKE_TIMEOUT = 5.0

FrameHandler = Callable[[int, dict[str, Any]], None]
ViolationHandler = Callable[[protocol.ProtocolError], None]
CloseHandler = Callable[[], None]
# ``AgentChannel.call`` as the modules that ask the agent something see it: a command,
# a timeout and its arguments in, the agent's reply (or why there is none) out
AgentCall = Callable[..., dict[str, Any]]


class FramedSocket:
    """A framed socket with a reader and a send helper."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = protocol.FrameReader()
        self.pending: list[protocol.Message] = []

    def send(self, kind: int, body: dict[str, Any]) -> None:
        self.sock.sendall(protocol.encode(kind, body))

    def recv(self, timeout: float) -> protocol.Message | None:
        self.sock.settimeout(timeout)
        return protocol.recv_one(self.sock, self.reader, self.pending)


def _checked(msg: protocol.Message | None) -> protocol.Message | None:
    """A handshake frame checked against its message (``heapspy_agent.schema``)."""
    return None if msg is None else (msg[0], schema.check(msg[0], msg[1]))


class Pollable(Protocol):
    def fileno(self) -> int: ...


P = TypeVar("P", bound=Pollable)


def readable(socks: Sequence[P], timeout: float) -> list[P]:
    """Those of ``socks`` readable within ``timeout`` seconds. poll(), not select(): a
    daemon holding many sessions in one process has descriptors beyond 1024."""
    poller = select.poll()
    by_fd: dict[int, P] = {}
    for sock in socks:
        by_fd[sock.fileno()] = sock
        poller.register(sock, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(max(0.0, timeout) * 1000) if fd in by_fd]


def _readable(sock: socket.socket) -> bool:
    return bool(readable([sock], 0))


def agent_error(pid: int, body: dict[str, Any]) -> HeapspyError:
    """The error an agent's ERROR frame stands for."""
    if body.get("code") == "no_sampling":
        return SamplingUnavailable(
            f"Sampling cannot run in process {pid}: {body.get('message')}.",
            remedies=(Remedy("no_require_sampling"),),
        )
    if body.get("code") == "already_attached":
        holder = body.get("holder_pid")
        return AlreadyAttached(
            f"Process {pid} already has a heapspy agent, held by heapspy pid {holder}.",
            hint=f"End that session first (`heapspy detach {pid}`).",
        )
    detail = body.get("message", "unknown error")
    tb = body.get("traceback")
    return AgentFailed(
        f"The agent failed to start in process {pid}: {detail}",
        hint=tb.rstrip() if isinstance(tb, str) else None,
    )


def violation_error(pid: int, what: str) -> ProtocolViolation:
    return ProtocolViolation(
        f"The agent in process {pid} broke the protocol ({what}); heapspy ended the session."
    )


@dataclass(frozen=True)
class Greeting:
    """What the agent said in the handshake: HELLO (who it is) and READY (what it does)."""

    hello: dict[str, Any]
    ready: dict[str, Any]


def handshake(conn: FramedSocket, pid: int, token: str, settings: dict[str, Any]) -> Greeting:
    """HELLO (with the session's token and our protocol version), WELCOME with the
    settings, READY. Raises the agent's own error if it refuses, AgentFailed if it hangs
    up, ProtocolError for a frame out of place."""
    msg = _checked(conn.recv(HANDSHAKE_TIMEOUT))
    if msg is not None and msg[0] == protocol.ERROR:
        raise agent_error(pid, msg[1])
    if msg is None:
        raise AgentFailed(f"The agent in process {pid} hung up during the handshake.")
    if msg[0] != protocol.HELLO:
        raise protocol.ProtocolError(f"frame kind {msg[0]} where HELLO was due")
    hello = msg[1]
    if not hmac.compare_digest(hello["token"].encode(), token.encode()):
        raise protocol.ProtocolError("HELLO without the session token")
    if hello.get("version") != protocol.VERSION:
        raise AgentFailed(
            f"Agent protocol version {hello.get('version')} is not {protocol.VERSION}."
        )
    # A refusal (already attached, boot failure) follows the hello at once, and the
    # refusing agent does not wait for WELCOME: writing it can then fail (EPIPE)
    # while the refusal is already here to be read, and the refusal is the answer.
    try:
        conn.send(protocol.WELCOME, {"config": settings})
    except OSError as exc:
        if not conn.pending and not _readable(conn.sock):
            raise AgentFailed(
                f"The agent in process {pid} closed during the handshake: {exc}."
            ) from None
    msg = _checked(conn.recv(HANDSHAKE_TIMEOUT))
    if msg is None:
        raise AgentFailed(f"The agent in process {pid} closed before it was ready.")
    if msg[0] == protocol.ERROR:
        raise agent_error(pid, msg[1])
    if msg[0] != protocol.READY:
        raise protocol.ProtocolError(f"frame kind {msg[0]} where READY was due")
    return Greeting(hello, msg[1])


class AgentChannel:
    """The running connection: reads and checks frames, keeps the agent's replies for
    the call waiting on them, sends heartbeats, and says when the agent went silent."""

    def __init__(
        self,
        conn: FramedSocket,
        on_frame: FrameHandler,
        on_violation: ViolationHandler,
        on_close: CloseHandler,
    ) -> None:
        self.conn = conn
        self.sock = conn.sock
        self.on_frame = on_frame
        self.on_violation = on_violation
        self.on_close = on_close  # told each time a read finds the agent's end closed
        self.last_rx = time.monotonic()
        self.next_beat = 0.0  # kept across the session's run() calls, however short
        self._cmd_id = 0
        self._replies: dict[int, dict[str, Any]] = {}  # agent replies by command id
        # When set (a stop with a deadline: ``Session.request_stop``), no wait on the agent
        # goes past it: an agent that floods, or one that never answers, cannot hold the
        # detach past its deadline by keeping each call busy until its own timeout.
        self.cutoff: float | None = None

    def send(self, kind: int, body: dict[str, Any]) -> None:
        """Send a frame; an agent that cannot take it is seen gone by the next read."""
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(2.0)
            self.conn.send(kind, body)
        except OSError:
            pass
        finally:
            self.sock.setblocking(False)

    def beat(self, now: float) -> None:
        """A heartbeat when one is due."""
        if now >= self.next_beat:
            self.send(protocol.HEARTBEAT, {})
            self.next_beat = now + HEARTBEAT

    def silent(self, now: float) -> bool:
        """Whether the agent has said nothing for longer than a busy agent would."""
        return now - self.last_rx > AGENT_TIMEOUT

    def read(self) -> bool:
        """Read what has come and handle it; False once the agent closed (``on_close``
        was told) or broke the protocol (``on_violation`` was told)."""
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self.on_close()
            return False
        self.last_rx = time.monotonic()
        try:
            self.conn.pending.extend(self.conn.reader.feed(data))
        except protocol.ProtocolError as exc:
            # frames read before this one (with READY, say, while a command waited for its
            # reply) were sent legitimately: they count before the session ends
            if self.take_pending():
                return self._violated(exc)
            return False
        return self.take_pending()

    def take_pending(self) -> bool:
        """Handle the frames read so far (the handshake may have read some with READY),
        checking each; False once the agent broke the protocol."""
        try:
            while self.conn.pending:
                kind, body = self.conn.pending.pop(0)
                body = schema.check(kind, body)
                if kind == protocol.REPLY:
                    if body.get("id") == self._cmd_id:  # kept only while a call waits
                        self._replies[self._cmd_id] = body
                    continue
                self.on_frame(kind, body)
            if self.conn.reader.error is not None:
                raise self.conn.reader.error
        except protocol.ProtocolError as exc:
            return self._violated(exc)
        return True

    def violated(self, exc: protocol.ProtocolError) -> None:
        """End the channel on a violation found outside it (a reply that did not fit)."""
        self._violated(exc)

    def _violated(self, exc: protocol.ProtocolError) -> bool:
        self.conn.pending.clear()
        self.on_violation(exc)
        return False

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the agent and handle what came; False as ``read``."""
        return not readable([self.sock], timeout) or self.read()

    def call(self, cmd: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
        """Send a command to the agent and wait for its reply, handling other frames."""
        self._cmd_id += 1
        ident = self._cmd_id
        self.send(protocol.COMMAND, {"id": ident, "cmd": cmd, **args})
        deadline = self.until(time.monotonic() + timeout)
        while time.monotonic() < deadline:
            reply = self._replies.pop(ident, None)
            if reply is not None:
                return reply
            if not self.wait(0.1):
                return {"ok": False, "error": "the agent went away"}
        return {"ok": False, "error": "the agent did not answer"}

    def until(self, deadline: float) -> float:
        """``deadline``, or the cutoff if that comes first."""
        return deadline if self.cutoff is None else min(deadline, self.cutoff)

    def close(self) -> None:
        self.sock.close()
