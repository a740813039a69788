"""``heapspy flamegraph``: one dump as a self-contained, interactive HTML flame graph.

The page needs no network and no Go: its CSS and JavaScript (``flamegraph.css`` and
``flamegraph.js`` next to this module) are inlined, and a Content-Security-Policy that
allows only those two inline blocks (by hash) forbids every fetch. The data is a JSON
document inside ``<script type="application/json">`` with ``<``, ``>`` and ``&`` written
as ``\\u003c`` etc., so no function or file name can end the element early.

The stacks are merged into one tree, root → leaf: a node is a function (name and file)
under its caller's node, whatever line it was at (the lines seen are kept for the
tooltip). Every sample type of the dump is embedded, so the page switches between them
without reloading. Children are ordered by function name and file, not by value, so a
frame stays in place when the sample type changes. The JSON document::

    {
      "schema": "heapspy-flamegraph/1",
      "title": "heap-4242-...-final.pb.gz",
      "header": [["Process", "pid 4242: python3 app.py"], ...],  # label, text
      "comments": ["heapspy dump of pid 4242: final"],
      "sample_types": [["alloc_objects", "count"], ...],
      "default": "inuse_space",
      "files": [["/app/app.py", 211], ...],       # file name, colour hue (0-359)
      "functions": [["main", 0], ...],            # function name, index into files
      "nodes": {                                  # preorder: a node, then its subtree
        "depth": [0, 1, 2, ...],                  # the root "all" has depth 0
        "function": [-1, 0, 5, ...],              # index into functions; -1 for the root
        "lines": [[], 5, [12, 14], ...],          # line seen, or lines seen ascending
        "values": [[...], [...], [...], [...]]    # one column per sample type, each
      },                                          # node's total (itself and callees)
      "retainers": [[5, "line 32: 5.5 MiB live, held by", "  app.SHIPPER > list 100 %"]]
    }                                             # function index, then tooltip lines:
                                                  # who holds its live samples (sidecar)

Output is deterministic (same dump, sidecar and options → same bytes): nothing depends on
the time of writing or on the directory the dump is in. The file is written to a
temporary name and renamed.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import tempfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from heapspy.dumps import PATTERN
from heapspy.errors import DumpError
from heapspy.model import TYPE, Frame
from heapspy.pprof import DecodedProfile
from heapspy.reporters.base import Rendering, describe_sampling, format_time
from heapspy.reporters.dump import Dump
from heapspy.reporters.sites import check_by, check_sample_index, label_leafed, label_rooted
from heapspy.reporters.totals import SIDECAR_FOUND, SIDECAR_NO_TOTALS
from heapspy.retainers import SHOWN, Retainers
from heapspy.scaling import format_error
from heapspy.sidecar import Header
from heapspy.units import format_bytes

FLAMEGRAPH_SCHEMA = "heapspy-flamegraph/1"

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{title} - heapspy flame graph</title>
<style>{css}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<dl id="facts"></dl>
<ul id="comments"></ul>
</header>
<nav>
<label>Sample type <select id="sample"></select></label>
<button id="reset" type="button" title="Back to the root (Esc)">Reset zoom</button>
<label>Search <input id="search" type="search" placeholder="function or file"></label>
<span id="matched"></span>
</nav>
<div id="graph"></div>
<div id="tip" hidden></div>
<noscript>This flame graph needs JavaScript.</noscript>
<script type="application/json" id="data">{data}</script>
<script>{js}</script>
</body>
</html>
"""
# Applied to the JSON text, whose only "<", ">" and "&" are inside strings, where the
# \\u escapes mean the same characters to JSON.parse.
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}
_JSON_UNSAFE = re.compile("[<>&]")


@dataclass(frozen=True)
class FlamegraphConfig:
    """What ``heapspy flamegraph`` was asked for.

    ``output`` None means next to the dump (``x.pb.gz`` → ``x.html``); an existing
    directory means that name inside it. ``sample_index`` "" means the dump's default.
    """

    dump: Path
    output: Path | None = None
    sample_index: str = ""
    by: str = ""  # a label key (model.LABEL_KEYS): one root frame per value of it
    types: bool = False  # the objects' types as leaf frames (the label ``type``)

    def __post_init__(self) -> None:
        check_sample_index(self.sample_index)
        check_by(self.by)

    def output_path(self) -> Path:
        default = default_output(self.dump)
        if self.output is None:
            return default
        if self.output.is_dir():
            return self.output / default.name
        return self.output


