"""Encode a HeapProfile as a gzipped pprof protobuf, and decode pprof files back.

The output follows Go's heap profile conventions (``runtime/pprof``) so that
``go tool pprof`` and every pprof-speaking UI read it like a Go heap dump: four sample
types ``alloc_objects/count``, ``alloc_space/bytes``, ``inuse_objects/count``,
``inuse_space/bytes``; period type ``space/bytes`` with the sampling rate as period;
``inuse_space`` as default; a numeric label ``bytes`` carrying the average object size,
and string labels (``model.Labels``: thread, thread_id, task, coro) saying who made the
samples, and on in-use values ``type``, what they are; one pprof sample per (stack,
labels). A sampled stack also carries the variance of each of its four values as numeric
labels (``VARIANCE_LABELS``, whole numbers), as the shim summed them per sample at the
rate in force when each was taken: after ``heapspy rate`` the period alone cannot say it.

Output is deterministic for a given profile, whatever order its sites come in: ids are
assigned from sorted content and gzip's timestamp is fixed, so a golden-file test can
compare bytes and two dumps of the same heap are identical files.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from heapspy import profile_pb2 as pb
from heapspy.dump_files import MAX_PROFILE, TooLarge, gunzip_capped, read_dump_file
from heapspy.errors import DumpError
from heapspy.frame_names import renamer
from heapspy.model import Frame, HeapProfile, Labels, SiteCounts, Stack
from heapspy.scaling import estimate_variance, scale

SAMPLE_TYPES: tuple[tuple[str, str], ...] = (
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
)
SAMPLE_TYPE_NAMES: tuple[str, ...] = tuple(name for name, _ in SAMPLE_TYPES)
DEFAULT_SAMPLE_TYPE = "inuse_space"
PERIOD_TYPE = ("space", "bytes")
SIZE_LABEL = "bytes"
# One per sample type, in SAMPLE_TYPES' order: written only by a session that recorded them.
VARIANCE_LABELS: tuple[str, ...] = tuple(f"{name}_variance" for name in SAMPLE_TYPE_NAMES)
_MAX_LABEL = 2**63 - 1

# Level 6 is zlib's default: within a few percent of level 9's size at a fraction of its
# time on large profiles (see benchmarks/pprof_write.py).
_GZIP_LEVEL = 6
_GZIP_MAGIC = b"\x1f\x8b"
# magic, deflate, no flags, mtime 0, no extra flags, OS unknown
_GZIP_HEADER = _GZIP_MAGIC + b"\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"
_MAPPING_ID = 1

_FrameKey = tuple[str, str, int, bool]
_Values = tuple[int, int, int, int]


def scale_heap_sample(count: int, size: int, rate: int) -> tuple[int, int]:
    """Estimate the true (count, bytes) behind a sampled site, as Go's pprof does.

    The formula lives in ``heapspy.scaling``; truncating to int here is what Go's
    ``scaleHeapSample`` does, so our figures match Go's for the same observations.
    """
    objects, nbytes = scale(count, size, rate)
    return int(objects), int(nbytes)


def _scaled_values(counts: SiteCounts, rate: int) -> _Values:
    # Go scales the alloc pair and the in-use pair independently: their average sizes
    # can differ once some blocks have been freed.
    alloc_objects, alloc_bytes = scale_heap_sample(counts.alloc_objects, counts.alloc_bytes, rate)
    inuse_objects, inuse_bytes = scale_heap_sample(counts.inuse_objects, counts.inuse_bytes, rate)
    return alloc_objects, alloc_bytes, inuse_objects, inuse_bytes


def _estimated_values(estimate: tuple[float, float, float, float]) -> _Values:
    alloc_objects, alloc_bytes, inuse_objects, inuse_bytes = (int(v) for v in estimate)
    return alloc_objects, alloc_bytes, inuse_objects, inuse_bytes


def _exact_values(counts: SiteCounts) -> _Values:
    return counts.alloc_objects, counts.alloc_bytes, counts.inuse_objects, counts.inuse_bytes


def _frame_key(frame: Frame) -> _FrameKey:
    return frame.function, frame.filename, frame.line, frame.native


class _ProfileBuilder:
    """Interns strings, functions and locations into one pprof Profile message.

    String table starts with ``""`` (pprof requires it); functions are deduplicated by
    ``(name, filename)`` and locations by frame. Function and location ids come from the
    sorted set of frames, never from arrival order, which is what makes output stable.
    """

    def __init__(self) -> None:
        self._message = pb.Profile()
        self._strings: dict[str, int] = {}
        self._string_table: list[str] = []
        self._location_ids: dict[int, int] = {}
        self.string("")

    def string(self, value: str) -> int:
        index = self._strings.get(value)
        if index is None:
            index = len(self._string_table)
            self._strings[value] = index
            self._string_table.append(value)
        return index

    def header(
        self,
        profile: HeapProfile,
        sample_types: tuple[tuple[str, str], ...] = SAMPLE_TYPES,
        default: str = DEFAULT_SAMPLE_TYPE,
    ) -> None:
        message = self._message
        for name, unit in sample_types:
            message.sample_type.add(type=self.string(name), unit=self.string(unit))
        message.period_type.type = self.string(PERIOD_TYPE[0])
        message.period_type.unit = self.string(PERIOD_TYPE[1])
        # pprof shows period 0 as "unset"; an exact profile samples every byte.
        message.period = max(profile.rate, 1)
        message.default_sample_type = self.string(default)
        message.time_nanos = profile.time_ns
        message.duration_nanos = profile.duration_ns
        message.comment.extend(self.string(comment) for comment in profile.comments)
        # One mapping that says "already symbolized": without it pprof tries to find
        # and symbolize a binary and prints "Main binary filename not available."
        message.mapping.add(
            id=_MAPPING_ID, has_functions=True, has_filenames=True, has_line_numbers=True
        )

    def frames(self, by_identity: dict[int, Frame]) -> None:
        """Create the Function and Location messages for every distinct frame.

        ``by_identity`` is ``_distinct_frames()`` of the stacks that will be written.
        """
        function_ids: dict[tuple[str, str], int] = {}
        location_ids: dict[Frame, int] = {}
        message = self._message
        distinct = sorted(set(by_identity.values()), key=_frame_key)
        # native frames: their library is their mapping (ids after the symbolized one)
        libraries = sorted({frame.filename for frame in distinct if frame.native})
        mapping_ids = {path: _MAPPING_ID + 1 + i for i, path in enumerate(libraries)}
        for path, mapping_id in mapping_ids.items():
            message.mapping.add(
                id=mapping_id, filename=self.string(path), has_functions=True, has_filenames=True
            )
        for frame in distinct:
            function_key = (frame.function, frame.filename)
            function_id = function_ids.get(function_key)
            if function_id is None:
                function_id = len(function_ids) + 1
                function_ids[function_key] = function_id
                name = self.string(frame.function)
                message.function.add(
                    id=function_id,
                    name=name,
                    system_name=name,
                    filename=self.string(frame.filename),
                )
            location_id = len(location_ids) + 1
            location_ids[frame] = location_id
            mapping_id = mapping_ids[frame.filename] if frame.native else _MAPPING_ID
            location = message.location.add(id=location_id, mapping_id=mapping_id)
            location.line.add(function_id=function_id, line=frame.line)
        self._location_ids = {
            identity: location_ids[frame] for identity, frame in by_identity.items()
        }

    def location_ids(self, stack: Stack) -> tuple[int, ...]:
        """Location ids of ``stack``, leaf first as pprof wants (the model is root first).

        Only valid for frames seen by ``frames()`` while the profile is alive (ids of
        live objects are unique).
        """
        return tuple(map(self._location_ids.__getitem__, map(id, reversed(stack))))

    def samples(self, samples: dict[tuple[tuple[int, ...], Labels], _Site]) -> None:
        message = self._message
        label_key = self.string(SIZE_LABEL)
        label_unit = self.string("bytes")
        variance_keys: list[int] = []  # interned with the first sample that has them
        for location_ids, labels in sorted(samples):
            site = samples[location_ids, labels]
            sample = message.sample.add(location_id=location_ids, value=site.values)
            avg_size = site.size // site.objects if site.objects else 0
            if avg_size:
                sample.label.add(key=label_key, num=avg_size, num_unit=label_unit)
            for key, value in labels:
                sample.label.add(key=self.string(key), str=self.string(value))
            if site.variance is not None:
                variance_keys = variance_keys or [self.string(k) for k in VARIANCE_LABELS]
                for index, variance in zip(variance_keys, site.variance):
                    sample.label.add(key=index, num=min(round(variance), _MAX_LABEL))

    @property
    def message(self) -> pb.Profile:
        return self._message

    def finish(self) -> pb.Profile:
        self._message.string_table.extend(self._string_table)
        return self._message


@dataclass
class _Site:
    """Values of one stack, and the raw objects and bytes behind its ``bytes`` label."""

    values: _Values
    objects: int
    size: int
    variance: tuple[float, float, float, float] | None = None  # of each value

    def add(self, other: _Site) -> None:
        self.values = (
            self.values[0] + other.values[0],
            self.values[1] + other.values[1],
            self.values[2] + other.values[2],
            self.values[3] + other.values[3],
        )
        self.objects += other.objects
        self.size += other.size
        if self.variance is not None and other.variance is not None:
            # stacks are sampled independently: variances add
            mine, theirs = self.variance, other.variance
            self.variance = (
                mine[0] + theirs[0],
                mine[1] + theirs[1],
                mine[2] + theirs[2],
                mine[3] + theirs[3],
            )


def _sites(profile: HeapProfile) -> Iterator[tuple[Stack, Labels, _Site]]:
    """Every site with something to show: sampled ones upscaled, exact ones as they are.

    The label's average size comes from the raw observations (scaling leaves it as is);
    allocations count, and in-use blocks stand in when nothing was allocated since attach.
    """
    rate = profile.rate
    # Variances are written when the session recorded them; then every sample has them.
    record = any(counts.variance is not None for _, counts in profile.sampled)
    for sites, scaled in ((profile.sampled, True), (profile.exact, False)):
        for stack, counts in sites:
            if not scaled:
                values = _exact_values(counts)
            elif counts.estimate is not None:
                values = _estimated_values(counts.estimate)
            else:
                values = _scaled_values(counts, rate)
            if not any(values):
                continue
            variance = None
            if record:
                variance = _variance(counts, values, rate) if scaled else (0.0, 0.0, 0.0, 0.0)
            if counts.alloc_objects:
                yield (
                    stack,
                    counts.labels,
                    _Site(values, counts.alloc_objects, counts.alloc_bytes, variance),
                )
            else:
                yield (
                    stack,
                    counts.labels,
                    _Site(values, counts.inuse_objects, counts.inuse_bytes, variance),
                )


def _variance(counts: SiteCounts, values: _Values, rate: int) -> tuple[float, float, float, float]:
    """The variances of a sampled stack's four values (``scaling.estimate_variance``)."""
    v = counts.variance
    alloc = estimate_variance(values[0], values[1], rate, None if v is None else (v[0], v[1]))
    inuse = estimate_variance(values[2], values[3], rate, None if v is None else (v[2], v[3]))
    return alloc[0], alloc[1], inuse[0], inuse[1]


