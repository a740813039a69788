"""Exact-mode frames are named from source like co_qualname names them."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from heapspy.symbolize import Symbolizer

SOURCE = textwrap.dedent(
    """\
    import json

    class Shipper:
        def buffer_line(self, line):
            self.pending.append(line)

        @staticmethod
        def helper():
            def inner():
                return [x for x in range(3)]
            return inner

    def top():
        f = lambda: bytearray(10)
        return f

    x = top()
    """
)


def _qualnames(path: Path) -> dict[int, str]:
    """The interpreter's own answer: the co_qualname of the code running each line."""
    code = compile(path.read_text(), str(path), "exec")
    names: dict[int, str] = {}

    def walk(co: object) -> None:
        for const in co.co_consts:  # type: ignore[attr-defined]
            if hasattr(const, "co_code"):
                for _, _, line in const.co_lines():
                    if line is not None:
                        names.setdefault(line, const.co_qualname)
                walk(const)

    walk(code)
    return names


def test_names_match_co_qualname(tmp_path: Path) -> None:
    path = tmp_path / "mod.py"
    path.write_text(SOURCE)
    sym = Symbolizer()
    assert sym.function(str(path), 5) == "Shipper.buffer_line"
    assert sym.function(str(path), 10) == "Shipper.helper.<locals>.inner"
    assert sym.function(str(path), 14) == "top.<locals>.<lambda>"
    assert sym.function(str(path), 17) == "<module>"
    if sys.version_info >= (3, 12):  # comprehensions are inlined from 3.12 on
        truth = _qualnames(path)
        for line in (5, 10, 15):
            assert sym.function(str(path), line) == truth[line]


def test_missing_source_falls_back_to_file_line(tmp_path: Path) -> None:
    assert Symbolizer().function(str(tmp_path / "gone.py"), 7) == f"{tmp_path}/gone.py:7"
    assert Symbolizer().function("<frozen abc>", 123) == "<frozen abc>:123"


def test_reads_through_target_root(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "m.py").write_text("def f():\n    return 1\n")
    assert Symbolizer(str(tmp_path)).function("/app/m.py", 2) == "f"
