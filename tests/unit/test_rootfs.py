"""Opening a file a target names: inside its root, regular, capped, readable by it.

A directory stands for the target's root; each case is checked with openat2 and with the
fallback for kernels without it (which refuses every symlink instead of resolving it).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from heapspy.target import rootfs
from heapspy.target.rootfs import Credentials, Refused, open_root, read_file_in_root

NOBODY = Credentials(uid=65534, gid=65534, groups=frozenset())


@pytest.fixture(params=["openat2", "fallback"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(rootfs, "_openat2_missing", request.param == "fallback")
    return str(request.param)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    top = tmp_path / "root"
    (top / "app").mkdir(parents=True)
    (top / "app" / "m.py").write_text("def f():\n    return 1\n")
    fd = os.open(top, os.O_PATH | os.O_DIRECTORY)
    yield top, fd
    os.close(fd)


def test_a_plain_file_is_read(root: tuple[Path, int], resolver: str) -> None:
    _, fd = root
    assert read_file_in_root(fd, "/app/m.py", None, 1 << 20).startswith(b"def f")


def test_nothing_leads_out_of_the_root(
    root: tuple[Path, int], resolver: str, tmp_path: Path
) -> None:
    top, fd = root
    outside = tmp_path / "outside.py"
    outside.write_text("secret = 1\n")
    (top / "app" / "abs.py").symlink_to(outside)  # absolute: the target's /tmp/...
    (top / "app" / "dir").symlink_to(tmp_path)
    for path in ("/../outside.py", "/app/../../outside.py", "/app/abs.py", "/app/dir/outside.py"):
        with pytest.raises(OSError):
            read_file_in_root(fd, path, None, 1 << 20)


def test_a_symlink_inside_the_root_is_followed_only_by_openat2(
    root: tuple[Path, int], resolver: str
) -> None:
    top, fd = root
    (top / "lib").symlink_to("/app")  # resolved inside the root by openat2
    if resolver == "openat2":
        assert read_file_in_root(fd, "/lib/m.py", None, 1 << 20).startswith(b"def f")
    else:
        with pytest.raises(Refused, match="symlink"):
            read_file_in_root(fd, "/lib/m.py", None, 1 << 20)
    (top / "app" / "last.py").symlink_to("m.py")  # a last step that is a link: never
    with pytest.raises(Refused, match="symlink"):
        read_file_in_root(fd, "/app/last.py", None, 1 << 20)


def test_only_regular_files_within_the_cap(root: tuple[Path, int], resolver: str) -> None:
    top, fd = root
    os.mkfifo(top / "app" / "fifo.py")
    with pytest.raises(Refused, match="not a regular file"):
        read_file_in_root(fd, "/app/fifo.py", None, 1 << 20)  # never opened: no hang
    with open(top / "app" / "big.py", "wb") as f:
        f.truncate(10 << 30)
    with pytest.raises(Refused, match="larger than"):
        read_file_in_root(fd, "/app/big.py", None, 4 << 20)


def test_the_targets_credentials_decide(root: tuple[Path, int], resolver: str) -> None:
    top, fd = root
    private = top / "app" / "m.py"
    private.chmod(0o600)
    with pytest.raises(Refused, match="not readable by uid 65534"):
        read_file_in_root(fd, "/app/m.py", NOBODY, 1 << 20)
    private.chmod(0o604)
    assert read_file_in_root(fd, "/app/m.py", NOBODY, 1 << 20).startswith(b"def f")
    owner = Credentials(uid=os.getuid(), gid=-1, groups=frozenset())
    private.chmod(0o400)
    assert owner.may(os.stat(private), 4)
    assert not NOBODY.may(os.stat(private), stat.S_IROTH)


def test_credentials_of_a_process_are_its_filesystem_ids() -> None:
    creds = Credentials.of_process(os.getpid())
    assert creds.uid == os.getuid() and creds.gid == os.getgid()
    assert creds.groups == frozenset(os.getgroups())


def test_open_root_is_the_processes_root() -> None:
    fd = open_root(os.getpid())
    try:
        assert os.stat("/", follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    finally:
        os.close(fd)