def _distinct_frames(sites: list[tuple[Stack, Labels, _Site]]) -> dict[int, Frame]:
    """Every frame of the sites, keyed by identity.

    Frames are compared by identity first: the aggregator shares Frame objects between
    stacks, and hashing a frozen dataclass runs Python code, which made value-keyed
    lookups of two million frames take seconds. Ids stay content-based because they are
    assigned from the sorted distinct values.
    """
    by_identity: dict[int, Frame] = {}
    for stack, _, _ in sites:
        by_identity.update(zip(map(id, stack), stack))
    return by_identity


def build_profile(profile: HeapProfile) -> pb.Profile:
    """Build the pprof message for ``profile`` (exposed for tests and tools)."""
    sites = list(_sites(profile))
    distinct = _distinct_frames(sites)
    # Frames pprof would show as <unknown> get their names (heapspy.frame_names); only
    # the stacks that hold one are rebuilt.
    rename = renamer(distinct.values())
    if rename is not None:
        sites = [(rename(stack), labels, site) for stack, labels, site in sites]
        distinct = rename.distinct(distinct)
    builder = _ProfileBuilder()
    builder.header(profile)
    builder.frames(distinct)
    # A stack may come both sampled and exact (blocks an extension reports exactly), or
    # under two label sets that the agent named alike: pprof wants one sample per stack
    # and labels, so their values add up.
    merged: dict[tuple[tuple[int, ...], Labels], _Site] = {}
    for stack, labels, site in sites:
        key = (builder.location_ids(stack), labels)
        previous = merged.get(key)
        if previous is None:
            merged[key] = site
        else:
            previous.add(site)
    builder.samples(merged)
    return builder.finish()


