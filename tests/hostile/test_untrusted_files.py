"""Files a target chooses and heapspy reads as root: source files, its libpython, dumps.

Each case runs the real CLI against a real target and checks the session ends with the
documented outcome, in bounded time and memory (heapspy's peak RSS under 200 MB).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
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
