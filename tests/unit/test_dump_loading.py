"""The one dump loader: capped gzip, regular files only."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from heapspy.dump_files import TooLarge, gunzip_capped, read_dump_file
from heapspy.errors import DumpError


def test_gunzip_capped_is_gzip_decompress_within_the_cap() -> None:
    members = gzip.compress(b"a" * 1000) + gzip.compress(b"b" * 24)  # two members
    assert gunzip_capped(members, 1024) == gzip.decompress(members)
    with pytest.raises(TooLarge, match="more than"):
        gunzip_capped(members, 1023)
    with pytest.raises(EOFError):
        gunzip_capped(gzip.compress(b"x" * 100)[:-12], 1024)  # truncated


def test_a_bomb_stops_at_the_cap_without_decompressing_it_all() -> None:
    bomb = gzip.compress(bytes(64 << 20), compresslevel=9)  # 64 MiB in ~64 KB
    with pytest.raises(TooLarge):
        gunzip_capped(bomb, 1 << 20)


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    fifo = tmp_path / "x.pb.gz"
    os.mkfifo(fifo)
    with pytest.raises(DumpError, match="is a FIFO, not a regular file"):
        read_dump_file(fifo)  # would block forever if opened for reading
    with pytest.raises(DumpError, match="is a directory"):
        read_dump_file(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_dump_file(tmp_path / "absent")
    (tmp_path / "ok.json").write_text("{}")
    assert read_dump_file(tmp_path / "ok.json", "sidecar") == b"{}"
