"""Text from a target never reaches a terminal raw: a real agent in a real target whose
function's name is an OSC title change and a screen clear, through `heapspy attach`'s
end-of-session table and `heapspy report`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from support import Target, run_heapspy

from heapspy.pprof import read_profile

EVIL = "evil\x1b]0;pwned\x07\x1b[2Jname"
ESCAPED = "evil\\x1b]0;pwned\\x07\\x1b[2Jname"


def test_a_function_name_with_escapes_is_printed_escaped(
    spawn: Callable[..., Target], tmp_path: Path
) -> None:
    target = spawn(None, "escape_names.py")
    dumps = tmp_path / "dumps"
    out = run_heapspy(
        "attach", str(target.pid), "--duration", "3s", "--rate", "64KiB",
        "--dump-dir", str(dumps), timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (final,) = sorted(dumps.glob("*-final.pb.gz"))
    names = {f.function for s in read_profile(final).samples for f in s.stack}
    assert any(EVIL in name for name in names), names  # the dump keeps the real name
    report = run_heapspy("report", str(final))
    assert report.returncode == 0, report.stderr
    for text in (out.stdout, out.stderr, report.stdout):
        assert "\x1b" not in text and "\x07" not in text, repr(text)
    assert ESCAPED in out.stdout  # the end-of-session table
    assert ESCAPED in report.stdout
