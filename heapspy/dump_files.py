"""Reading a dump file back (report, diff, flame graph, the census over HTTP): a dump
may come from anywhere, so only a regular file of at most :data:`MAX_DUMP_FILE` bytes is
read (a FIFO or ``/dev/zero`` given by mistake or malice is refused, never read), and
:func:`gunzip_capped` stops a gzip bomb at :data:`MAX_PROFILE` bytes. Writing them is
``heapspy.dumps``.
"""

from __future__ import annotations

import os
import stat
import zlib
from pathlib import Path

from heapspy.errors import DumpError

# What a reader accepts. heapspy's own dumps are a few MB at most (100,000 stacks of 64
# frames: ~13 MB of protobuf); parsing protobuf costs up to ~25 bytes of memory per byte
# (upb, millions of empty messages), so 64 MiB keeps a crafted dump under ~1.6 GB.
MAX_DUMP_FILE = 64 << 20  # bytes on disk: a dump (compressed) or a sidecar
MAX_PROFILE = 64 << 20  # bytes of protobuf once decompressed

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_dump_file(path: Path, what: str = "dump") -> bytes:
    """The bytes of the regular file ``path`` (at most :data:`MAX_DUMP_FILE`).

    ``what`` names it in errors ("dump", "sidecar"). Raises FileNotFoundError when it
    does not exist (a missing sidecar is normal) and DumpError for anything else. The
    file is looked at through an ``O_PATH`` fd first, so a FIFO or a device is never
    opened, let alone read.
    """
    path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)  # FileNotFoundError goes up
    try:
        st = os.fstat(path_fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a file")
            raise DumpError(f"The {what} {path} is {kind}, not a regular file.")
        if st.st_size > MAX_DUMP_FILE:
            raise DumpError(
                f"The {what} {path} is {st.st_size >> 20} MiB; heapspy reads files of at "
                f"most {MAX_DUMP_FILE >> 20} MiB."
            )
        fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise DumpError(f"Cannot read the {what} {path}: {exc.strerror or exc}.") from exc
    finally:
        os.close(path_fd)
    try:
        chunks = []
        total = 0
        while chunk := os.read(fd, min(1 << 20, MAX_DUMP_FILE + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_DUMP_FILE:
                raise DumpError(
                    f"The {what} {path} grew beyond {MAX_DUMP_FILE >> 20} MiB while read."
                )
        return b"".join(chunks)
    except OSError as exc:
        raise DumpError(f"Cannot read the {what} {path}: {exc.strerror or exc}.") from exc
    finally:
        os.close(fd)


class TooLarge(ValueError):
    """Decompressed data beyond the cap."""


def gunzip_capped(data: bytes, cap: int = MAX_PROFILE) -> bytes:
    """``gzip.decompress`` (every member) that stops at ``cap`` output bytes: raises
    TooLarge beyond it, zlib.error or EOFError for a damaged or truncated stream."""
    out: list[bytes] = []
    total = 0
    rest = data
    while rest:
        if not rest.startswith(b"\x1f\x8b"):
            raise zlib.error("trailing data after the last gzip member")
        member = zlib.decompressobj(wbits=31)
        pending = rest
        while not member.eof:
            # 1 MiB at a time (never 0, which means unlimited): zlib grows one buffer
            # for a larger request, copying it as it goes
            limit = min(1 << 20, cap + 1 - total)
            chunk = member.decompress(pending, limit)
            out.append(chunk)
            total += len(chunk)
            if total > cap:
                raise TooLarge(f"it decompresses to more than {cap >> 20} MiB")
            pending = member.unconsumed_tail
            if not pending and len(chunk) < limit:
                break  # all input used and nothing held back: the stream is cut short
        if not member.eof:
            raise EOFError("the gzip stream ends before its end-of-stream marker")
        rest = member.unused_data
    return b"".join(out)
