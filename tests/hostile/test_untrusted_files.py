"""Files a target chooses and heapspy reads as root: source files, its libpython, dumps.

Each case runs the real CLI against a real target and checks the session ends with the
documented outcome, in bounded time and memory (heapspy's peak RSS under 200 MB).
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from interpreters import Interpreter, interpreter_params
from support import Target
from untrusted_user import as_untrusted, run_heapspy_measured, untrusted_ids

from heapspy.pprof import read_profile

Spawn = Callable[..., Target]
RSS_BOUND = 200 << 20
SOURCE = "class Box:\n    def alloc_{i}(keep):\n        keep.append(bytearray(4096))\n"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play both sides")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory both root and the untrusted user can use (pytest's tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="heapspy-hostile-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _hostile_files(d: Path) -> tuple[list[str], dict[str, bool]]:
    """The files the target names: (paths in order, whether each may be named for a
    root target). Index 0 is a control that must be named."""
    control = d / "control.py"
    control.write_text(SOURCE.format(i=0))
    control.chmod(0o644)
    fifo = d / "fifo.py"
    os.mkfifo(fifo)
    sparse = d / "sparse.py"
    with open(sparse, "wb") as f:
        f.truncate(10 << 30)
    private = d / "private"
    private.mkdir(mode=0o700)
    secret = private / "secret.py"
    secret.write_text(SOURCE.format(i=4))
    secret.chmod(0o600)
    link = d / "link.py"
    link.symlink_to(secret)
    rootonly = d / "rootonly.py"
    rootonly.write_text(SOURCE.format(i=5))
    rootonly.chmod(0o600)
    paths = [str(control), str(fifo), "/dev/zero", str(sparse), str(link), str(rootonly)]
    # a root target may read its own root-only file; nothing else may ever be named
    return paths, {str(control): True, str(rootonly): True}


def _names_by_file(dump_dir: Path) -> dict[str, set[str]]:
    (dump,) = dump_dir.glob("*-final.pb.gz")
    names: dict[str, set[str]] = {}
    for sample in read_profile(dump).samples:
        for frame in sample.stack:
            names.setdefault(frame.filename, set()).add(frame.function)
    return names


def _attach_and_check(
    target: Target, paths: list[str], may_name: dict[str, bool], dump_dir: Path, *args: str
) -> None:
    out = run_heapspy_measured(
        "attach",
        str(target.pid),
        "--duration",
        "2s",
        "--dump-dir",
        str(dump_dir),
        *args,
        timeout=90,
    )
    assert not out.timed_out, f"heapspy hung (killed after {out.seconds:.0f} s)"
    assert out.returncode == 0, out.stderr
    assert out.max_rss < RSS_BOUND, f"heapspy peaked at {out.max_rss >> 20} MiB"
    assert target.alive()
    names = _names_by_file(dump_dir)
    for i, path in enumerate(paths):
        assert path in names, f"no frame of {path} in the dump: {sorted(names)}"
        named = f"Box.alloc_{i}" in names[path]
        assert named == may_name.get(path, False), (path, names[path])


def _runnable_by_others(params: list[Any]) -> list[Any]:
    """pyenv's interpreters live under /root (0700): another user cannot run them."""
    return [p for p in params if not p.values[0].argv[0].startswith("/root/")]


@needs_root
@pytest.mark.privileged
@pytest.mark.parametrize("interp", _runnable_by_others(interpreter_params(min_version=(3, 11))))
def test_exact_mode_names_no_hostile_file(
    interp: Interpreter, spawn: Spawn, shared: Path, tmp_path: Path
) -> None:
    paths, _ = _hostile_files(shared)
    target = spawn(
        interp, "named_files.py", *paths, prefix=as_untrusted(), cwd=shared, probe_dir=shared
    )
    with open(f"/proc/{target.pid}/status") as f:
        assert f"Uid:\t{untrusted_ids()[0]}\t" in f.read()
    # the target's own credentials cannot read rootonly.py: it stays unnamed too
    _attach_and_check(target, paths, {paths[0]: True}, tmp_path / "d", "--rate", "1")


@needs_root
@pytest.mark.parametrize("interp", interpreter_params(max_version=(3, 10)))
def test_qualified_names_before_311_read_no_hostile_file(
    interp: Interpreter, spawn: Spawn, shared: Path, tmp_path: Path
) -> None:
    # pyenv's 3.8-3.10 run only as root here: what is checked is the kind of file
    paths, may_name = _hostile_files(shared)
    target = spawn(interp, "named_files.py", *paths, cwd=shared)
    _attach_and_check(target, paths, may_name, tmp_path / "d", "--rate", "4KiB")
    assert stat.S_ISFIFO(os.stat(paths[1]).st_mode)


