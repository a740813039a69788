"""Names for frames that pprof readers would otherwise show as ``<unknown>``.

CPython names module-level code ``<module>`` and anonymous code ``<listcomp>``,
``<dictcomp>``, ``<setcomp>``, ``<genexpr>``, ``<lambda>``. ``go tool pprof`` takes any
name that contains ``<``, ``>``, ``[`` or ``]`` (or ``::``) but no ``.<`` for demangled
C++ and deletes the bracketed text as template arguments: ``<module>`` becomes the empty
name it prints as ``<unknown>``, and every module's code and every unqualified
comprehension collapse into that one row. Python's qualified names (3.11+
``co_qualname``: ``fetch_report.<locals>.<listcomp>``) contain ``.<``, which pprof leaves
alone (it reads them as Java's ``Class.<init>``), so they are kept as they are.

The rules, applied when a dump is written (``heapspy.pprof``), so that every reader of the
file (pprof, heapspy's report, diff and flame graph) sees the same names:

- ``<module>`` is named after its module, from the file name: ``/srv/leaky_worker.py``
  gives ``leaky_worker``, ``/srv/myapp/__init__.py`` gives ``myapp``,
  ``<frozen importlib._bootstrap>`` gives ``importlib._bootstrap``. The pprof function
  stays distinct per file (pprof keys functions by name *and* file name).
- An unqualified list, dict or set comprehension (3.8-3.10, whose code objects have no
  ``co_qualname``) is always run by the scope that defines it, so the caller frame in the
  same file names it the way 3.11's ``co_qualname`` does: ``fetch_report.<locals>.<listcomp>``
  (``leaky_worker.<listcomp>`` at module level). 3.12+ inlines these comprehensions: their
  allocations are the enclosing function's own, with no frame to name.
- Any other unqualified ``<name>`` (a generator expression or lambda with no qualified
  name, module-level anonymous code on 3.11+) gets its module as prefix:
  ``leaky_worker.<genexpr>``. A generator runs wherever it is consumed and a
  lambda wherever it is called, so the caller is no evidence of where they were defined.
  Only the source is: the symbolizer already names lambdas from it, and ``from_source``
  gives whoever holds the symbolizer (the aggregator) 3.11's name for the others.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath

from heapspy.model import Frame, Stack

MODULE = "<module>"
_Interned = dict[tuple[str, str, int], Frame]
# Comprehensions whose code object is called at once by the scope that defines it.
_RUN_IN_PLACE = frozenset({"<listcomp>", "<dictcomp>", "<setcomp>"})
_SOURCE_SUFFIXES = (".py", ".pyw", ".pyc", ".pyo")
# CPython's names for code without a name of its own: <lambda>, <genexpr>, ... Other
# names are left as they are, even ones pprof would cut: they are not Python's, and
# heapspy's own readers show them whole.
_ANONYMOUS = re.compile(r"<\w+>")
# A qualified name as the symbolizer builds one: dotted identifiers and <locals>/<lambda>.
_QUALNAME = re.compile(r"(?:\w+|<\w+>)(?:\.(?:\w+|<\w+>))*")


def module_name(filename: str) -> str:
    """The module a file holds, as far as its name tells (no file is opened)."""
    if filename.startswith("<") and filename.endswith(">"):
        return _safe(filename[1:-1].removeprefix("frozen ").strip()) or "module"
    path = PurePosixPath(filename)
    stem = path.name
    for suffix in _SOURCE_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    parent = path.parent.name
    if stem == "__init__" and parent:
        return parent
    if stem == "__main__" and parent:
        return f"{parent}.__main__"
    return _safe(stem) or "module"


def _safe(text: str) -> str:
    # a file name may itself hold brackets; they must not reintroduce the problem
    return text.translate(_NO_BRACKETS)


_NO_BRACKETS = str.maketrans({"<": "", ">": "", "[": "", "]": "", "(": "", ")": ""})


def from_source(code_name: str, enclosing: str) -> str | None:
    """The qualified name 3.11 would give anonymous code on 3.8-3.10, from its source.

    ``code_name`` is the frame's ``co_name`` (``<genexpr>``), ``enclosing`` what the
    symbolizer finds at the frame's line: the innermost function around it
    (``fetch_report``). For the aggregator, which holds the symbolizer; the writer cannot
    read sources. None when the source adds nothing: code that is not anonymous,
    module-level code, or no function found (the symbolizer's ``file:line`` fallback).
    """
    if code_name == MODULE or not _ANONYMOUS.fullmatch(code_name):
        return None
    if enclosing == MODULE or not _QUALNAME.fullmatch(enclosing):
        return None
    if enclosing.endswith("." + code_name):
        return enclosing  # a lambda: the symbolizer indexes lambdas itself
    return f"{enclosing}.<locals>.{code_name}"


def display_name(frame: Frame, caller: Frame | None, caller_name: str | None) -> str:
    """The name pprof should show for ``frame``, called from ``caller`` (or the root).

    ``caller_name`` is the caller's own display name (already fixed by this function).
    """
    name = frame.function
    if name == MODULE:
        return module_name(frame.filename)
    if name in _RUN_IN_PLACE and caller is not None and caller.filename == frame.filename:
        assert caller_name is not None
        if caller.function == MODULE:
            return f"{caller_name}.{name}"
        return f"{caller_name}.<locals>.{name}"
    if _ANONYMOUS.fullmatch(name):
        return f"{module_name(frame.filename)}.{name}"
    return name


def display_stack(stack: Stack, interned: _Interned) -> Stack:
    """``stack`` (root first) with every frame named for pprof.

    ``interned`` maps ``(name, filename, line)`` to one shared Frame, so that renamed
    frames keep the writer's identity-based interning fast.
    """
    out: list[Frame] = []
    caller: Frame | None = None
    caller_name: str | None = None
    for frame in stack:
        name = display_name(frame, caller, caller_name)
        out.append(frame if name == frame.function else _intern(interned, frame, name))
        caller, caller_name = frame, name
    return tuple(out)


def _intern(interned: _Interned, frame: Frame, name: str) -> Frame:
    key = (name, frame.filename, frame.line)
    shown = interned.get(key)
    if shown is None:
        shown = interned[key] = Frame(*key)
    return shown


class Renamer:
    """Gives each stack its pprof names (see ``renamer``)."""

    def __init__(self, fixed: dict[int, Frame], contextual: set[int], interned: _Interned):
        self._fixed = fixed
        self._swap = fixed.get
        self._contextual = contextual
        self._interned = interned

    def __call__(self, stack: Stack) -> Stack:
        ids = tuple(map(id, stack))
        if self._contextual and not self._contextual.isdisjoint(ids):
            return display_stack(stack, self._interned)
        if self._fixed.keys().isdisjoint(ids):
            return stack
        return tuple(map(self._swap, ids, stack))

    def distinct(self, before: dict[int, Frame]) -> dict[int, Frame]:
        """The distinct frames (by identity) of the renamed stacks, from those before."""
        gone = self._fixed.keys() | self._contextual
        after = {key: frame for key, frame in before.items() if key not in gone}
        after.update((id(frame), frame) for frame in self._interned.values())
        return after


def renamer(distinct: Iterable[Frame]) -> Renamer | None:
    """A function giving each stack its pprof names, or None when no frame needs one.

    Nearly every stack holds a ``<module>`` frame, so this is on the writer's hot path:
    a frame whose new name does not depend on its caller is swapped by a dict lookup in
    C; only stacks holding an unqualified comprehension are walked frame by frame.
    """
    interned: _Interned = {}
    fixed: dict[int, Frame] = {}
    contextual: set[int] = set()
    for frame in distinct:
        if frame.function in _RUN_IN_PLACE:
            contextual.add(id(frame))
            continue
        name = display_name(frame, None, None)
        if name != frame.function:
            fixed[id(frame)] = _intern(interned, frame, name)
    if not fixed and not contextual:
        return None
    return Renamer(fixed, contextual, interned)
