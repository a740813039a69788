"""The list of command modules; each has ``register(app)``."""

from __future__ import annotations

import importlib
import inspect

import typer

COMMAND_MODULES = (  # in the order --help lists them: live sessions, then dumps, then the rest
    "heapspy.cli.attach",
    "heapspy.cli.top",
    "heapspy.cli.dump",
    "heapspy.cli.census",
    "heapspy.cli.rate",
    "heapspy.cli.status",
    "heapspy.cli.detach",
    "heapspy.cli.trim",
    "heapspy.cli.report",
    "heapspy.cli.diff",
    "heapspy.cli.flamegraph",
    "heapspy.cli.daemon",
    "heapspy.cli.demo",
)


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
    for info in app.registered_commands:
        if info.help is None and info.callback is not None:
            info.help = reflow(inspect.getdoc(info.callback) or "")


def reflow(doc: str) -> str:
    """A docstring as --help should show it: typer's rich mode keeps every line break,
    so lines wrapped for the source come out broken twice in an 80-column terminal. The
    lines of a paragraph are joined; indented lines (examples, lists) keep theirs."""
    paragraphs = []
    for paragraph in doc.split("\n\n"):
        lines: list[str] = []
        for line in paragraph.splitlines():
            if lines and not line.startswith((" ", "- ")) and not lines[-1].startswith(" "):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.rstrip())
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)
