"""What every renderer shares: the output formats, the checks of options they all take,
and the one way text reaches a terminal.

A renderer builds a frozen value from its inputs (a ``Dump``, a ``TopView``, the live
sessions) that subclasses ``Rendering``: ``text()`` for people, ``to_json()`` for scripts.
Function names, file names and whatever else a target sent are escaped by ``printable``
where a renderer lays them out (one field, one line: a newline in a name cannot forge a
row); ``Rendering.output``, what the CLI prints, escapes any other control character
once more and keeps heapspy's own line breaks.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from heapspy.errors import Remedy, Setting, UsageError
from heapspy.printable import printable
from heapspy.sampling import SAMPLED, TOTALS, Sampling
from heapspy.units import format_bytes

OUTPUT_FORMATS = ("text", "json")


def check_format(output_format: str) -> str:
    if output_format not in OUTPUT_FORMATS:
        raise UsageError(
            f"Unknown format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}."
        )
    return output_format


def check_top(top: int) -> int:
    if top < 1:
        raise UsageError(f"must be at least 1, got {top}.", subject=Setting("top"))
    return top


class Rendering(ABC):
    """A renderer's result: text for people and, where a command offers ``--format
    json``, a stable JSON document for scripts."""

    # `heapspy status --format json` has always sorted its keys; the documented report
    # and diff structures keep their own order.
    sort_keys: ClassVar[bool] = False

    @abstractmethod
    def text(self) -> str: ...

    def to_json(self) -> Any:
        raise UsageError(
            f"{type(self).__name__} has no JSON output.", remedies=(Remedy("format_text"),)
        )

    def render(self, output_format: str = "text") -> str:
        """The rendering in ``output_format`` (text or json), as it is printed."""
        if check_format(output_format) == "json":
            return json.dumps(self.to_json(), indent=2, sort_keys=self.sort_keys) + "\n"
        return self.text()

    def output(self, output_format: str = "text") -> str:
        """What the CLI prints: the rendering with a target's control characters escaped
        (its line breaks are heapspy's own)."""
        return printable(self.render(output_format), keep_newlines=True)


def format_value(value: int, unit: str, *, signed: bool = False) -> str:
    """A sample value in its unit: bytes made human-readable, counts with separators."""
    if unit == "bytes":
        return format_bytes(value, signed=signed)
    return f"{value:+,}" if signed else f"{value:,}"


def format_time(nanos: int) -> str:
    """A profile's time (nanoseconds since the epoch) as ``2023-11-14 22:13:20 UTC``."""
    seconds = nanos / 1e9
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def describe_sampling(sampling: Sampling) -> str:
    """How a dump's figures were recorded, in words."""
    if sampling.mode == SAMPLED:
        return f"one sample every {format_bytes(sampling.rate)} on average"
    if sampling.mode == TOTALS:
        return "totals only (every allocation counted, no stacks recorded)"
    return "exact (every allocation recorded)"
