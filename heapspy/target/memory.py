"""Read and write another process's memory with process_vm_readv/writev.

These calls need the same permission as ptrace attach (same uid and dumpable, or
CAP_SYS_PTRACE) but do not stop the target, which is why both injectors use them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from heapspy.errors import PermissionDenied, TargetExited


class IOVec(ctypes.Structure):
    """``struct iovec`` (<sys/uio.h>): process_vm_readv/writev and PTRACE_GETREGSET."""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_readv = _libc.process_vm_readv
_readv.restype = ctypes.c_ssize_t
_readv.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(IOVec),
    ctypes.c_ulong,
    ctypes.POINTER(IOVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_writev = _libc.process_vm_writev
_writev.restype = ctypes.c_ssize_t
_writev.argtypes = _readv.argtypes


def _raise_for(pid: int, err: int, what: str) -> None:
    if err == errno.ESRCH:
        raise TargetExited(f"Process {pid} exited while heapspy was {what}.")
    if err == errno.EPERM or err == errno.EACCES:
        raise PermissionDenied(
            f"Not allowed to access the memory of pid {pid}.",
            hint=(
                "Run heapspy as the same user as the target, or as root with "
                "CAP_SYS_PTRACE (e.g. `sudo heapspy ...`; in a container add "
                "--cap-add SYS_PTRACE)."
            ),
        )
    raise OSError(err, f"{what} pid {pid}: {os.strerror(err)}")


class RemoteMemory:
    """Typed access to one process's address space."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def read(self, addr: int, size: int) -> bytes:
        buf = ctypes.create_string_buffer(size)
        local = IOVec(ctypes.cast(buf, ctypes.c_void_p), size)
        remote = IOVec(addr, size)
        n = _readv(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if n < 0:
            _raise_for(self.pid, ctypes.get_errno(), "reading memory of")
        if n != size:
            raise OSError(errno.EFAULT, f"short read at {addr:#x} in pid {self.pid}")
        return buf.raw

    def write(self, addr: int, data: bytes) -> None:
        buf = ctypes.create_string_buffer(data, len(data))
        local = IOVec(ctypes.cast(buf, ctypes.c_void_p), len(data))
        remote = IOVec(addr, len(data))
        n = _writev(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if n < 0:
            _raise_for(self.pid, ctypes.get_errno(), "writing memory of")
        if n != len(data):
            raise OSError(errno.EFAULT, f"short write at {addr:#x} in pid {self.pid}")

    def u64(self, addr: int) -> int:
        return int(struct.unpack("<Q", self.read(addr, 8))[0])

    def i32(self, addr: int) -> int:
        return int(struct.unpack("<i", self.read(addr, 4))[0])

    def u32(self, addr: int) -> int:
        return int(struct.unpack("<I", self.read(addr, 4))[0])

    def u8(self, addr: int) -> int:
        return self.read(addr, 1)[0]

    def cstring(self, addr: int, limit: int = 256) -> bytes:
        data = self.read(addr, limit)
        return data.split(b"\0", 1)[0]