@dataclass(frozen=True)
class Flamegraph:
    """What was written: where, how big, and how the tree came out."""

    output: Path
    size: int
    nodes: int
    samples: int
    sample_index: str


@dataclass(frozen=True)
class Tree:
    """The merged call tree, in the document's layout (see the module docstring)."""

    files: tuple[tuple[str, int], ...]
    functions: tuple[tuple[str, int], ...]
    depth: tuple[int, ...]
    function: tuple[int, ...]
    lines: tuple[int | tuple[int, ...], ...]  # one line as an int, several ascending
    values: tuple[tuple[int, ...], ...]  # one tuple per sample type, indexed by node


def default_output(dump: Path) -> Path:
    """``heap-….pb.gz`` → ``heap-….html`` beside it (any other name: suffix ``.html``)."""
    name = dump.name
    stem = name[: -len(".pb.gz")] if name.endswith(".pb.gz") else dump.stem
    output = dump.with_name(f"{stem}.html")
    return output if output != dump else dump.with_name(f"{name}.html")


def file_hue(filename: str) -> int:
    """The colour hue of a file's frames: a hash, so it is the same in every graph."""
    return zlib.crc32(filename.encode("utf-8", "surrogatepass")) % 360


def build_tree(profile: DecodedProfile) -> Tree:
    """Merge the profile's stacks into one tree of functions (see the module docstring)."""
    samples = [sample for sample in profile.samples if any(sample.values)]
    width = len(profile.sample_types)
    # Decoded frames are shared per location: number them by identity (as
    # sites.aggregate_sites does). Everything below works on plain ints, in flat lists and
    # int-keyed dicts, because a profile of 100,000 unrelated stacks makes ~2 million
    # nodes, and millions of small tuples or lists would keep the garbage collector busy.
    distinct: dict[int, Frame] = {}
    for sample in samples:
        distinct.update(zip(map(id, sample.stack), sample.stack))
    function_keys: dict[tuple[str, str], int] = {}
    frame_number: dict[int, int] = {}
    frame_function: list[int] = []
    frame_line: list[int] = []
    for identity, frame in distinct.items():
        frame_number[identity] = len(frame_function)
        key = (frame.function, frame.filename)
        frame_function.append(function_keys.setdefault(key, len(function_keys)))
        frame_line.append(frame.line)
    frames = max(len(frame_function), 1)
    functions = max(len(function_keys), 1)

    # Nodes in order of first appearance (a parent before its children), node 0 the root.
    parent = [-1]
    node_function = [-1]
    node_line = [0]
    more_lines: dict[int, set[int]] = {}  # nodes reached from more than one line
    own = [0] * width  # width values per node: what its stacks end in
    by_function: dict[int, int] = {}  # node * functions + function → child
    by_frame: dict[int, int] = {}  # node * frames + frame number → child (the fast path)
    number = frame_number.__getitem__
    for sample in samples:
        node = 0
        for frame_index in map(number, map(id, sample.stack)):
            child = by_frame.get(node * frames + frame_index)
            if child is None:
                function = frame_function[frame_index]
                line = frame_line[frame_index]
                child = by_function.get(node * functions + function)
                if child is None:
                    child = len(parent)
                    by_function[node * functions + function] = child
                    parent.append(node)
                    node_function.append(function)
                    node_line.append(line)
                    own.extend([0] * width)
                elif node_line[child] != line:
                    more_lines.setdefault(child, set()).add(line)
                by_frame[node * frames + frame_index] = child
            node = child
        base = node * width
        for column, value in enumerate(sample.values):
            own[base + column] += value
    count = len(parent)

    # Totals bottom-up (children come after their parents), one column at a time.
    columns = [own[column::width] for column in range(width)]
    for values in columns:
        for node in range(count - 1, 0, -1):
            values[parent[node]] += values[node]

    # Functions and files numbered in sorted order; children ordered by (name, file), so
    # a frame keeps its place whatever the sample type.
    keys = sorted(function_keys)
    rank = [0] * len(keys)
    for position, key in enumerate(keys):
        rank[function_keys[key]] = position
    filenames = sorted({filename for _, filename in keys})
    file_number = {filename: index for index, filename in enumerate(filenames)}
    sort_key = [0]  # the root is never sorted among siblings
    sort_key.extend(
        up * functions + rank[function] for up, function in zip(parent[1:], node_function[1:])
    )
    siblings = sorted(range(1, count), key=sort_key.__getitem__)
    first = [0] * (count + 1)  # children of p: siblings[first[p]:first[p + 1]]
    for node in range(1, count):
        first[parent[node] + 1] += 1
    for index in range(count):
        first[index + 1] += first[index]

    order: list[int] = []
    depth = [0] * count
    pending = [0]
    while pending:
        node = pending.pop()
        order.append(node)
        below = siblings[first[node] : first[node + 1]]
        for child in below:
            depth[child] = depth[node] + 1
        pending.extend(reversed(below))

    def lines(node: int) -> int | tuple[int, ...]:
        extra = more_lines.get(node)
        if extra is None:
            return node_line[node] if node else ()
        return tuple(sorted(extra | {node_line[node]}))

    ranked = [rank[function] for function in node_function[1:]]
    return Tree(
        files=tuple((filename, file_hue(filename)) for filename in filenames),
        functions=tuple((name, file_number[filename]) for name, filename in keys),
        depth=tuple(map(depth.__getitem__, order)),
        function=(-1, *map(ranked.__getitem__, [node - 1 for node in order[1:]])),
        lines=tuple(map(lines, order)),
        values=tuple(tuple(map(values.__getitem__, order)) for values in columns),
    )


