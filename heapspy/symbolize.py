"""Name frames that carry only file and line (exact mode) from the source, heapspy-side.

tracemalloc records ``(filename, lineno)``; users want ``Shipper.buffer_line``. We parse
the file as the target sees it (``/proc/PID/root``) and take the innermost function
enclosing the line, qualified like ``co_qualname`` so that both modes agree. Never done
in the target: parsing is far too costly to inflict on it.
"""

from __future__ import annotations

import ast
import bisect
from functools import lru_cache

_Scope = tuple[int, int, str]  # first line, last line, qualified name


def _scopes(tree: ast.AST) -> list[_Scope]:
    out: list[_Scope] = []

    def visit(node: ast.AST, prefix: str, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                end = getattr(child, "end_lineno", None) or child.lineno
                if not isinstance(child, ast.ClassDef):
                    out.append((first, end, name))
                    visit(child, f"{name}.<locals>.", True)
                else:
                    visit(child, f"{name}.", False)
            elif isinstance(child, ast.Lambda):
                end = getattr(child, "end_lineno", None) or child.lineno
                out.append((child.lineno, end, f"{prefix}<lambda>"))
                visit(child, f"{prefix}<lambda>.<locals>.", True)
            else:
                visit(child, prefix, in_function)

    visit(tree, "", False)
    return out


class SourceIndex:
    """Innermost-scope lookup for one file."""

    def __init__(self, scopes: list[_Scope]) -> None:
        # sorted by start, then by reverse end so that outer scopes come first
        self._scopes = sorted(scopes, key=lambda s: (s[0], -s[1]))
        self._starts = [s[0] for s in self._scopes]

    def function_at(self, line: int) -> str:
        i = bisect.bisect_right(self._starts, line)
        best: _Scope | None = None
        for first, last, name in self._scopes[:i]:
            if first <= line <= last and (best is None or first >= best[0]):
                best = (first, last, name)
        return best[2] if best else "<module>"


class Symbolizer:
    """Resolves ``(file, line)`` to a function name for one target's filesystem."""

    def __init__(self, root: str = "/") -> None:
        self.root = root.rstrip("/")
        self._index = lru_cache(maxsize=4096)(self._load)

    def _load(self, filename: str) -> SourceIndex | None:
        if not filename.startswith("/"):
            return None
        try:
            with open(self.root + filename, "rb") as f:
                source = f.read()
            return SourceIndex(_scopes(ast.parse(source)))
        except (OSError, SyntaxError, ValueError, RecursionError):
            return None

    def function(self, filename: str, line: int) -> str:
        index = self._index(filename)
        if index is None:
            return f"{filename}:{line}"
        return index.function_at(line)
