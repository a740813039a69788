"""Who may read what over HTTP.

A heap profile names a worker's code and, through its figures, says much about its
data: nobody may read one who could not have attached to that worker. heapspy knows
who is calling even over TCP, as long as the call comes over loopback: the kernel lists
every local TCP socket with its owner's uid (sock_diag over netlink, one socket at a
time; ``/proc/net/tcp`` and ``tcp6`` where netlink is missing). So:

- a caller running as root, or as the user heapspy runs as, sees every worker;
- another local user sees the workers that run as that user, nothing else;
- a caller presenting the bearer token (``--listen-token-file``) sees everything: the
  token is how Prometheus, Alloy or Parca, running as their own users, are let in;
- a non-loopback address is refused unless a token file is given, since a remote
  caller's uid cannot be known.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from heapspy.errors import Remedy, UsageError

MAX_TOKEN = 4096


@dataclass(frozen=True)
class ListenAddress:
    """Where to serve: a TCP host and port, or a Unix socket path."""

    host: str = ""
    port: int = 0
    path: str = ""  # a Unix socket

    @property
    def loopback(self) -> bool:
        if self.path:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(text: str, what: str) -> ListenAddress:
    """``127.0.0.1:9465``, ``[::1]:9465``, ``:9465`` (loopback), or a Unix socket path."""
    text = text.strip()
    if text.startswith("unix:"):
        text = text[5:]
    if text.startswith("/") or text.startswith("./"):
        return ListenAddress(path=text)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise UsageError(
            f"{what} must be HOST:PORT or a Unix socket path, got {text!r}.",
            remedies=(Remedy("listen_example"),),
        )
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise UsageError(
            f"{what}: the port must be a number from 0 (any free port) to 65535, got {port_text!r}."
        )
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UsageError(f"{what}: {host!r} is not an IP address.") from None
    return ListenAddress(host=host, port=int(port_text))


def read_token(path: Path | None) -> str | None:
    """The bearer token from a file only its owner can read (a token others can read
    is no secret); None without a file."""
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"Cannot open the token file {path}: {exc.strerror}.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"The token file {path} is not a regular file.")
        if info.st_mode & 0o077:
            raise UsageError(
                f"The token file {path} can be read by others (mode {info.st_mode & 0o777:o}).",
                hint=f"chmod 600 {path}",
            )
        token = os.read(fd, MAX_TOKEN).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if len(token) < 16:
        raise UsageError(f"The token in {path} is shorter than 16 characters.")
    return token


def token_matches(header: str | None, token: str | None) -> bool:
    if token is None or not header:
        return False
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def _hex_endpoint(host: str, port: int) -> tuple[str, str]:
    """An address as /proc/net/tcp{,6} writes it (32-bit words in host byte order)."""
    addr = ipaddress.ip_address(host)
    raw = addr.packed
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    text = "".join(f"{w:08X}" for w in words)
    return text, f"{port:04X}"


# sock_diag (netlink): the kernel looks one socket up by its four-tuple, in tens of
# microseconds, where reading /proc/net/tcp walks every socket of the host (~6 ms for 60
# sockets here, on every request: 50 profiles in a row paid it 50 times).
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NOCOOKIE = 0xFFFFFFFF
_NETLINK_SOCK_DIAG = 4  # not in the socket module
_NLMSG = struct.Struct("=IHHII")
_DIAG_REQ = struct.Struct("=BBBxI")  # family, protocol, ext, pad, states
_SOCKID = struct.Struct(">HH16s16s")  # sport, dport, src, dst (network order)
_SOCKID_TAIL = struct.Struct("=III")  # interface, cookie[2]
_DIAG_MSG_UID = 4 + _SOCKID.size + _SOCKID_TAIL.size + 12  # family..retrans, id, expires..wqueue


def diag_uid(peer_host: str, peer_port: int, local_host: str, local_port: int) -> int | None:
    """The owner of the TCP socket ``peer`` → ``local``, asked of the kernel (sock_diag);
    None when it does not answer (no such socket, netlink unavailable)."""
    try:
        src = ipaddress.ip_address(peer_host)
        dst = ipaddress.ip_address(local_host)
    except ValueError:
        return None
    family = socket.AF_INET6 if src.version == 6 else socket.AF_INET
    sockid = _SOCKID.pack(
        peer_port, local_port, src.packed.ljust(16, b"\0"), dst.packed.ljust(16, b"\0")
    ) + _SOCKID_TAIL.pack(0, _NOCOOKIE, _NOCOOKIE)
    body = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + sockid
    header = _NLMSG.pack(_NLMSG.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.send(header + body)
            reply = nl.recv(8192)
    except (OSError, AttributeError):
        return None
    if len(reply) < _NLMSG.size:
        return None
    length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(reply)
    if kind != _SOCK_DIAG_BY_FAMILY or length < _NLMSG.size + _DIAG_MSG_UID + 4:
        return None  # _NLMSG_ERROR: no such socket
    (uid,) = struct.unpack_from("=I", reply, _NLMSG.size + _DIAG_MSG_UID)
    return int(uid)


def tcp_peer_uid(peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """The uid owning the local TCP socket at ``peer`` connected to ``local``: the
    caller of a loopback connection. None when it is not a local socket."""
    peer_host, peer_port = peer[0], peer[1]
    local_host, local_port = local[0], local[1]
    if peer_host.startswith("::ffff:") and "." in peer_host:
        # an IPv4 caller on a dual-stack socket: its own socket is in /proc/net/tcp
        peer_host, local_host = peer_host[7:], local_host.removeprefix("::ffff:")
    found = diag_uid(peer_host, peer_port, local_host, local_port)
    if found is None:  # no netlink (a container may lack it): the socket table
        found = table_uid(peer_host, peer_port, local_host, local_port)
    return found


def table_uid(peer_host: str, peer_port: int, local_host: str, local_port: int) -> int | None:
    """``tcp_peer_uid`` read from /proc/net/tcp{,6}."""
    try:
        want_local, want_port = _hex_endpoint(peer_host, peer_port)
        want_remote, want_rport = _hex_endpoint(local_host, local_port)
    except ValueError:
        return None
    table = "/proc/net/tcp6" if ":" in peer_host else "/proc/net/tcp"
    try:
        with open(table) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        if fields[1] == f"{want_local}:{want_port}" and fields[2] == f"{want_remote}:{want_rport}":
            return int(fields[7])
    return None


def unix_peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return int(struct.unpack("3i", creds)[1])


@dataclass(frozen=True)
class Caller:
    """What the server knows about one request's sender."""

    uid: int | None  # None: unknown (a remote caller)
    token: bool  # presented the right bearer token

    def may_read(self, worker_uid: int | None) -> bool:
        if self.token or self.uid == 0 or self.uid == os.geteuid():
            return True
        return self.uid is not None and worker_uid is not None and self.uid == worker_uid