def header_facts(loaded: Dump) -> list[tuple[str, str]]:
    """The page's header as (label, text) pairs: process, sampling, time, totals.

    Everything but the totals is informational: a sidecar field of the wrong type is
    left out rather than refused. Broken totals are an error, as in ``heapspy report``.
    """
    dump, profile = loaded.path, loaded.profile
    head = Header.read(loaded.sidecar)
    facts: list[tuple[str, str]] = []
    pid = head.pid
    command = " ".join(head.command_line or ())
    match = PATTERN.match(dump.name)
    if pid is None and match:
        pid = int(match[1])
    if pid is not None or command:
        process = f"pid {pid}" if pid is not None else ""
        facts.append(("Process", ": ".join(part for part in (process, command) if part)))
    python, executable = head.python, head.executable
    if python or executable:
        both = f"{python} ({executable})" if python and executable else python or executable
        facts.append(("Python", str(both)))
    recorded = loaded.sampling
    sampling = describe_sampling(recorded)
    if head.mode and recorded.estimates:
        sampling += f" ({recorded.mode} mode)"
    facts.append(("Sampling", sampling))
    rule = head.rule or (match[3] if match else None)
    if rule:
        facts.append(("Rule", rule))
    if profile.time_nanos:
        duration = profile.duration_nanos / 1e9
        over = f", over {duration:.1f} s" if profile.duration_nanos else ""
        facts.append(("Time", f"{format_time(profile.time_nanos)}{over}"))

    status, totals = loaded.sidecar_status, loaded.totals
    if status == SIDECAR_FOUND:
        source = "exact, from the sidecar"
    elif status == SIDECAR_NO_TOTALS:
        source = "the sidecar holds none: estimated from the profile"
    else:
        source = "no sidecar: estimated from the profile"
    facts.append(("Total Allocated Memory", f"{format_bytes(totals.allocated_bytes)} ({source})"))
    facts.append(("Number of Allocations", f"{totals.allocations:,}"))
    if totals.freed_bytes is not None and totals.frees is not None:
        how = "allocated - freed since attach"
    else:
        how = "in use in the profile"
    # the 95% sampling error, as in `heapspy report`
    error = f" {format_error(totals.live_error)}" if totals.live_error else ""
    facts.append(
        (
            "Live Heap Estimate",
            f"{format_bytes(totals.live_bytes)}{error} in {totals.live_objects:,} objects ({how})",
        )
    )
    return facts


def build_document(
    loaded: Dump, sample_index: int, by: str = "", types: bool = False
) -> dict[str, Any]:
    """The JSON document the page draws (its layout is in the module docstring); with
    ``by`` a label key, the stacks are grouped under one root frame per value of it; with
    ``types``, live samples of Python objects end in a frame naming their type."""
    dump, profile = loaded.path, loaded.profile
    if types:
        profile = label_leafed(profile, TYPE)
    tree = build_tree(label_rooted(profile, by) if by else profile)
    return {
        "schema": FLAMEGRAPH_SCHEMA,
        "title": dump.name,
        "header": [list(fact) for fact in header_facts(loaded)],
        "comments": list(profile.comments),
        "sample_types": [list(pair) for pair in profile.sample_types],
        "default": profile.sample_types[sample_index][0],
        "files": [list(entry) for entry in tree.files],
        "functions": [list(entry) for entry in tree.functions],
        "nodes": {
            "depth": tree.depth,
            "function": tree.function,
            "lines": tree.lines,
            "values": tree.values,
        },
        "retainers": retainer_tips(loaded, tree),
    }


