"""The CPython interpreters this machine offers as attach targets, for every test module.

    from interpreters import interpreter_params, py314

    @pytest.mark.parametrize("interp", interpreter_params())
    def test_something(interp: Interpreter) -> None:
        proc = subprocess.Popen(interp.command("-c", "..."))

Found here: pyenv's 3.8-3.13 (shared libpython), Debian's static, stripped, non-PIE
``/usr/bin/python3.11``, and the CPython 3.14 that ``tools/provision.py`` unpacks from
Debian unstable (run through unstable's loader: ``/proc/PID/exe`` is the loader, the maps
show ``.../usr/bin/python3.14``). ``old_interpreters()`` gives pyenv's 2.7/3.6/3.7 for
refusal tests.

When the provisioned 3.14 is missing or does not start, ``interpreter_params()`` still
yields a 3.14 entry, skipped with the reason, so a broken provisioning shows up in the
test report instead of silently shrinking the matrix. ``HEAPSPY_INTERPRETERS`` (comma
separated labels or versions, e.g. ``3.11,3.14-debian``) narrows the selection.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SUPPORTED = ((3, 8), (3, 14))
_VERSION_DIR = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


@dataclass(frozen=True)
class Interpreter:
    version: tuple[int, int]
    argv: tuple[str, ...]  # command prefix that runs it
    label: str  # e.g. "3.12-pyenv", "3.11-debian-static", "3.14-debian"
    static: bool = False  # libpython linked into the executable (no libpython*.so mapped)

    def command(self, *args: str) -> list[str]:
        return [*self.argv, *args]

    @property
    def version_text(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    def __str__(self) -> str:
        return self.label


def pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def py314_cache_dir() -> Path:
    """Where tools/provision.py puts CPython 3.14 (keep in step with it)."""
    env = os.environ.get("HEAPSPY_CACHE_DIR")
    return Path(env).resolve() if env else REPO / ".cache" / "py314"


def py314_wrapper() -> Path:
    return py314_cache_dir() / "bin" / "python3.14"


def _pyenv(versions: set[tuple[int, int]]) -> list[Interpreter]:
    found: dict[tuple[int, int], tuple[tuple[int, int, int], Interpreter]] = {}
    root = pyenv_root() / "versions"
    if not root.is_dir():
        return []
    for entry in root.iterdir():
        m = _VERSION_DIR.match(entry.name)
        if not m:
            continue
        full = (int(m[1]), int(m[2]), int(m[3]))
        minor = full[:2]
        exe = entry / "bin" / f"python{minor[0]}.{minor[1]}"
        if minor not in versions or not os.access(exe, os.X_OK):
            continue
        interp = Interpreter(minor, (str(exe),), f"{minor[0]}.{minor[1]}-pyenv")
        if minor not in found or full > found[minor][0]:  # newest micro per minor
            found[minor] = (full, interp)
    return [found[v][1] for v in sorted(found)]


def _run_version(argv: tuple[str, ...]) -> tuple[tuple[int, int] | None, str]:
    try:
        proc = subprocess.run(
            [*argv, "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    if proc.returncode != 0:
        return None, (proc.stderr or proc.stdout).strip()[-500:]
    major, minor = proc.stdout.strip().split(".")
    return (int(major), int(minor)), ""


@functools.cache
def py314_problem() -> str | None:
    """Why the provisioned CPython 3.14 cannot be used, or None when it runs."""
    wrapper = py314_wrapper()
    if not wrapper.exists():
        return f"CPython 3.14 is not provisioned: {wrapper} is missing (run `make provision`)"
    version, error = _run_version((str(wrapper),))
    if version is None:
        return f"the provisioned CPython 3.14 ({wrapper}) does not start: {error}"
    if version != (3, 14):
        return f"{wrapper} runs Python {version[0]}.{version[1]}, not 3.14"
    return None


def _provisioned_314() -> Interpreter:
    return Interpreter((3, 14), (str(py314_wrapper()),), "3.14-debian", static=True)


def _selected(interp: Interpreter) -> bool:
    wanted = os.environ.get("HEAPSPY_INTERPRETERS", "").strip()
    if not wanted:
        return True
    return any(w.strip() in (interp.label, interp.version_text) for w in wanted.split(","))


@functools.cache
def _all_interpreters() -> tuple[Interpreter, ...]:
    lo, hi = SUPPORTED
    found = _pyenv({(3, minor) for minor in range(lo[1], hi[1] + 1)})
    debian = Path("/usr/bin/python3.11")
    if os.access(debian, os.X_OK):
        found.append(Interpreter((3, 11), (str(debian),), "3.11-debian-static", static=True))
    if py314_problem() is None:
        found.append(_provisioned_314())
    found.sort(key=lambda i: (i.version, i.label))
    return tuple(found)


def find_interpreters() -> list[Interpreter]:
    """Every supported interpreter that runs here (honouring HEAPSPY_INTERPRETERS)."""
    return [i for i in _all_interpreters() if _selected(i)]


def old_interpreters() -> list[Interpreter]:
    """pyenv's 2.7/3.6/3.7: interpreters heapspy must refuse."""
    return [i for i in _pyenv({(2, 7), (3, 6), (3, 7)}) if _selected(i)]


