"""What an attach session should do, as plain data shared by the CLI, tests and daemon,
and the checks that turn what a user typed into that data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from heapspy_agent.schema import Sampling

from heapspy.errors import UsageError
from heapspy.rules import Rule
from heapspy.units import parse_duration, parse_size, size_text

DEFAULT_RATE = 512 * 1024
DEFAULT_RATE_TEXT = size_text(DEFAULT_RATE)  # "512KiB", each command's --rate default


@dataclass(frozen=True)
class AttachConfig:
    # the sampling as the user spells it (--rate, the daemon's rate): read through
    # ``sampling``, never compared here and there
    rate: int = DEFAULT_RATE  # mean bytes between samples; 1 = exact (tracemalloc); 0 = totals
    frames: int = 64
    interval: float = 1.0
    # a scheduled collection with nothing live changed waits up to this long to be sent,
    # merged into the next (agent/heapspy_agent/quiet.py); 0: every interval, as asked
    # for by a person watching; the daemon's watches default to DAEMON_IDLE_REPORT
    idle_report: float = 0.0
    duration: float | None = None  # None: until detached
    attach_timeout: float = 10.0
    thread: int | None = None  # 3.14: run the bootstrap in this native thread instead of main
    nudge: bool = True  # < 3.14: wake a main thread waiting on a lock so the agent starts
    method: str = "auto"  # auto | pep768 | ptrace
    dump_dir: Path = Path("heapspy-dumps")
    final_dump: bool = True
    final_rule: str = "final"  # the rule named in the final dump's file name
    # a heap census at the start (heapspy.census): what the heap held before the attach;
    # `heapspy attach` and the daemon's watches take one unless told not to; a Session
    # made in code does only when asked
    census: bool = False
    # which roots hold the top sites' live samples, found for the final dump, on-demand
    # and leak-rule dumps (heapspy.retainers): a census-like walk each time
    retainers: bool = False
    require_sampling: bool = False
    # sample native allocations too: the RAW domain and the malloc & co of the target's
    # extension modules and libraries (agent/heapspy_agent/shim.py, Cargo-free/native_*.c)
    native: bool = False
    # with native: each native sample's native call stack too (return addresses walked
    # by frame pointers in the target, named by heapspy: heapspy/target/native_symbols.py)
    native_frames: bool = False
    # a dump just before the worker's memory cgroup reaches its limit (heapspy/oomwatch.py)
    last_chance: bool = True
    # the daemon's watch that chose this target: labels its metrics, changes nothing in
    # how it is profiled (so it takes no part in comparing configs)
    watch: str = field(default="", compare=False)
    allow_gc: bool = True  # whether a scraper's gc=1 may run gc.collect() in the target
    dump_on: tuple[Rule, ...] = ()
    keep: int | None = None  # retention: at most this many dumps in dump_dir
    max_bytes: int | None = None  # retention: at most this many bytes of dumps
    # share of one core the agent may spend collecting; beyond it the interval stretches
    collect_budget: float = 0.02

    @property
    def sampling(self) -> Sampling:
        """The sampling asked for (the agent answers with what it does)."""
        return Sampling.of_rate(self.rate, self.frames)


# --- validation shared by the command line and the daemon's config file -------------
# Each takes what the user typed and says what was wrong in words that fit both places;
# ``what`` names the value the way the user named it (an option or a config key).


def check_rate(text: str, what: str = "sampling rate") -> int:
    """A sampling rate in bytes: 0 (totals only), 1 (exact) or any larger mean gap."""
    value = parse_size(text, what)
    if value < 0:
        raise UsageError(f"The {what} cannot be negative.")
    return value


def check_duration(text: str | None, what: str = "duration") -> float | None:
    """A positive duration in seconds (``None`` passes through: no limit)."""
    if text is None:
        return None
    value = parse_duration(text, what)
    if value <= 0:
        raise UsageError(f"The {what} must be positive, got {text!r}.")
    return value


# What a daemon's watch waits at most, when nothing live changes, before its agent sends
# what it collected: 64 idle workers then wake the daemon ~6 times a second, not 64.
DAEMON_IDLE_REPORT = 10.0
# idle_report's ceiling: heapspy gives up on an agent silent for 120 s (channel.py) and
# the agent beats only when nothing went out for idle_report and two intervals more
MAX_IDLE_REPORT = 60.0


def check_idle_report(value: float, interval: float, what: str = "idle report") -> float:
    """0 (off: every interval is sent) or between the interval and MAX_IDLE_REPORT."""
    if value != 0 and not interval <= value <= MAX_IDLE_REPORT:
        raise UsageError(
            f"The {what} must be 0 (off) or between the interval ({interval:g} s) and "
            f"{MAX_IDLE_REPORT:g} s, got {value:g} s."
        )
    return value


def check_frames(value: int, what: str) -> int:
    if not 1 <= value <= 512:
        raise UsageError(f"{what} must be between 1 and 512, got {value}.")
    return value


def check_max_bytes(text: str | None, what: str) -> int | None:
    """A retention cap in bytes, positive (``None`` passes through: no cap). 0 would keep
    nothing, not even the dump just written: the CLI and the daemon refuse it alike."""
    if text is None:
        return None
    value = parse_size(text, what)
    if value <= 0:
        raise UsageError(f"{what} must be positive, got {text!r}.")
    return value


def check_keep(value: int | None, what: str) -> int | None:
    if value is not None and value < 1:
        raise UsageError(f"{what} must be at least 1, got {value}.")
    return value


def check_native_frames(native: bool, native_frames: bool, what: str, native_what: str) -> bool:
    """Native frames are the call stacks of native samples: without native sampling
    there are none to record."""
    if native_frames and not native:
        raise UsageError(
            f"{what} records the C call stacks of native allocations, which only "
            f"{native_what} samples: add {native_what}."
        )
    return native_frames


METHODS = ("auto", "pep768", "ptrace")


def check_method(value: str, what: str) -> str:
    if value not in METHODS:
        raise UsageError(f"{what} must be one of {', '.join(METHODS)}, got {value!r}.")
    return value