def encode_samples(
    sample_types: tuple[tuple[str, str], ...],
    default: str,
    samples: Sequence[tuple[Stack, tuple[int, ...]]],
    time_ns: int,
    duration_ns: int,
    comments: tuple[str, ...] = (),
) -> bytes:
    """A gzipped pprof profile of plain samples with other sample types than a heap
    dump's four (a heap census: ``objects``, ``space``); same interning, same
    determinism. One value per sample type; stacks root first, as in the model."""
    header = HeapProfile(rate=1, time_ns=time_ns, duration_ns=duration_ns, comments=comments)
    builder = _ProfileBuilder()
    builder.header(header, sample_types, default)
    distinct: dict[int, Frame] = {}
    for stack, _ in samples:
        distinct.update(zip(map(id, stack), stack))
    builder.frames(distinct)
    merged: dict[tuple[int, ...], list[int]] = {}
    for stack, values in samples:
        key = builder.location_ids(stack)
        previous = merged.get(key)
        if previous is None:
            merged[key] = list(values)
        else:
            for i, value in enumerate(values):
                previous[i] += value
    message = builder.message
    for key in sorted(merged):
        message.sample.add(location_id=key, value=merged[key])
    return gzip_bytes(builder.finish().SerializeToString())


def gzip_bytes(data: bytes) -> bytes:
    """Gzip ``data`` with a fixed header: no timestamp, no name, OS byte 255 (unknown).

    Written out rather than left to ``gzip.compress``, whose header differs between
    Python versions (its OS byte is 255, or 3 through 3.11's zlib shortcut): the same
    heap must give the same file whichever Python wrote it.
    """
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(data) + compressor.flush()
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return _GZIP_HEADER + body + trailer


