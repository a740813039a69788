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
)


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet
                continue
            raise
        module.register(app)
