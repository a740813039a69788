"""The control socket of a live session: how other heapspy commands reach its owner.

Both ends live here: ``ControlServer`` is the session's (it listens, checks who
connects, and hands each command to the session), ``request`` and ``stream`` are the
clients' (``heapspy status``, ``dump``, ``rate``, ``top``, ``census``, the daemon's
HTTP endpoint)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from heapspy_agent import protocol

from heapspy.errors import NoSession
from heapspy.registry import control_path, read_holder

# The control socket joins two heapspy processes of the same user (the agent's limit is
# for what a target sends): a reply may carry a whole profile (10,000 stacks ~ 1 MiB as
# base64), so its frames may be larger.
CONTROL_MAX_FRAME = 256 * 1024 * 1024


def encode_reply(body: dict[str, Any]) -> bytes:
    """A control reply as a frame; one too large to send becomes an error reply."""
    try:
        return protocol.encode(protocol.REPLY, body, CONTROL_MAX_FRAME)
    except protocol.ProtocolError as exc:
        return protocol.encode(protocol.REPLY, {"ok": False, "error": str(exc)})


def listen(pid: int) -> socket.socket:
    path = control_path(pid)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(8)
    sock.setblocking(False)
    return sock


Handler = Callable[[dict[str, Any]], dict[str, Any]]
# a command that answers with several frames on the client's socket (a census streams
# its progress, then its reply): it writes them itself
Streamer = Callable[[socket.socket, dict[str, Any]], None]


class ControlServer:
    """The session's end of the control socket: accepts clients of the same user (or
    root), reads their commands and answers each with ``handle``'s reply, or lets a
    ``streams`` command write its own frames. A client that breaks the framing is hung
    up on, alone; one that stops reading cannot hold the session up for long."""

    def __init__(self, pid: int, handle: Handler, streams: dict[str, Streamer]) -> None:
        self.listener = listen(pid)
        self.handle = handle
        self.streams = streams
        self.clients: dict[socket.socket, protocol.FrameReader] = {}

    def sockets(self) -> list[socket.socket]:
        """What to wait on: the listener and every client."""
        return [self.listener, *self.clients]

    def owns(self, sock: socket.socket) -> bool:
        return sock is self.listener or sock in self.clients

    def ready(self, sock: socket.socket) -> None:
        """``sock`` (one of ``sockets()``) is readable: accept, or serve that client."""
        if sock is self.listener:
            self._accept()
        else:
            self._serve(sock)

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        peer = socket.socket.getsockopt(sock, socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        uid = int.from_bytes(peer[4:8], "little")
        if uid not in (0, os.geteuid()):
            sock.close()
            return
        sock.setblocking(False)
        self.clients[sock] = protocol.FrameReader()

    def _hang_up(self, sock: socket.socket) -> None:
        del self.clients[sock]
        sock.close()

    def _serve(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._hang_up(sock)
            return
        try:
            frames = self.clients[sock].feed(data)
        except protocol.ProtocolError:  # a broken client: hang up on it, only it
            self._hang_up(sock)
            return
        for _kind, body in frames:
            streamer = self.streams.get(str(body.get("cmd")))
            if streamer is not None:  # streams progress, then its own reply
                sock.setblocking(True)
                streamer(sock, body)
                sock.setblocking(False)
                continue
            try:
                reply = self.handle(body)
            except (ValueError, TypeError, OverflowError) as exc:  # e.g. "rate": "lots"
                reply = {"ok": False, "error": f"malformed command: {exc}"}
            # a client that stops reading a large reply must not hold the session up
            sock.settimeout(10.0)
            try:
                sock.sendall(encode_reply(reply))
            except OSError:
                pass
            sock.setblocking(False)

    def close(self) -> None:
        for client in list(self.clients):
            client.close()
        self.clients.clear()
        self.listener.close()


def request(pid: int, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    """Send one command to the session holding ``pid`` and return its reply."""
    return stream(pid, cmd, None, timeout, **args)


def stream(
    pid: int,
    cmd: str,
    on_frame: Callable[[dict[str, Any]], bool] | None,
    timeout: float = 30.0,
    **args: Any,
) -> dict[str, Any]:
    """Send one command and return its last reply: ``on_frame`` sees each reply and
    returns True while more are due (a census sends progress first). A Ctrl-C while
    they come sends ``stop`` and goes on reading: the session answers with what it has."""
    path = control_path(pid)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise NoSession(f"No heapspy session holds process {pid}.") from None
    with sock:
        holder = read_holder(pid)
        peer = protocol.peer_pid(sock)
        if holder is not None and peer != holder.holder_pid:
            raise NoSession(f"The control socket for {pid} is not held by its session.")
        body = {"cmd": cmd}
        body.update(args)
        try:
            sock.sendall(protocol.encode(protocol.COMMAND, body))
        except (ConnectionResetError, BrokenPipeError):
            raise NoSession(f"The heapspy session for process {pid} is closing.") from None
        reader = protocol.FrameReader(max_frame=CONTROL_MAX_FRAME)
        pending: list[protocol.Message] = []
        stopped = False
        while True:
            try:
                msg = protocol.recv_one(sock, reader, pending)
            except (ConnectionResetError, BrokenPipeError):
                msg = None
            except KeyboardInterrupt:
                if stopped or on_frame is None:
                    raise
                stopped = True
                sock.sendall(protocol.encode(protocol.COMMAND, {"cmd": "stop"}))
                continue
            if msg is None or on_frame is None or not on_frame(msg[1]):
                break
    if msg is None:
        raise NoSession(f"The heapspy session for process {pid} closed without answering.")
    return msg[1]
