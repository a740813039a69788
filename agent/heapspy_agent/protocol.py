"""The wire format between the agent and heapspy: versioned, length-prefixed frames.

A frame is a 5-byte header (big-endian uint32 payload length, uint8 kind) followed by a
UTF-8 JSON object. JSON keeps the agent stdlib-only and the frames debuggable; they are
small because samples are sent as deltas and stacks are interned once.
"""

import json
import socket
import struct
from typing import Any, Dict, List, Optional, Tuple

VERSION = 1
HEADER = struct.Struct(">IB")
MAX_FRAME = 64 * 1024 * 1024

# agent -> heapspy
HELLO = 1  # {version, token, pid, python, agent}
READY = 2  # {mode, rate, frames, notes}
SAMPLES = 3  # {seq, stacks, sites, totals, facts}
BYE = 4  # {reason}
ERROR = 5  # {code, message, ...}
REPLY = 6  # {id, ...}: answer to a COMMAND
# heapspy -> agent
WELCOME = 16  # {config}
COMMAND = 17  # {id, cmd, ...}
# both ways
HEARTBEAT = 32  # {}

Message = Tuple[int, Dict[str, Any]]


class ProtocolError(Exception):
    pass


def encode(kind: int, body: Dict[str, Any]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
    if len(payload) > MAX_FRAME:
        raise ProtocolError("frame too large: %d bytes" % len(payload))
    return HEADER.pack(len(payload), kind) + payload


class FrameReader:
    """Accumulates bytes from a non-blocking socket and yields whole frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> List[Message]:
        self._buf += data
        out: List[Message] = []
        while len(self._buf) >= HEADER.size:
            length, kind = HEADER.unpack_from(self._buf)
            if length > MAX_FRAME:
                raise ProtocolError("frame too large: %d bytes" % length)
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            body = json.loads(bytes(self._buf[HEADER.size : end]).decode("utf-8"))
            del self._buf[:end]
            if not isinstance(body, dict):
                raise ProtocolError("frame body is not an object")
            out.append((kind, body))
        return out


def recv_one(sock: socket.socket, reader: FrameReader, pending: List[Message]) -> Optional[Message]:
    """Blocking read of the next frame (honours the socket's timeout); None on EOF."""
    while not pending:
        data = sock.recv(65536)
        if not data:
            return None
        pending.extend(reader.feed(data))
    return pending.pop(0)


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid)