def encode_profile(profile: HeapProfile) -> bytes:
    """Serialize ``profile`` as the gzipped protobuf that pprof tools read."""
    return gzip_bytes(build_profile(profile).SerializeToString())


@dataclass(frozen=True)
class DecodedSample:
    """One pprof sample: its stack (root → leaf, like the model) and its values."""

    stack: Stack
    values: tuple[int, ...]
    num_labels: tuple[tuple[str, int], ...] = ()
    labels: Labels = ()  # string labels, sorted by key (model.Labels)

    def label(self, key: str) -> int | None:
        for name, value in self.num_labels:
            if name == key:
                return value
        return None

    def recorded_variance(self, objects_index: int, bytes_index: int) -> tuple[float, float] | None:
        """The (objects, bytes) variances written beside values ``objects_index`` and
        ``bytes_index`` (``VARIANCE_LABELS``, a heapspy session's), else None."""
        if objects_index >= len(VARIANCE_LABELS) or bytes_index >= len(VARIANCE_LABELS):
            return None
        objects = self.label(VARIANCE_LABELS[objects_index])
        nbytes = self.label(VARIANCE_LABELS[bytes_index])
        if objects is None or nbytes is None or objects < 0 or nbytes < 0:
            return None
        return float(objects), float(nbytes)