def _marks(interp: Interpreter) -> list[Any]:
    return [pytest.mark.py314] if interp.version >= (3, 14) else []


def interpreter_params(
    min_version: tuple[int, int] = SUPPORTED[0],
    max_version: tuple[int, int] = (99, 0),
) -> list[Any]:
    """``pytest.param`` per interpreter in [min_version, max_version], id = label.

    3.14 entries carry the ``py314`` mark; a 3.14 that should be there but cannot run is
    still listed, skipped with the reason.
    """
    params = [
        pytest.param(i, id=i.label, marks=_marks(i))
        for i in find_interpreters()
        if min_version <= i.version <= max_version
    ]
    placeholder = _provisioned_314()
    problem = py314_problem()
    if problem and min_version <= (3, 14) <= max_version and _selected(placeholder):
        params.append(
            pytest.param(
                placeholder,
                id=placeholder.label,
                marks=[pytest.mark.py314, pytest.mark.skip(reason=problem)],
            )
        )
    return params


def old_interpreter_params() -> list[Any]:
    return [pytest.param(i, id=i.label) for i in old_interpreters()]


def py314() -> Interpreter:
    """The provisioned CPython 3.14, or skip the calling test saying why it is unusable."""
    problem = py314_problem()
    if problem:
        pytest.skip(problem)
    return _provisioned_314()


# The newest NumPy with a wheel for each interpreter (the handler API needs >= 1.22).
NUMPY_FOR = {(3, 8): "1.24.4", (3, 9): "2.0.2", (3, 10): "2.2.6"}
NUMPY_LATEST = "2.4.6"


def install_numpy(version: tuple[int, int], cache: Path | None = None) -> tuple[Path | None, str]:
    """A folder holding the NumPy wheel for that CPython (installed with pip on first use),
    or None and why not. Shared by the tests and the accuracy benchmark."""
    numpy = NUMPY_FOR.get(version, NUMPY_LATEST)
    tag = f"cp{version[0]}{version[1]}"
    site = (cache or REPO / ".cache") / f"numpy-{numpy}-{tag}"
    if (site / "numpy" / "__init__.py").exists():
        return site, ""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--target", str(site), "--only-binary=:all:", "--python-version",
         f"{version[0]}.{version[1]}", f"numpy=={numpy}"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        tail = " ".join((proc.stderr + proc.stdout).strip().splitlines()[-2:])
        return None, f"no numpy {numpy} wheel for {tag}: {tail}"
    return site, ""


def numpy_site(interp: Interpreter) -> Path:
    """install_numpy for a test: skips it (saying why) when NumPy cannot be installed."""
    site, why = install_numpy(interp.version)
    if site is None:
        pytest.skip(why)
    return site
