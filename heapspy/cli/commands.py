"""The list of command modules; each has ``register(app)``."""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = (  # in the order --help lists them: live sessions, then dumps, then the rest
    "heapspy.cli.attach",
    "heapspy.cli.top",
    "heapspy.cli.dump",
    "heapspy.cli.rate",
    "heapspy.cli.status",
    "heapspy.cli.detach",
    "heapspy.cli.report",
    "heapspy.cli.diff",
    "heapspy.cli.flamegraph",
    "heapspy.cli.daemon",
    "heapspy.cli.demo",
)


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
