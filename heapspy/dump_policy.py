"""When a session writes a dump, and where: its rules (``heapspy.rules``), the writer
and its retention (``heapspy.dumps``), and the record of what it wrote (``heapspy
status``, ``/metrics``, the final dump that `heapspy attach` names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from heapspy.aggregate import Aggregator
from heapspy.config import AttachConfig
from heapspy.dumps import DumpWriter, Retention
from heapspy.model import HeapProfile
from heapspy.rules import Observation, Rule, RuleEngine
from heapspy.sidecar import Sidecar


@dataclass
class DumpPolicy:
    rules: RuleEngine
    writer: DumpWriter
    paths: list[str] = field(default_factory=list)  # each dump written, oldest first
    rules_written: list[str] = field(default_factory=list)  # the rule of each, for /metrics
    requests: list[str] = field(default_factory=list)  # dumps asked for (SIGUSR1), not yet

    @classmethod
    def of(cls, config: AttachConfig, start: float) -> DumpPolicy:
        return cls(
            RuleEngine(config.dump_on, start),
            DumpWriter(config.dump_dir, Retention(config.keep, config.max_bytes)),
        )

    @property
    def needs_memory(self) -> bool:
        """Whether a rule reads the RSS breakdown (native>, unexplained>)."""
        return self.rules.needs_memory

    def observe(self, obs: Observation, agg: Aggregator) -> list[Rule]:
        """The rules that fire on this interval's observation (none without rules)."""
        if not self.rules.rules:
            return []
        return self.rules.observe(obs, agg.growing(self.rules.leak_intervals))

    def write(self, profile: HeapProfile, pid: int, rule: str, sidecar: Sidecar) -> str:
        """Write one dump and its sidecar (retention applies); raises DumpError."""
        return str(self.writer.write(profile, pid, rule, sidecar.to_json()))

    def record(self, path: str, rule: str) -> None:
        self.paths.append(path)
        self.rules_written.append(rule)


def leak_note(agg: Aggregator) -> str | None:
    """A leak rule's dump says which site grew, and for how long."""
    found = agg.longest_growing()
    if not found:
        return None
    stack, streak = found
    leaf = stack[-1] if stack else None
    where = f"{leaf.function} ({leaf.filename}:{leaf.line})" if leaf else "?"
    return f"leak: {where} grew in each of the last {streak} intervals"
