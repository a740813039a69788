"""One dump as the renderers read it: its profile and its sidecar, each read once.

Both come through ``dump_files.read_dump_file``, the bounded loader (regular files only,
size and decompression capped): a dump may have been written by, or copied from, a
machine heapspy does not trust. A sidecar that is missing is normal (a dump copied
alone); one that is there but unreadable or malformed is an error, raised when something
needs it: ``heapspy diff`` only wants the pid from it and does without.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from heapspy.dump_files import read_dump_file
from heapspy.dumps import PATTERN, sidecar_path
from heapspy.errors import DumpError
from heapspy.pprof import DecodedProfile, read_profile
from heapspy.reporters.sites import resolve_sample_index
from heapspy.reporters.totals import (
    SIDECAR_MISSING,
    Totals,
    complete_totals,
    sidecar_totals,
)
from heapspy.runtime_stats import RuntimeStats
from heapspy.sampling import Sampling, read_sampling
from heapspy.sidecar import Header
from heapspy.stack_groups import StackDump


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's JSON object, or None when there is no sidecar (a dump copied alone).

    A sidecar that is there but unreadable, or not a JSON object, is an error.
    """
    try:
        text = read_dump_file(path, "sidecar").decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DumpError(f"Cannot read the sidecar {path}: {exc}.") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise DumpError(f"The sidecar {path} is not valid JSON ({exc}).") from exc
    if not isinstance(document, dict):
        raise DumpError(f"The sidecar {path} is not a JSON object.")
    return document


@dataclass(frozen=True)
class Dump:
    """A dump's path, decoded profile and sidecar document (None when there is none).

    ``sidecar_error`` is why a sidecar that is there could not be read; reading
    ``sidecar`` (or what comes from it: totals, runtime) raises it.
    """

    path: Path
    profile: DecodedProfile
    sidecar_document: dict[str, Any] | None = None
    sidecar_error: DumpError | None = None

    @classmethod
    def load(cls, path: Path) -> Dump:
        """Read the dump, then its sidecar; a dump that cannot be read is an error."""
        profile = read_profile(path)
        try:
            document, error = read_sidecar(sidecar_path(path)), None
        except DumpError as exc:
            document, error = None, exc
        return cls(path, profile, document, error)

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path(self.path)

    @property
    def sidecar(self) -> dict[str, Any] | None:
        if self.sidecar_error is not None:
            raise self.sidecar_error
        return self.sidecar_document

    def sample_index(self, name: str) -> int:
        """Position of sample type ``name`` ("" for the dump's default)."""
        return resolve_sample_index(self.profile, name, self.path)

    @cached_property
    def sidecar_totals(self) -> tuple[str, Totals | None]:
        """The sidecar's status (found, missing, no_totals) and its exact totals."""
        document = self.sidecar
        if document is None:
            return SIDECAR_MISSING, None
        return sidecar_totals(document, self.sidecar_path)

    @property
    def sidecar_status(self) -> str:
        return self.sidecar_totals[0]

    @cached_property
    def totals(self) -> Totals:
        """The sidecar's exact totals, completed (or replaced) by the profile's estimates."""
        return complete_totals(self.profile, self.sidecar_totals[1])

    @property
    def sampling(self) -> Sampling:
        """How the figures were recorded: the sidecar says (it tells totals only from
        exact, which share period 1), else the profile's period. The period is how the
        profile's values were upscaled: a sidecar that disagrees with it is not taken."""
        period = self.profile.period
        recorded = read_sampling(self.sidecar_document, period)
        if recorded.period != max(period, 1):
            return read_sampling(None, period)
        return recorded

    @property
    def runtime(self) -> RuntimeStats | None:
        """The target's GC, threads and tasks at dump time, from the sidecar."""
        return RuntimeStats.from_facts((self.sidecar or {}).get("facts"))

    @property
    def stacks(self) -> StackDump | None:
        """A thread or task rule's dump: every thread and task grouped by stack."""
        return StackDump.read(self.sidecar)

    @property
    def pid(self) -> int | None:
        """The target's pid: from the sidecar (even one whose totals are broken), else
        from the file name heapspy gave the dump."""
        pid = Header.read(self.sidecar_document).pid
        if pid is not None:
            return pid
        match = PATTERN.match(self.path.name)
        return int(match[1]) if match else None
