"""Entry point: builds the typer app from the command modules and catches errors once."""

from __future__ import annotations

import logging
import sys
import traceback

import typer

from heapspy.cli import hints
from heapspy.errors import HeapspyError
from heapspy.printable import PrintableFormatter, printable

app = typer.Typer(
    name="heapspy",
    help=(
        "Attach a sampling heap profiler to a running CPython (3.8-3.14) by PID, "
        "with nothing installed in the target, and write pprof heap dumps."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_verbose = False


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors."),
) -> None:
    global _verbose
    _verbose = verbose


def _register_commands() -> None:
    # Each command module exposes register(app); import them here so that a broken
    # optional command cannot stop the others from loading at import time.
    from heapspy.cli import commands

    commands.register_all(app)


def run() -> None:
    _register_commands()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter("heapspy: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        app()
    except HeapspyError as exc:
        if _verbose or "-v" in sys.argv or "--verbose" in sys.argv:
            traceback.print_exc()
        print(f"heapspy: {printable(hints.render(exc), keep_newlines=True)}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
