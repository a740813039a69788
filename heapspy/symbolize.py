"""Name frames that carry only file and line (exact mode) from the source, heapspy-side.

tracemalloc records ``(filename, lineno)``; users want ``Shipper.buffer_line``. We parse
the file as the target sees it (``/proc/PID/root``) and take the innermost function
enclosing the line, qualified like ``co_qualname`` so that both modes agree. Never done
in the target: parsing is far too costly to inflict on it.

The file name comes from the target's code objects, so it is opened with every check of
:mod:`heapspy.target.rootfs` (regular files of at most :data:`MAX_SOURCE` bytes, inside
the target's root, readable by the target's credentials); a file failing any check, or
one that does not parse, leaves its frames named ``file:line``.
"""

from __future__ import annotations

import ast
import bisect
import itertools
import os
import re
import weakref
from functools import lru_cache

from heapspy.target.native_symbols import NativeName, NativeSymbols
from heapspy.target.rootfs import Credentials, read_file_in_root

MAX_SOURCE = 4 << 20  # bytes: the largest source file read
# ast.parse costs up to ~0.9 KB of memory and ~12 us per token (measured on 3.11 with
# 'a\n' repeated: 100,000 statements took 178 MB), so the token count is what bounds
# it. 100,000 tokens keep one parse under ~90 MB and ~1.5 s; _pydecimal.py, among the
# largest hand-written modules, has ~60,000.
MAX_TOKENS = 100_000
# What one target can make heapspy parse in all (~1-4 min of CPU at worst), after which
# further files stay unnamed: a large application parses well under a tenth of it.
SESSION_TOKENS = 20_000_000
# An over-estimate of the tokenizer's tokens: words, and every other character but blanks.
_TOKEN = re.compile(rb"\w+|[^\w \t\f]")


def count_tokens(source: bytes, limit: int) -> int:
    """Tokens in ``source`` (an over-estimate), counting no further than ``limit + 1``."""
    return sum(1 for _ in itertools.islice(_TOKEN.finditer(source), limit + 1))


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
    """Resolves ``(file, line)`` to a function name for one target's filesystem.

    ``Symbolizer()`` reads heapspy's own files (tests, dumps of this host); a target's
    files come through :meth:`of_process`. The root fd is opened lazily and kept, so
    a target that exits later still has its files named from its root.
    """

    def __init__(self, root: str = "/", credentials: Credentials | None = None) -> None:
        self.root = root
        self.credentials = credentials
        self.readable = True
        self.tokens_left = SESSION_TOKENS
        self._native: NativeSymbols | None = None  # of_process: the target's native frames
        self._root_fd: int | None = None
        self._index = lru_cache(maxsize=4096)(self._load)

    @classmethod
    def of_process(cls, pid: int) -> Symbolizer:
        """The files of process ``pid``, read only where its own credentials could."""
        try:
            credentials = Credentials.of_process(pid)
        except (OSError, LookupError, ValueError):  # gone, or an unreadable status
            credentials = None
        symbolizer = cls(f"/proc/{pid}/root", credentials)
        symbolizer.readable = credentials is not None
        symbolizer._native = NativeSymbols(pid)
        return symbolizer

    def native(self, pcs: list[int]) -> list[NativeName]:
        """Names of native frames (return addresses in the target, leaf first) as
        heapspy shows them (heapspy.target.native_symbols); bare addresses when this
        symbolizer is not a process's."""
        if self._native is None:
            return [(f"0x{pc:x}", "") for pc in pcs[:1]]
        return self._native.name(pcs)

    def close(self) -> None:
        if self._root_fd is not None:
            self._closer()  # closes it once, also if never called here (at exit or GC)
            self._root_fd = None

    def _load(self, filename: str) -> SourceIndex | None:
        if not filename.startswith("/") or not self.readable or self.tokens_left <= 0:
            return None
        try:
            if self._root_fd is None:
                self._root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                self._closer = weakref.finalize(self, os.close, self._root_fd)
            source = read_file_in_root(self._root_fd, filename, self.credentials, MAX_SOURCE)
            tokens = count_tokens(source, min(MAX_TOKENS, self.tokens_left))
            self.tokens_left -= tokens
            if tokens > MAX_TOKENS or self.tokens_left < 0:
                return None
            return SourceIndex(_scopes(ast.parse(source)))
        except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
            return None

    def function(self, filename: str, line: int) -> str:
        index = self._index(filename)
        if index is None:
            return f"{filename}:{line}"
        return index.function_at(line)
