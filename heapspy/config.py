"""What an attach session should do, as plain data shared by the CLI, tests and daemon."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from heapspy.rules import Rule

DEFAULT_RATE = 512 * 1024


@dataclass(frozen=True)
class AttachConfig:
    rate: int = DEFAULT_RATE  # mean bytes between samples; 1 = exact (tracemalloc); 0 = totals
    frames: int = 64
    interval: float = 1.0
    duration: float | None = None  # None: until detached
    attach_timeout: float = 10.0
    thread: int | None = None  # 3.14: run the bootstrap in this native thread instead of main
    nudge: bool = True  # < 3.14: wake a main thread waiting on a lock so the agent starts
    method: str = "auto"  # auto | pep768 | ptrace
    dump_dir: Path = Path("heapspy-dumps")
    final_dump: bool = True
    final_rule: str = "final"  # the rule named in the final dump's file name
    require_sampling: bool = False
    dump_on: tuple[Rule, ...] = ()
    keep: int | None = None  # retention: at most this many dumps in dump_dir
    max_bytes: int | None = None  # retention: at most this many bytes of dumps
