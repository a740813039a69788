"""Open a file a target names, as the target sees it, without trusting the name.

A target chooses the files heapspy reads as root: the source files its code objects
name (the symbolizer) and the libpython it mapped (the ELF parser). Any of them may be
a FIFO (an open or read that never returns), an endless device, a 10 GiB sparse file,
or a symlink to a root-only file or out of the target's root. So a file is opened only:

- through a directory fd of ``/proc/PID/root`` with ``openat2(RESOLVE_IN_ROOT |
  RESOLVE_NO_MAGICLINKS)``: ``..`` and absolute symlinks stay inside the target's root,
  ``/proc/*/root``-style magic links are refused. Kernels without openat2 (before 5.6)
  get a component-by-component walk that refuses every symlink instead of following it;
- with ``O_PATH | O_NOFOLLOW`` first, so nothing but a regular file is ever really
  opened (opening a FIFO or a device can block or have side effects), then reopened
  read-only and non-blocking through the fd itself (same inode, no second lookup);
- when the target's credentials could read it (owner, group and other bits against the
  target's fsuid, fsgid and supplementary groups). This is checked on the file rather
  than by reading in a helper with ``setfsuid``: that would need ``CAP_SETUID`` and
  ``CAP_SETGID`` in the daemon, and what a looser check can leak (function names of
  a file in a directory the target cannot search) goes only into root's own dump;
- size-capped: checked with ``fstat`` before reading and again by a bounded read.
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import stat
import time
from dataclasses import dataclass

SYS_OPENAT2 = 437  # x86_64 and aarch64 alike (the generic syscall table)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


class Refused(OSError):
    """The file is not one heapspy reads for a target (why is in the message)."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EPERM, reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Credentials:
    """The ids the kernel checks file access with: fsuid, fsgid, supplementary groups."""

    uid: int
    gid: int
    groups: frozenset[int]

    @classmethod
    def of_process(cls, pid: int) -> Credentials:
        fields: dict[str, list[str]] = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Uid", "Gid", "Groups"):
                    fields[key] = value.split()
        # Uid/Gid lines: real, effective, saved, filesystem
        return cls(
            uid=int(fields["Uid"][3]),
            gid=int(fields["Gid"][3]),
            groups=frozenset(int(g) for g in fields.get("Groups", [])),
        )

    def may(self, st: os.stat_result, bits: int) -> bool:
        """Whether these credentials have every permission in ``bits`` (an ``S_IROTH``-
        style mask: 4 read, 1 search) on a file with status ``st``. Root may everything,
        as for the kernel (``CAP_DAC_OVERRIDE`` for reading and searching)."""
        if self.uid == 0:
            return True
        mode = st.st_mode
        if st.st_uid == self.uid:
            granted = (mode >> 6) & 7
        elif st.st_gid == self.gid or st.st_gid in self.groups:
            granted = (mode >> 3) & 7
        else:
            granted = mode & 7
        return granted & bits == bits


def open_root(pid: int) -> int:
    """An ``O_PATH`` directory fd of the target's root (its mount namespace and chroot)."""
    return os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    fd = _syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


_openat2_missing = False


def _walk_without_links(root_fd: int, path: str) -> int:
    """The fallback for kernels without openat2: one component at a time, ``O_NOFOLLOW``,
    refusing ``..`` and every symlink, so nothing ever leads out of the root."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise Refused(f"{path!r} is not a plain path")
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | (0 if last else os.O_DIRECTORY)
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise Refused(f"{path!r} goes through a symlink") from None
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _lookup(root_fd: int, path: str) -> int:
    """An ``O_PATH`` fd of ``path`` resolved inside ``root_fd``; a final symlink is
    returned as itself (not followed)."""
    global _openat2_missing
    if not path.startswith("/"):
        raise Refused(f"{path!r} is not an absolute path")
    if not _openat2_missing:
        try:
            return _openat2(
                root_fd,
                path,
                os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
            )
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter
                raise
            _openat2_missing = True
    return _walk_without_links(root_fd, path)


def open_regular(path_fd: int, what: str, creds: Credentials | None, max_size: int) -> int:
    """Reopen an ``O_PATH`` fd read-only if it is a regular file of at most ``max_size``
    bytes that ``creds`` (when given) may read; raises :class:`Refused` otherwise."""
    st = os.fstat(path_fd)
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise Refused(f"{what} is {kind}")
    if st.st_size > max_size:
        raise Refused(f"{what} is larger than {max_size} bytes ({st.st_size})")
    if creds is not None and not creds.may(st, 4):
        raise Refused(f"{what} is not readable by uid {creds.uid}")
    # the fd's own magic link: the same inode, no path looked up again
    return os.open(
        f"/proc/self/fd/{path_fd}",
        os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
    )


def open_in_root(root_fd: int, path: str, creds: Credentials | None, max_size: int) -> int:
    """A read-only fd of the regular file ``path`` in the root ``root_fd``; see the
    module docstring for every check. Raises OSError (:class:`Refused` for a check)."""
    path_fd = _lookup(root_fd, path)
    try:
        return open_regular(path_fd, repr(path), creds, max_size)
    finally:
        os.close(path_fd)


def read_capped(fd: int, max_size: int) -> bytes:
    """All of ``fd``'s bytes if there are at most ``max_size``, else :class:`Refused`
    (the file may have grown since it was checked)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, min(1 << 20, max_size + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_size:
            raise Refused(f"the file grew beyond {max_size} bytes while read")


def read_file_in_root(root_fd: int, path: str, creds: Credentials | None, max_size: int) -> bytes:
    """The bytes of ``path`` in the target's root, with every check of :func:`open_in_root`."""
    fd = open_in_root(root_fd, path, creds, max_size)
    try:
        return read_capped(fd, max_size)
    finally:
        os.close(fd)


class BoundedReader(io.RawIOBase):
    """A read-only, seekable view of the first ``length`` bytes of ``fd`` that reads at
    most ``budget`` bytes in all and no longer than ``seconds``: whatever a parser makes
    of a hostile file (offsets past the end, tables read again and again, a file that
    grows), it stays within those bounds or gets :class:`Refused`. Owns ``fd``."""

    def __init__(self, fd: int, what: str, length: int, budget: int, seconds: float) -> None:
        super().__init__()
        self._fd = fd
        self._what = what
        self._length = length
        self._budget = budget
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds
        self._pos = 0
        self._read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        if base + offset < 0:
            raise Refused(f"{self._what} sends the parser before its start")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if time.monotonic() > self._deadline:
            raise Refused(f"reading {self._what} took longer than {self._seconds:g} s")
        size = min(len(buffer), self._length - self._pos)
        if size <= 0:
            return 0
        if self._read + size > self._budget:
            raise Refused(f"reading {self._what} needed more than {self._budget >> 20} MiB")
        data = os.pread(self._fd, size, self._pos)
        buffer[: len(data)] = data
        self._pos += len(data)
        self._read += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()
