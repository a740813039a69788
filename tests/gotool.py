"""Run the real ``go tool pprof`` on our dumps: the reader they must satisfy.

Tests import this as ``from gotool import ...`` (tests/ has no ``__init__.py``, so
pytest's default import mode puts tests/ on ``sys.path``).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

# Where Debian's golang-go and the upstream tarball put the binary, for when go is
# installed but not on PATH (CI runs with a minimal environment).
_CANDIDATES = ("/usr/lib/go/bin/go", "/usr/local/go/bin/go", "/usr/bin/go")


@functools.lru_cache(maxsize=1)
def _find_go() -> tuple[str | None, str]:
    """The go binary that can run pprof, or None and what the probe found."""
    candidates = [path for path in (shutil.which("go"), *_CANDIDATES) if path]
    tried = []
    for path in dict.fromkeys(candidates):
        if not os.access(path, os.X_OK):
            tried.append(f"{path}: not executable")
            continue
        try:
            result = subprocess.run(
                [path, "tool", "-n", "pprof"],
                capture_output=True,
                text=True,
                timeout=30,
                env=_env(),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{path}: {exc}")
            continue
        if result.returncode == 0:
            return path, ""
        tried.append(f"{path}: 'go tool -n pprof' failed: {result.stderr.strip()}")
    return None, "; ".join(tried) or "no go on PATH nor in " + ", ".join(_CANDIDATES)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # go refuses to run without a cache/home directory; CI may have neither set.
    env.setdefault("HOME", "/tmp")
    env.setdefault("GOCACHE", "/tmp/heapspy-test-gocache")
    return env


def require_go() -> str:
    """The go binary, or skip the test saying why (only after a real probe failed)."""
    go, why = _find_go()
    if go is None:
        pytest.skip(f"go tool pprof unavailable (install golang-go): {why}")
    return go


def pprof(*args: str | Path, cwd: Path | None = None) -> str:
    """Run ``go tool pprof ARGS`` and return stdout; fail the test on any error."""
    go = require_go()
    env = _env()
    if cwd is not None:
        env["PPROF_TMPDIR"] = str(cwd)
    result = subprocess.run(
        [go, "tool", "pprof", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )
    assert result.returncode == 0, f"pprof {args} failed:\n{result.stderr}"
    # pprof prints warnings on stderr; a dump we write correctly should cause none.
    assert result.stderr.strip() == "", f"pprof {args} warned:\n{result.stderr}"
    return result.stdout


@dataclass(frozen=True)
class TopRow:
    flat: int
    flat_pct: float
    cum: int
    cum_pct: float
    name: str


_PCT = r"-?[\d.]+(?:e[-+]?\d+)?"  # pprof writes tiny shares as 8.5e-05%
_ROW = re.compile(
    rf"^\s*(?P<flat>-?\d+)B?\s+(?P<flat_pct>{_PCT})%\s+(?P<sum_pct>{_PCT})%"
    rf"\s+(?P<cum>-?\d+)B?\s+(?P<cum_pct>{_PCT})%\s+(?P<name>.+?)\s*$"
)


def top(dump: Path, *options: str, cwd: Path | None = None) -> list[TopRow]:
    """Rows of ``pprof -top -unit=B -nodefraction=0`` (exact bytes, nothing dropped)."""
    out = pprof("-top", "-unit=B", "-nodefraction=0", "-edgefraction=0", *options, dump, cwd=cwd)
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["flat", "flat%"])
    rows = []
    for line in lines[header + 1 :]:
        match = _ROW.match(line)
        assert match, f"unexpected pprof -top line: {line!r}"
        rows.append(
            TopRow(
                flat=int(match["flat"]),
                flat_pct=float(match["flat_pct"]),
                cum=int(match["cum"]),
                cum_pct=float(match["cum_pct"]),
                name=match["name"],
            )
        )
    return rows