@dataclass(frozen=True)
class DecodedProfile:
    """The parts of a pprof profile that reports and diffs need, with strings resolved."""

    sample_types: tuple[tuple[str, str], ...]
    samples: tuple[DecodedSample, ...]
    period_type: tuple[str, str] = ("", "")
    period: int = 0
    default_sample_type: str = ""
    time_nanos: int = 0
    duration_nanos: int = 0
    comments: tuple[str, ...] = ()

    @property
    def sample_type_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.sample_types)

    def default_index(self) -> int:
        """Index of the preferred sample type: the declared default, else the last one."""
        names = self.sample_type_names
        if self.default_sample_type in names:
            return names.index(self.default_sample_type)
        return len(names) - 1


def _decompress(data: bytes) -> bytes:
    if not data.startswith(_GZIP_MAGIC):
        if len(data) > MAX_PROFILE:
            raise _Unusable(f"it is more than {MAX_PROFILE >> 20} MiB of protobuf")
        return data
    try:
        return gunzip_capped(data, MAX_PROFILE)
    except TooLarge as exc:
        raise _Unusable(str(exc)) from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise _Unusable(f"it is a damaged gzip stream ({exc})") from exc


def _stack(location_ids: Iterable[int], locations: dict[int, tuple[Frame, ...]]) -> Stack:
    """Root → leaf frames of a sample, expanding inlined lines; checks every id."""
    leaf_first: list[Frame] = []
    for location_id in location_ids:
        frames = locations.get(location_id)
        if frames is None:
            raise _Unusable(f"a sample refers to unknown location id {location_id}")
        leaf_first.extend(frames)
    leaf_first.reverse()
    return tuple(leaf_first)


class _Unusable(Exception):
    """Why some bytes are not a usable profile; becomes a DumpError naming the source."""


def decode_profile(data: bytes) -> DecodedProfile:
    """Parse a pprof profile, gzipped or raw, written by heapspy or by any other tool.

    Raises DumpError when the bytes are not a usable pprof profile.
    """
    try:
        return _decode(data)
    except _Unusable as exc:
        raise DumpError(f"The data is not a usable pprof profile: {exc}.") from exc


