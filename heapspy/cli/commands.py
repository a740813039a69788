"""The list of command modules; each has ``register(app)``."""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = (
    "heapspy.cli.attach",
    "heapspy.cli.detach",
    "heapspy.cli.demo",
    "heapspy.cli.report",
    "heapspy.cli.diff",
    "heapspy.cli.flamegraph",
    "heapspy.cli.dump",
    "heapspy.cli.rate",
    "heapspy.cli.status",
    "heapspy.cli.top",
    "heapspy.cli.daemon",
)


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
