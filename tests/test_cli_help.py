"""``--help`` as a user reads it in an 80-column terminal: every command's text is
wrapped once, at the terminal's width, and its examples stay on their own lines."""

from __future__ import annotations

import os

import pytest
from support import run_heapspy

from heapspy.cli.commands import COMMAND_MODULES, reflow

COMMANDS = [name.rsplit(".", 1)[1] for name in COMMAND_MODULES]


def help_text(*args: str) -> list[str]:
    """The description part of ``heapspy ARGS --help`` at 80 columns, lines unpadded."""
    out = run_heapspy(*args, "--help", env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    lines = [line.rstrip() for line in out.stdout.splitlines()]
    assert max(map(len, lines)) <= 80, out.stdout
    return lines[: next(i for i, line in enumerate(lines) if line.startswith("╭"))]


@pytest.mark.parametrize("command", COMMANDS)
def test_prose_is_wrapped_once_at_the_terminal_width(command: str) -> None:
    lines = help_text(command)
    prose = [i for i, line in enumerate(lines) if line.startswith(" ") and line[1:2] != " "]
    assert len(prose) >= 2, lines  # the summary and at least one paragraph or example
    for i in prose:
        if i + 1 in prose and not lines[i].lstrip().startswith("Usage:"):
            # a line followed by more of its paragraph was filled to the width: a short
            # one means a line break of the source survived and the text broke twice
            assert len(lines[i]) >= 60, "\n".join(lines)


@pytest.mark.parametrize("command", COMMANDS)
def test_examples_keep_their_lines(command: str) -> None:
    lines = help_text(command)
    examples = [line.strip() for line in lines if line.startswith("   heapspy ")]
    assert examples, "\n".join(lines)  # every command shows at least one example
    for example in examples:
        assert len(example) <= 76  # fits, so it can be copied whole


def test_reflow_joins_paragraph_lines_and_keeps_indented_ones() -> None:
    doc = "Summary line.\n\nOne paragraph\nwrapped in the source.\n\nExamples:\n\n  a b\n  c d"
    assert reflow(doc) == (
        "Summary line.\n\nOne paragraph wrapped in the source.\n\nExamples:\n\n  a b\n  c d"
    )
