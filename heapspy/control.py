"""The control socket of a live session: how other heapspy commands reach its owner."""

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
