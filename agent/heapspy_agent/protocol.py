"""The wire format between the agent and heapspy: versioned, length-prefixed frames.

A frame is a 5-byte header (big-endian uint32 payload length, uint8 kind) followed by a
UTF-8 JSON object. JSON keeps the agent stdlib-only and the frames debuggable; they are
small because samples are sent as deltas and stacks are interned once.

This module is the frame layer: sizes, header, JSON, nesting depth. What each kind of
frame carries is defined once, in ``heapspy_agent.schema``, which both ends use: the
agent to build its messages within the limits, heapspy to check every frame it receives
(the agent runs inside a process heapspy does not trust).
"""

import json
import re
import socket
import struct
from typing import Any, Dict, List, Optional, Tuple

VERSION = 2  # 2: WELCOME and READY carry one sampling record (schema.Sampling)
HEADER = struct.Struct(">IB")
# No legitimate frame comes near this: the agent splits large collections (STACKS frames
# before their SAMPLES) so that one frame stays well below it. heapspy refuses anything
# larger before reading it, which bounds what one frame can cost it to parse.
MAX_FRAME = 8 * 1024 * 1024
# The deepest legitimate message nests 5 levels (SAMPLES > stacks > stack > frames > frame).
MAX_DEPTH = 8

# agent -> heapspy (bodies: see schema.py)
HELLO = 1
READY = 2
SAMPLES = 3
BYE = 4
ERROR = 5
REPLY = 6  # answer to a COMMAND
STACKS = 7  # new stacks that did not fit in the SAMPLES frame that follows
CENSUS_PROGRESS = 8  # how far a heap census has got
CENSUS = 9  # a heap census's results (several frames; the last one says done)
RETAINERS = 10  # which roots hold the live samples of the stacks a COMMAND named
# heapspy -> agent
WELCOME = 16
COMMAND = 17
# both ways
HEARTBEAT = 32

Message = Tuple[int, Dict[str, Any]]


class ProtocolError(Exception):
    """A frame that breaks the protocol: the session it came on cannot go on."""


def encode(kind: int, body: Dict[str, Any], limit: int = MAX_FRAME) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
    if len(payload) > limit:
        raise ProtocolError("frame too large: %d bytes" % len(payload))
    return HEADER.pack(len(payload), kind) + payload


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def _check_depth(payload: bytes) -> None:
    """Refuse a payload nested deeper than MAX_DEPTH without parsing (or recursing on)
    it: json's parser recurses once per level, so a 200k-deep array must never reach it.
    Strings are removed first (brackets inside them do not nest), then only brackets are
    kept and each pass deletes the innermost pairs, all at C speed."""
    brackets = _STRING.sub(b"", payload).translate(None, _NOT_BRACKET)
    for _ in range(MAX_DEPTH):
        if not brackets:
            return
        brackets = brackets.replace(b"[]", b"").replace(b"{}", b"")
    if b"[]" in brackets or b"{}" in brackets:
        raise ProtocolError("frame nested deeper than %d levels" % MAX_DEPTH)
    if brackets:
        raise ProtocolError("frame is not valid JSON: unbalanced brackets")


def _no_constant(name: str) -> Any:
    raise ProtocolError("frame holds %s, which is not JSON" % name)


def decode(payload: bytes) -> Dict[str, Any]:
    """One frame's payload as a JSON object; ProtocolError for anything else."""
    _check_depth(payload)
    try:
        body = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError("frame is not valid JSON: %s" % str(exc)[:100]) from None
    if not isinstance(body, dict):
        raise ProtocolError("frame body is not a JSON object")
    return body


class FrameReader:
    """Accumulates bytes from a non-blocking socket and yields whole frames.

    A broken frame raises ProtocolError; the good frames before it in the same read are
    returned first (what they carry was collected legitimately), and the error is raised
    by the next ``feed`` and kept in ``error`` meanwhile. Nothing is read after it."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame
        self.error: Optional[ProtocolError] = None

    def buffered(self) -> bytes:
        """Bytes read beyond the last whole frame (a session moving to another process
        takes them along)."""
        return bytes(self._buf)

    def feed(self, data: bytes) -> List[Message]:
        if self.error is not None:
            raise self.error
        self._buf += data
        out: List[Message] = []
        try:
            while len(self._buf) >= HEADER.size:
                length, kind = HEADER.unpack_from(self._buf)
                if length > self.max_frame:
                    raise ProtocolError(
                        "frame too large: %d bytes (the limit is %d)" % (length, self.max_frame)
                    )
                end = HEADER.size + length
                if len(self._buf) < end:
                    break
                payload = bytes(self._buf[HEADER.size : end])
                del self._buf[:end]
                out.append((kind, decode(payload)))
        except ProtocolError as exc:
            self.error = exc
            self._buf = bytearray()
            if not out:
                raise
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