# A tiny real shared library every Debian has; dlopen reads only its program headers
# and dynamic section, so the section headers and notes can lie.
SMALL_LIBRARY = Path("/usr/lib/x86_64-linux-gnu/libutil.so.1")


def _craft_library(dst: Path, how: str) -> None:
    """A loadable copy of SMALL_LIBRARY whose tables make a parser work without end."""
    from elftools.elf.elffile import ELFFile

    shutil.copy(SMALL_LIBRARY, dst)
    with open(SMALL_LIBRARY, "rb") as f:
        elf = ELFFile(f)
        shoff, shentsize = elf["e_shoff"], elf["e_shentsize"]
        phoff, phentsize = elf["e_phoff"], elf["e_phentsize"]
        names = [s.name for s in elf.iter_sections()]
        types = [s["p_type"] for s in elf.iter_segments()]
    dynsym = shoff + names.index(".dynsym") * shentsize
    size = dst.stat().st_size
    with open(dst, "r+b") as f:
        if how == "4M-dynsym":  # 4,000,000 symbols of zeros in a sparse tail
            start = (size + 4095) & ~4095
            f.seek(dynsym + 24)  # sh_offset, sh_size
            f.write(struct.pack("<QQ", start, 4_000_000 * 24))
            f.truncate(start + 4_000_000 * 24)
        elif how == "dynsym-at-2**64":  # pyelftools' seek raised OverflowError
            f.seek(dynsym + 24)
            f.write(struct.pack("<Q", (1 << 64) - 4096))
        elif how == "1GiB-notes":  # ~90M empty notes to walk
            note = phoff + types.index("PT_NOTE") * phentsize
            f.seek(note + 32)  # p_filesz, p_memsz
            f.write(struct.pack("<QQ", 1 << 30, 1 << 30))
            f.truncate(1 << 30)


@pytest.mark.skipif(not SMALL_LIBRARY.exists(), reason=f"{SMALL_LIBRARY} is not installed")
@pytest.mark.parametrize("how", ["4M-dynsym", "dynsym-at-2**64", "1GiB-notes"])
def test_crafted_libpython_is_refused_with_exit_6(
    how: str, spawn: Spawn, shared: Path, tmp_path: Path
) -> None:
    (interp,) = [p.values[0] for p in interpreter_params() if "debian-static" in p.id]
    # Debian's 3.11 links libpython statically: the crafted library is the only
    # libpython* mapped, so it is the image heapspy reads
    library = shared / "libpython3.11.so.1.0"
    _craft_library(library, how)
    target = spawn(interp, "loads_library.py", str(library))
    out = run_heapspy_measured("attach", str(target.pid), "--dump-dir", str(tmp_path), timeout=60)
    assert not out.timed_out, f"heapspy still parsing after {out.seconds:.0f} s"
    assert out.returncode == 6, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert str(library) in line, line
    assert out.max_rss < RSS_BOUND, f"heapspy peaked at {out.max_rss >> 20} MiB"
    assert target.alive()


def _gzip_of(chunks: Iterator[bytes]) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # a gzip stream
    out = [packer.compress(chunk) for chunk in chunks]
    return b"".join([*out, packer.flush()])


def _zeros(mib: int) -> Iterator[bytes]:
    block = bytes(1 << 20)
    for _ in range(mib):
        yield block


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("gzip-bomb", "decompresses to more than 64 MiB"),  # 160 MiB of zeros
        ("empty-samples", "holds more than 2,000,000 messages"),  # 8M samples, 16 MiB
        ("fifo", "is a FIFO, not a regular file"),
        ("dev-zero", "is a character device, not a regular file"),
    ],
)
@pytest.mark.parametrize("command", ["report", "flamegraph"])
def test_hostile_dump_files_are_refused_with_exit_16(
    case: str, expected: str, command: str, tmp_path: Path
) -> None:
    path = tmp_path / "heap.pb.gz"
    if case == "gzip-bomb":
        path.write_bytes(_gzip_of(_zeros(160)))  # 160 KB; before: ~360 MB of RSS
    elif case == "empty-samples":
        path.write_bytes(_gzip_of(iter([b"\x12\x00" * (8 << 20)])))
    elif case == "fifo":
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    args = [command, str(path)]
    if command == "flamegraph":
        args += ["-o", str(tmp_path / "flame.html")]
    out = run_heapspy_measured(*args, timeout=60)
    assert not out.timed_out, f"heapspy {command} hung (killed after {out.seconds:.0f} s)"
    assert out.max_rss < RSS_BOUND, f"heapspy peaked at {out.max_rss >> 20} MiB"
    assert out.returncode == 16, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert expected in line and str(path) in line, line