def retainer_tips(loaded: Dump, tree: Tree) -> list[list[Any]]:
    """The sidecar's retainers (``heapspy.retainers``) as tooltip lines, per function of
    the graph: [function index, line...]. Empty without them."""
    found = Retainers.from_json(loaded.sidecar.get("retainers")) if loaded.sidecar else None
    if found is None:
        return []
    index = {
        (name, tree.files[file][0]): position
        for position, (name, file) in enumerate(tree.functions)
    }
    tips: dict[int, list[str]] = {}
    for site in found.sites:
        position = index.get((site.site.function, site.site.filename))
        if position is None:
            continue
        lines = tips.setdefault(position, [])
        lines.append(f"line {site.site.line}: {format_bytes(site.live_bytes)} live, held by")
        lines.extend(f"  {h.describe()} {h.share * 100:.0f} %" for h in site.holders[:SHOWN])
    return [[position, *lines] for position, lines in sorted(tips.items())]


def script_json(document: dict[str, Any]) -> str:
    """``document`` as JSON that is safe inside a ``<script>`` element (no ``<``, ``>``, ``&``)."""
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    return _JSON_UNSAFE.sub(lambda found: _JSON_ESCAPES[found[0]], text)


def _asset(name: str) -> str:
    return resources.files("heapspy.reporters").joinpath(name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return f"'sha256-{digest}'"


def render_html(document: dict[str, Any]) -> str:
    """The whole page: markup, inline CSS and JavaScript, and the embedded document."""
    css = _asset("flamegraph.css")
    js = _asset("flamegraph.js")
    # Only these two inline blocks may run or style the page, and nothing may be fetched.
    csp = (
        f"default-src 'none'; script-src {_csp_hash(js)}; style-src {_csp_hash(css)}; "
        "base-uri 'none'; form-action 'none'"
    )
    return _PAGE.format(
        csp=csp,
        title=html.escape(str(document["title"])),
        css=css,
        js=js,
        data=script_json(document),
    )


@dataclass(frozen=True)
class Page(Rendering):
    """One dump's flame graph: ``text()`` is the HTML page, ``to_json()`` the document
    it embeds and draws."""

    document: dict[str, Any]

    def text(self) -> str:
        return render_html(self.document)

    def to_json(self) -> dict[str, Any]:
        return self.document


def _check_output(output: Path) -> None:
    """Refuse an output path that cannot be written, before the dump is read.

    Root passes ``os.access`` everywhere, so the write itself can still fail; both ways
    end in the same DumpError.
    """
    directory = output.parent
    if output.is_dir():
        problem = "it is a directory"
    elif not directory.exists():
        problem = f"the directory {directory} does not exist"
    elif not directory.is_dir():
        problem = f"{directory} is not a directory"
    elif not os.access(directory, os.W_OK | os.X_OK):
        problem = f"the directory {directory} is not writable"
    else:
        return
    raise DumpError(f"Cannot write the flame graph {output}: {problem}.")


def write_atomically(path: Path, text: str, mode: int = 0o600) -> int:
    """Write ``text`` to a temporary file beside ``path``, then rename it; bytes written."""
    data = text.encode("utf-8")
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise DumpError(f"Cannot write the flame graph {path}: {exc.strerror or exc}.") from exc
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise DumpError(f"Cannot write the flame graph {path}: {exc.strerror or exc}.") from exc
    return len(data)


def write_flamegraph(config: FlamegraphConfig) -> Flamegraph:
    """Read the dump (and its sidecar) and write its flame graph page."""
    output = config.output_path()
    _check_output(output)
    loaded = Dump.load(config.dump)
    profile = loaded.profile
    index = loaded.sample_index(config.sample_index)
    page = Page(build_document(loaded, index, config.by, config.types))
    # The page shows what the dump and its sidecar hold (command line, file names): it
    # gets the dump's permissions, 0600 for the dumps heapspy writes.
    mode = config.dump.stat().st_mode & 0o777
    size = write_atomically(output, page.text(), mode)
    return Flamegraph(
        output=output,
        size=size,
        nodes=len(page.document["nodes"]["depth"]),
        samples=len(profile.samples),
        sample_index=profile.sample_types[index][0],
    )
