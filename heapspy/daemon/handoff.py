"""A session attached by a short-lived helper, moved into the daemon to run there.

Attaching is what needs a process of its own: ptrace belongs to the thread that
attached, the ELF parse and the injection allocate and parse what the target chose,
and a target that holds the attach up (a crafted file, a main thread that never runs
Python) must not hold up anyone else. Running a session is not: it is a socket, a few
tables and a frame every interval. So the helper forked for one target attaches,
completes the handshake, and sends the daemon what the session is made of, then exits:

- descriptors, with ``SCM_RIGHTS``: the agent's connection, the session's lock (the same
  open file, so the ``flock`` never lapses) and the target's pidfd;
- the rest as one record: what inspection found, what the handshake said, frames the
  handshake read beyond READY (they are the agent's and are handled in order).

The record comes from the daemon's own forked child over a socketpair no other process
can reach, so it is pickled. What the agent said in the handshake was checked there
(``heapspy_agent.schema``); the frames read beyond it are checked as they are handled,
as in any session.
"""

from __future__ import annotations

import array
import os
import pickle
import socket
import weakref
from dataclasses import dataclass, replace
from typing import Any

from heapspy_agent import protocol

from heapspy.channel import FramedSocket, Greeting
from heapspy.config import AttachConfig
from heapspy.session import AttachInfo, Session
from heapspy.target.process import PythonTarget

# The record is small (the hello carries the target's command line, bounded by the
# protocol); one datagram of SOCK_SEQPACKET holds it.
MAX_RECORD = 1 << 20
FDS = 3  # agent connection, lock, pidfd (-1 when the kernel has no pidfds: not sent)


@dataclass(frozen=True)
class Moved:
    """What travels besides the descriptors."""

    target: PythonTarget
    greeting: Greeting
    info: AttachInfo
    pending: list[Any]  # frames read with READY, not yet handled
    buffered: bytes  # bytes read beyond the last whole frame
    broken: str | None = None  # the protocol error met after those frames, if any


def send_session(channel: socket.socket, session: Session) -> None:
    """Send ``session`` (attached, not serving) to the daemon over ``channel``."""
    conn = session.channel.conn if session.channel is not None else None
    lock_fd = session.lock.fileno()
    assert conn is not None and session.greeting is not None and session.info is not None
    assert lock_fd is not None
    moved = Moved(
        target=replace(session.target, pidfd=-1),
        greeting=session.greeting,
        info=session.info,
        pending=list(conn.pending),
        buffered=conn.reader.buffered(),
        broken=str(conn.reader.error) if conn.reader.error is not None else None,
    )
    fds = [conn.sock.fileno(), lock_fd]
    if session.target.pidfd >= 0:
        fds.append(session.target.pidfd)
    data = b"S" + pickle.dumps(moved, protocol=pickle.HIGHEST_PROTOCOL)
    channel.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def receive(channel: socket.socket) -> tuple[bytes, list[int]] | None:
    """One message from the helper: its bytes and any descriptors that came with it;
    None when there is none now (or the helper is gone: ``b""``)."""
    fds = array.array("i")
    try:
        data, ancillary, _flags, _addr = channel.recvmsg(
            MAX_RECORD, socket.CMSG_SPACE(FDS * fds.itemsize)
        )
    except BlockingIOError:
        return None
    except OSError:
        return b"", []
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(raw[: len(raw) - (len(raw) % fds.itemsize)])
    return data, list(fds)


def resume(data: bytes, fds: list[int], config: AttachConfig) -> Session:
    """The session a helper sent (``send_session``), carried on in this process: it
    holds the lock and serves the control socket from now on."""
    moved = pickle.loads(data[1:])  # noqa: S301 - our own child, see the module's docstring
    if not isinstance(moved, Moved) or len(fds) < 2:
        raise ValueError("not a session")
    sock = socket.socket(fileno=fds[0])
    sock.setblocking(False)
    conn = FramedSocket(sock)
    conn.pending.extend(moved.pending)
    if moved.broken is not None:  # ends the session once the frames before it are handled
        conn.reader.error = protocol.ProtocolError(moved.broken)
    elif moved.buffered:
        conn.pending.extend(conn.reader.feed(moved.buffered))
    target = moved.target
    closer = None
    if len(fds) > 2:
        target = replace(target, pidfd=fds[2])
        closer = weakref.finalize(target, _close_quietly, fds[2])
    session = Session.resume(target, config, fds[1], conn, moved.greeting, moved.info)
    if closer is not None:
        session.closers.append(closer)  # runs once, at the session's end or the target's
    return session


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
