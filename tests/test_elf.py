"""Symbols of a target's libpython, looked up with the ELF cache cold, within the read
budget of a hostile file: the lookup reads each table once, where pyelftools' own read
symbol by symbol (3.8's libpython needed over 256 MiB of reads, and attach was refused
on a machine whose cache had never seen it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from interpreters import Interpreter, interpreter_params

from heapspy.target.elf import ElfImage
from heapspy.target.maps import read_maps

NAMES = ("Py_Version", "_PyRuntime", "PyEval_SaveThread", "PyObject_Malloc", "hs_no_such")


def _reference(path: str, name: str) -> int | None:
    """pyelftools' answer, read without any bound (a trusted file, in a test)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for table_name in (".dynsym", ".symtab"):
            table = elf.get_section_by_name(table_name)
            for sym in (table.get_symbol_by_name(name) or []) if table else []:
                if int(sym["st_value"]) != 0 and sym["st_shndx"] != "SHN_UNDEF":
                    return int(sym["st_value"])
    return None


@pytest.mark.parametrize("interp", interpreter_params())
def test_libpython_symbols_with_a_cold_cache(
    interp: Interpreter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing cached
    code = "import sys; print('ready', flush=True); sys.stdin.read()"
    with subprocess.Popen(interp.command("-c", code), stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            maps = read_maps(proc.pid)
            libs = [m.path for m in maps if os.path.basename(m.path).startswith("libpython3")]
            if not libs:
                pytest.skip(f"{interp} has no shared libpython")
            image = ElfImage(proc.pid, maps, libs[0])
            got = {name: image.symbol(name) for name in NAMES}
            bias = image.bias
        finally:
            proc.kill()
    want = {name: _reference(libs[0], name) for name in NAMES}
    assert got == {n: None if a is None else a + bias for n, a in want.items()}
    assert got["_PyRuntime"] is not None and got["hs_no_such"] is None
    assert (tmp_path / "heapspy" / "elf").is_dir()  # parsed, then cached