# Messages the protobuf parser may build: each costs ~50 bytes even when empty (a 2-byte
# empty sample), so millions of them in a small file are the memory bomb, not its size.
# heapspy's own dumps hold up to a few hundred thousand (samples, locations, functions,
# strings, lines, labels).
MAX_MESSAGES = 2_000_000
_NESTED = {2: 3, 4: 4}  # Profile.sample -> Sample.label, Profile.location -> Location.line


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise _Unusable("it does not parse as a pprof protobuf")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _count_fields(raw: bytes, start: int, end: int, nested: dict[int, int], budget: int) -> int:
    """How many fields lie in raw[start:end], plus the ``nested`` ones (field number ->
    the one field of that submessage counted too), stopping past ``budget``. Malformed
    data is left to the real parser. One-byte keys and lengths (nearly all of a crafted
    file of tiny messages) take the inline path: this loop is the scan's whole cost."""
    count = 0
    pos = start
    while pos < end and count <= budget:
        key = raw[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(raw, pos)
        wire = key & 7
        if wire == 2:
            length = raw[pos] if pos < end else 0
            if length < 0x80:
                pos += 1
            else:
                length, pos = _varint(raw, pos)
            inner = nested.get(key >> 3)
            if inner is not None and length:
                count += _count_inner(raw, pos, min(pos + length, end), inner, budget - count)
            pos += length
        elif wire == 0:
            _, pos = _varint(raw, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            return count
        count += 1
    return count


def _count_inner(raw: bytes, start: int, end: int, field: int, budget: int) -> int:
    """How many ``field`` entries lie in the submessage raw[start:end] (inline paths as
    in :func:`_count_fields`)."""
    count = 0
    pos = start
    while pos < end and count <= budget:
        key = raw[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(raw, pos)
        wire = key & 7
        if wire == 2:
            length = raw[pos] if pos < end else 0
            if length < 0x80:
                pos += 1
            else:
                length, pos = _varint(raw, pos)
            pos += length
        elif wire == 0:
            _, pos = _varint(raw, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            return count
        if key >> 3 == field:
            count += 1
    return count


def _decode(data: bytes) -> DecodedProfile:
    raw = _decompress(data)
    if _count_fields(raw, 0, len(raw), _NESTED, MAX_MESSAGES) > MAX_MESSAGES:
        raise _Unusable(f"it holds more than {MAX_MESSAGES:,} messages")
    message = pb.Profile()
    try:
        message.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise _Unusable("it does not parse as a pprof protobuf") from exc
    strings = list(message.string_table)
    if not strings or strings[0] != "" or not message.sample_type:
        raise _Unusable("it has no string table or no sample types")

    def string(index: int) -> str:
        if 0 <= index < len(strings):
            return strings[index]
        raise _Unusable(f"string index {index} is out of range")

    functions = {
        function.id: (string(function.name), string(function.filename))
        for function in message.function
    }
    # a location in a mapping of a named file is a native library's (heapspy's native
    # frames; any other tool's profile of a native program)
    libraries = {mapping.id for mapping in message.mapping if mapping.filename}
    # Each location becomes its frames leaf first: with inlining, line[0] is the
    # innermost call. A location without lines (unsymbolized) is named by its address.
    locations: dict[int, tuple[Frame, ...]] = {}
    for location in message.location:
        frames = []
        native = location.mapping_id in libraries
        for line in location.line:
            name, filename = functions.get(line.function_id, ("", ""))
            frames.append(Frame(name, filename, line.line, native=native))
        if not frames:
            frames.append(Frame(f"0x{location.address:x}", "", 0))
        locations[location.id] = tuple(frames)

    # Fast path: heapspy writes one line per location, so most stacks map id → frame
    # in C (map over the repeated field); anything else takes the general path.
    single = {key: frames[0] for key, frames in locations.items() if len(frames) == 1}
    width = len(message.sample_type)
    samples = []
    for sample in message.sample:
        if len(sample.value) != width:
            raise _Unusable(f"a sample has {len(sample.value)} values for {width} sample types")
        try:
            stack = tuple(map(single.__getitem__, sample.location_id[::-1]))
        except KeyError:
            stack = _stack(sample.location_id, locations)
        labels = sample.label
        samples.append(
            DecodedSample(
                stack=stack,
                values=tuple(sample.value),
                num_labels=tuple(
                    [(string(label.key), label.num) for label in labels if not label.str]
                )
                if labels
                else (),
                labels=_string_labels(labels, string) if labels else (),
            )
        )
    return DecodedProfile(
        sample_types=tuple(
            (string(value_type.type), string(value_type.unit)) for value_type in message.sample_type
        ),
        samples=tuple(samples),
        period_type=(string(message.period_type.type), string(message.period_type.unit)),
        period=message.period,
        default_sample_type=string(message.default_sample_type),
        time_nanos=message.time_nanos,
        duration_nanos=message.duration_nanos,
        comments=tuple(string(index) for index in message.comment),
    )


def _string_labels(labels: Iterable[pb.Label], string: Callable[[int], str]) -> Labels:
    """A sample's string labels as ``model.Labels``: sorted by key, the first value of a
    key kept (pprof allows several; heapspy writes one)."""
    found: dict[str, str] = {}
    for label in labels:
        if label.str:
            found.setdefault(string(label.key), string(label.str))
    return tuple(sorted(found.items()))


def read_profile(path: Path) -> DecodedProfile:
    """Read and decode the pprof file at ``path``; every failure becomes a DumpError."""
    try:
        data = read_dump_file(path, "dump")
    except FileNotFoundError as exc:
        raise DumpError(f"The dump {path} does not exist.") from exc
    except OSError as exc:
        raise DumpError(f"Cannot read the dump {path}: {exc.strerror or exc}.") from exc
    if not data:
        raise DumpError(f"The dump {path} is empty.")
    try:
        return _decode(data)
    except _Unusable as exc:
        raise DumpError(f"The file {path} is not a usable pprof dump: {exc}.") from exc
