"""``heapspy flamegraph``: the merged tree, a page that is safe and offline, and what a real
headless Chromium draws from it (driven over the DevTools protocol, see tests/browser.py).

Dumps are written by ``DumpWriter``, the writer sessions use (dump plus sidecar), from
exact profiles whose every figure is known; one test takes its dump from a real attach
to the bundled leaky worker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import Browser, Page, file_url, require_browser
from support import LEAKY_WORKER, attach_to_leaky_worker

from heapspy.dumps import DumpWriter
from heapspy.errors import DumpError, UsageError
from heapspy.model import Frame, HeapProfile, SiteCounts, Stack
from heapspy.pprof import read_profile
from heapspy.reporters.dump import Dump
from heapspy.reporters.flamegraph import (
    FlamegraphConfig,
    build_tree,
    default_output,
    file_hue,
    header_facts,
    script_json,
    write_atomically,
    write_flamegraph,
)
from heapspy.reporters.report import ReportConfig, build_report

REPO = Path(__file__).resolve().parent.parent

MAIN = Frame("main", "/app/worker.py", 30)
RUN = Frame("run", "/app/worker.py", 36)
LEAK_A = Frame("Shipper.buffer_line", "/app/shipper.py", 22)
LEAK_B = Frame("Shipper.buffer_line", "/app/shipper.py", 25)
PARSE = Frame("parse_record", "/app/records.py", 12)
LOADS = Frame("loads", "/usr/lib/python3.11/json/__init__.py", 346)
EVIL_NAME = '</script><script>document.title="pwned"</script>'
EVIL = Frame(EVIL_NAME, "/app/<b>&amp;.py", 1)
INIT_A = Frame("__init__", "/app/a.py", 3)
INIT_B = Frame("__init__", "/app/b.py", 8)

# Exact counts (alloc_objects, alloc_bytes, inuse_objects, inuse_bytes): Shipper.buffer_line
# holds most of what is live, parse_record allocates most and keeps almost nothing.
SITES: tuple[tuple[Stack, SiteCounts], ...] = (
    ((MAIN, RUN, LEAK_A), SiteCounts(100, 6_000_000, 100, 6_000_000)),
    ((MAIN, RUN, LEAK_B), SiteCounts(20, 2_000_000, 20, 2_000_000)),
    ((MAIN, RUN, PARSE, LOADS), SiteCounts(50_000, 40_000_000, 10, 8_000)),
    ((MAIN, RUN, PARSE), SiteCounts(1_000, 1_000_000, 0, 0)),
    ((MAIN, EVIL), SiteCounts(10, 1_000_000, 10, 1_000_000)),
    ((MAIN, INIT_A), SiteCounts(5, 500_000, 5, 500_000)),
    ((MAIN, INIT_B), SiteCounts(4, 400_000, 4, 400_000)),
)
COLUMNS = ("alloc_objects", "alloc_space", "inuse_objects", "inuse_space")
FIELDS = dict(zip(COLUMNS, ("alloc_objects", "alloc_bytes", "inuse_objects", "inuse_bytes")))
PID = 4242
SIDECAR = {
    "pid": PID,
    "command_line": ["python3", "worker.py", "--queue", "q1"],
    "executable": "/usr/bin/python3.11",
    "python": "3.11.2",
    "mode": "sampled",
    "rate": 524288,
    "totals": {
        "allocated_bytes": 987_654_321,
        "allocations": 1_234_567,
        "freed_bytes": None,
        "frees": 1_000_000,
        "size_classes": [[5, 10]],
    },
}


def total(column: str, *, containing: str | None = None) -> int:
    """The exact value of ``column`` over all stacks (that contain function ``containing``)."""
    return sum(
        getattr(counts, FIELDS[column])
        for stack, counts in SITES
        if containing is None or any(frame.function == containing for frame in stack)
    )


def write_dump(directory: Path, sidecar: dict[str, Any] | None = SIDECAR) -> Path:
    profile = HeapProfile(
        rate=1,
        time_ns=1_700_000_000_000_000_000,
        duration_ns=12_000_000_000,
        exact=SITES,
        comments=(f"heapspy dump of pid {PID}: final",),
    )
    path = DumpWriter(directory).write(profile, PID, "final", dict(sidecar or {}))
    if sidecar is None:
        path.with_name(path.name.replace(".pb.gz", ".json")).unlink()
    return path


def run_cli(
    *args: str | Path, cwd: Path, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "heapspy", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


# --- the tree and the file, without a browser ------------------------------------------------


def test_tree_merges_functions_keeps_lines_and_orders_children(tmp_path: Path) -> None:
    tree = build_tree(read_profile(write_dump(tmp_path)))
    names = ["all" if index < 0 else tree.functions[index][0] for index in tree.function]
    files = [
        "" if index < 0 else tree.files[tree.functions[index][1]][0] for index in tree.function
    ]
    inuse = tree.values[COLUMNS.index("inuse_space")]
    alloc = tree.values[COLUMNS.index("alloc_space")]
    # preorder, children by (function, file) in code point order: "<" before "_" before "r"
    assert list(zip(tree.depth, names, files)) == [
        (0, "all", ""),
        (1, "main", "/app/worker.py"),
        (2, EVIL_NAME, EVIL.filename),
        (2, "__init__", "/app/a.py"),
        (2, "__init__", "/app/b.py"),
        (2, "run", "/app/worker.py"),
        (3, "Shipper.buffer_line", "/app/shipper.py"),
        (3, "parse_record", "/app/records.py"),
        (4, "loads", LOADS.filename),
    ]
    leak = names.index("Shipper.buffer_line")
    assert tree.lines[leak] == (22, 25)  # two lines, one frame
    assert tree.lines[names.index("loads")] == 346
    assert inuse[leak] == total("inuse_space", containing="Shipper.buffer_line") == 8_000_000
    assert inuse[0] == total("inuse_space") and alloc[0] == total("alloc_space")
    parse = names.index("parse_record")
    assert alloc[parse] == 41_000_000 and inuse[parse] == 8_000
    assert tree.files[0][1] == file_hue(tree.files[0][0])


def test_header_without_sidecar_and_with_broken_totals(tmp_path: Path) -> None:
    dump = write_dump(tmp_path, sidecar=None)
    facts = dict(header_facts(Dump(dump, read_profile(dump))))
    assert facts == {
        "Process": "pid 4242",  # from the file name
        "Sampling": "exact (every allocation recorded)",
        "Rule": "final",
        "Time": "2023-11-14 22:13:20 UTC, over 12.0 s",
        "Total Allocated Memory": "48.5 MiB (no sidecar: estimated from the profile)",
        "Number of Allocations": "51,139",
        "Live Heap Estimate": "9.4 MiB in 149 objects (in use in the profile)",
    }
    assert total("alloc_space") == 50_900_000 and total("alloc_objects") == 51_139
    broken = {**SIDECAR, "totals": {"allocations": 1}}
    with pytest.raises(DumpError, match="has no valid totals.allocated_bytes"):
        header_facts(Dump(dump, read_profile(dump), broken))


def test_script_json_cannot_end_its_element() -> None:
    document = {"name": EVIL_NAME, "file": "<!-- & -->", "other": "a\u2028b"}
    text = script_json(document)
    assert not set("<>&") & set(text)
    assert "\\u003c/script\\u003e" in text
    assert json.loads(text) == document


def test_output_is_deterministic_atomic_and_private(tmp_path: Path) -> None:
    dump = write_dump(tmp_path)
    first = write_flamegraph(FlamegraphConfig(dump))
    assert first.output == default_output(dump) == tmp_path / dump.name.replace(".pb.gz", ".html")
    data = first.output.read_bytes()
    assert first.size == len(data)
    assert write_flamegraph(FlamegraphConfig(dump)).output.read_bytes() == data
    # the same dump elsewhere, under another name: still the same bytes
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    shutil.copy(dump, elsewhere / dump.name)
    shutil.copy(dump.with_name(dump.name.replace(".pb.gz", ".json")), elsewhere)
    assert write_flamegraph(FlamegraphConfig(elsewhere / dump.name)).output.read_bytes() == data
    # nothing but the dump, its sidecar and the page; the page as private as the dump
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
        [dump.name, dump.name.replace(".pb.gz", ".json"), first.output.name]
    )
    assert first.output.stat().st_mode & 0o777 == dump.stat().st_mode & 0o777 == 0o600
    # -o DIRECTORY puts the default name in it
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    written = write_flamegraph(FlamegraphConfig(dump, output=out_dir)).output
    assert written == out_dir / first.output.name


def test_page_references_no_network(tmp_path: Path) -> None:
    page = write_flamegraph(FlamegraphConfig(write_dump(tmp_path))).output.read_text()
    for asset in ("flamegraph.js", "flamegraph.css"):
        text = (REPO / "heapspy" / "reporters" / asset).read_text()
        assert not re.search(r"https?:", text, re.I), asset
        # inlined as they are: nothing in them may close or confuse their element
        assert not re.search(r"</|<!--|<script", text, re.I), asset
    assert not re.search(r"https?:", page, re.I)
    assert not re.search(r"<(link|img|iframe|object|embed)\b|@import|url\(", page, re.I)
    assert re.search(r"<script>", page) and "<script src" not in page
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert csp and csp[1].startswith("default-src 'none'; script-src 'sha256-")
    # the two scripts: the data and the code; the hostile name never appears raw
    assert page.count("<script") == 2 and page.count("</script>") == 2


def test_write_failure_leaves_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "out"
    directory.mkdir()
    (directory / "file").write_text("")
    with pytest.raises(DumpError, match="Cannot write the flame graph .*: Not a directory"):
        write_atomically(directory / "file" / "x.html", "<html>")
    # the rename fails (a directory is in the way): the temporary file goes
    (directory / "x.html").mkdir()
    (directory / "x.html" / "keep").write_text("")
    with pytest.raises(DumpError, match="Cannot write the flame graph .*x.html: Is a directory"):
        write_atomically(directory / "x.html", "<html>")
    assert sorted(p.name for p in directory.iterdir()) == ["file", "x.html"]


def test_config_checks_the_sample_index_and_the_output(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="alloc_objects, alloc_space, inuse_objects, inuse_space"):
        FlamegraphConfig(Path("x.pb.gz"), sample_index="inuse")
    assert default_output(Path("/d/x.pb")) == Path("/d/x.html")
    assert default_output(Path("/d/x.html")) == Path("/d/x.html.html")
    dump = write_dump(tmp_path)
    with pytest.raises(DumpError, match="the directory .*/nowhere does not exist"):
        write_flamegraph(FlamegraphConfig(dump, output=tmp_path / "nowhere" / "x.html"))


# --- the command line ---------------------------------------------------------------------------


def test_cli_writes_and_prints_the_path(tmp_path: Path) -> None:
    dump = write_dump(tmp_path)
    result = run_cli("flamegraph", dump, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{default_output(dump)}\n"
    result = run_cli(
        "flamegraph", dump, "-o", "mine.html", "--sample-index", "alloc_space", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "mine.html\n"
    assert '"default":"alloc_space"' in (tmp_path / "mine.html").read_text()


def test_cli_errors(tmp_path: Path) -> None:
    dump = write_dump(tmp_path)
    missing = tmp_path / "nope.pb.gz"
    result = run_cli("flamegraph", missing, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        16,
        f"heapspy: The dump {missing} does not exist.\n",
    )
    (tmp_path / "text.pb.gz").write_text("not a profile")
    result = run_cli("flamegraph", tmp_path / "text.pb.gz", cwd=tmp_path)
    assert result.returncode == 16 and "is not a usable pprof dump" in result.stderr
    result = run_cli("flamegraph", dump, "--sample-index", "bogus", cwd=tmp_path)
    assert result.returncode == 2
    assert "choose one of alloc_objects, alloc_space, inuse_objects, inuse_space" in result.stderr
    result = run_cli("flamegraph", dump, "-o", tmp_path / "no" / "x.html", cwd=tmp_path)
    assert result.returncode == 16
    assert result.stderr == (
        f"heapspy: Cannot write the flame graph {tmp_path / 'no' / 'x.html'}: "
        f"the directory {tmp_path / 'no'} does not exist.\n"
    )
    for output in (tmp_path / "no.html", default_output(dump)):
        assert not output.exists()
    assert "Traceback" not in result.stderr


def test_cli_unwritable_directory(tmp_path: Path) -> None:
    # Root writes anywhere: as root, run the command as nobody on a world-readable copy.
    shared = Path(tempfile.mkdtemp(prefix="heapspy-flamegraph-"))
    try:
        shared.chmod(0o755)
        dump = write_dump(shared)
        locked = shared / "locked"
        locked.mkdir(mode=0o555)
        prefix: tuple[str, ...] = ()
        if os.geteuid() == 0:
            for path in shared.iterdir():
                path.chmod(0o755 if path.is_dir() else 0o644)
            locked.chmod(0o755)  # root-owned: nobody cannot write it
            prefix = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
        result = run_cli("flamegraph", dump, "-o", locked / "x.html", cwd=Path("/"), prefix=prefix)
        assert result.returncode == 16, result.stderr
        assert result.stderr == (
            f"heapspy: Cannot write the flame graph {locked / 'x.html'}: "
            f"the directory {locked} is not writable.\n"
        )
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_cli_help_is_the_docstring(tmp_path: Path) -> None:
    result = run_cli("flamegraph", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "interactive flame graph" in result.stdout
    assert "flamegraph" in run_cli("--help", cwd=tmp_path).stdout


# --- in a real browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    browser = Browser(require_browser())
    yield browser
    browser.close()


OpenPage = Callable[..., Page]


@pytest.fixture
def open_page(chromium: Browser) -> Iterator[OpenPage]:
    """open_page(html, fragment="") loads a page in a fresh 1200x800 tab."""
    pages: list[Page] = []

    def _open(html: Path, fragment: str = "") -> Page:
        page = chromium.page()
        pages.append(page)
        page.goto(file_url(html, fragment))
        return page

    yield _open
    for page in pages:
        page.close()


FRAMES_JS = """[...document.querySelectorAll('#graph .frame')].map(e => {
  const r = e.getBoundingClientRect();
  return {node: +e.dataset.node, function: e.dataset.function ?? null,
          file: e.dataset.file ?? null, value: +e.dataset.value, classes: e.className,
          count: e.dataset.count ? +e.dataset.count : null,
          text: e.textContent, x: r.x, y: r.y, width: r.width, height: r.height,
          background: getComputedStyle(e).backgroundColor};
})"""


def frames(page: Page) -> list[dict[str, Any]]:
    return list(page.eval(FRAMES_JS))


def frame(page: Page, function: str) -> dict[str, Any]:
    """The one frame drawn for ``function`` (not counting faded callers above a zoom)."""
    found = [f for f in frames(page) if f["function"] == function and "above" not in f["classes"]]
    assert len(found) == 1, (function, found)
    return found[0]


def assert_share(page: Page, function: str, value: int, whole: int) -> None:
    """The frame's drawn width is its share of the root's, to within a pixel."""
    root = frame(page, "all")
    drawn = frame(page, function)
    assert drawn["value"] == value
    assert drawn["width"] == pytest.approx(root["width"] * value / whole, abs=1.0), drawn


@pytest.fixture
def page_file(tmp_path: Path) -> Path:
    return write_flamegraph(FlamegraphConfig(write_dump(tmp_path))).output


def test_browser_draws_the_leak_at_its_share(page_file: Path, open_page: OpenPage) -> None:
    page = open_page(page_file)
    assert page.eval("document.getElementById('sample').value") == "inuse_space"
    inuse = total("inuse_space")
    assert_share(page, "Shipper.buffer_line", 8_000_000, inuse)
    assert_share(page, "main", inuse, inuse)
    leak = frame(page, "Shipper.buffer_line")
    run = frame(page, "run")
    assert leak["file"] == "/app/shipper.py" and leak["text"] == "Shipper.buffer_line"
    assert leak["y"] > run["y"] and run["x"] <= leak["x"] < run["x"] + run["width"]
    # colour by file: the same hue for both worker.py frames, another for shipper.py
    assert frame(page, "main")["background"] == run["background"] != leak["background"]
    facts = page.eval(
        "[...document.querySelectorAll('#facts dt')].map(t => [t.textContent,"
        " t.nextElementSibling.textContent])"
    )
    assert dict(facts) == {
        "Process": "pid 4242: python3 worker.py --queue q1",
        "Python": "3.11.2 (/usr/bin/python3.11)",
        "Sampling": "exact (every allocation recorded)",
        "Rule": "final",
        "Time": "2023-11-14 22:13:20 UTC, over 12.0 s",
        "Total Allocated Memory": "941.9 MiB (exact, from the sidecar)",
        "Number of Allocations": "1,234,567",
        "Live Heap Estimate": "9.4 MiB in 149 objects (in use in the profile)",
    }
    assert page.eval("document.getElementById('comments').textContent") == (
        "heapspy dump of pid 4242: final"
    )
    assert page.errors() == []
    assert page.requested_urls() == [file_url(page_file)]  # and nothing else, ever


def test_fragment_switches_the_sample_type(page_file: Path, open_page: OpenPage) -> None:
    page = open_page(page_file, "sample=alloc_space")
    assert page.eval("document.getElementById('sample').value") == "alloc_space"
    alloc = total("alloc_space")
    assert_share(page, "Shipper.buffer_line", 8_000_000, alloc)
    assert_share(page, "parse_record", 41_000_000, alloc)
    inuse_page = open_page(page_file)
    assert frame(page, "parse_record")["width"] > 5 * frame(page, "Shipper.buffer_line")["width"]
    # live, parse_record keeps 8 kB of 9.9 MB: under a pixel, so it is not drawn at all
    assert frame(inuse_page, "Shipper.buffer_line")["width"] > 900
    assert not [f for f in frames(inuse_page) if f["function"] in ("parse_record", "loads")]
    assert not [f for f in frames(inuse_page) if "collapsed" in f["classes"]]
    # the selector redraws the same way, from the keyboard
    page.eval("document.getElementById('sample').focus()")
    page.key("ArrowDown", "ArrowDown", 40)
    assert page.eval("document.getElementById('sample').value") == "inuse_objects"
    assert_share(page, "Shipper.buffer_line", 120, total("inuse_objects"))
    assert page.eval("location.hash") == "#sample=inuse_objects"
    assert page.errors() == []


def test_hostile_name_is_text(page_file: Path, open_page: OpenPage) -> None:
    page = open_page(page_file)
    evil = frame(page, EVIL_NAME)
    assert evil["text"] == EVIL_NAME and evil["file"] == EVIL.filename
    assert evil["width"] > 50
    assert page.eval("document.title") == (
        "heap-4242-20231114T221320.000Z-final.pb.gz - heapspy flame graph"
    )
    assert page.eval("document.scripts.length") == 2
    assert_share(page, "Shipper.buffer_line", 8_000_000, total("inuse_space"))  # still drawn
    page.hover(evil["x"] + 5, evil["y"] + 5)
    assert page.eval("document.getElementById('tip').textContent").startswith(
        f"{EVIL_NAME}\n{EVIL.filename}:1\n"
    )
    assert page.errors() == []


def test_hover_click_zoom_and_back(page_file: Path, open_page: OpenPage) -> None:
    page = open_page(page_file)
    leak = frame(page, "Shipper.buffer_line")
    page.hover(leak["x"] + leak["width"] / 2, leak["y"] + leak["height"] / 2)
    tip = page.eval(
        "[document.getElementById('tip').hidden, document.getElementById('tip').textContent]"
    )
    percent = 100 * 8_000_000 / total("inuse_space")
    assert tip == [
        False,
        "Shipper.buffer_line\n/app/shipper.py:22, 25\n"
        f"inuse_space: 7.63 MiB ({percent:.2f}% of all)\nself: 7.63 MiB",
    ]
    root = frame(page, "all")
    root_width = root["width"]
    page.click(leak["x"] + leak["width"] / 2, leak["y"] + leak["height"] / 2)
    zoomed = frame(page, "Shipper.buffer_line")
    assert zoomed["width"] == pytest.approx(root_width, abs=0.5)
    assert zoomed["x"] == pytest.approx(root["x"], abs=0.5)
    callers = [f["function"] for f in frames(page) if "above" in f["classes"]]
    assert callers == ["all", "main", "run"]
    assert page.eval("location.hash") == f"#zoom={zoomed['node']}"
    # Esc zooms out
    page.key("Escape", "Escape", 27)
    assert page.eval("location.hash") == ""
    assert_share(page, "Shipper.buffer_line", 8_000_000, total("inuse_space"))
    # clicking a faded caller zooms out to it
    page.click(leak["x"] + 2, leak["y"] + 2)
    run = [f for f in frames(page) if f["function"] == "run"][0]
    page.click(run["x"] + 2, run["y"] + 2)
    assert frame(page, "run")["width"] == pytest.approx(root_width, abs=0.5)
    assert frame(page, "Shipper.buffer_line")["width"] == pytest.approx(
        root_width * 8_000_000 / 8_008_000, abs=1.0
    )
    # a shared link opens zoomed
    assert open_page(page_file, f"zoom={zoomed['node']}").eval("location.hash") == (
        f"#zoom={zoomed['node']}"
    )
    assert page.errors() == []


def test_search_highlights_and_shows_the_share(page_file: Path, open_page: OpenPage) -> None:
    page = open_page(page_file)
    box = page.eval(
        "(() => { const r = document.getElementById('search').getBoundingClientRect();"
        " return [r.x + 5, r.y + 5]; })()"
    )
    page.click(*box)
    page.type_text("SHIPPER")  # case-insensitive, function names and files
    matched = [f["function"] for f in frames(page) if "match" in f["classes"]]
    assert matched == ["Shipper.buffer_line"]
    inuse = total("inuse_space")
    assert page.eval("+document.getElementById('matched').dataset.value") == 8_000_000
    assert page.eval("document.getElementById('matched').textContent") == (
        f"Matched: 7.63 MiB ({100 * 8_000_000 / inuse:.2f}% of all)"
    )
    assert page.eval("location.hash") == "#search=SHIPPER"
    # a match inside a match counts once: "/app/" is in every file, main holds it all
    page.eval("document.getElementById('search').select()")
    page.type_text("/app/")
    assert page.eval("+document.getElementById('matched').dataset.value") == inuse
    assert page.errors() == []


# --- big profiles and real dumps ---------------------------------------------------------------


def tree_profile(stacks: int = 100_000) -> HeapProfile:
    """``stacks`` distinct stacks: a common prefix, then a 10-way call tree 5 deep."""
    prefix = tuple(
        Frame(f"framework_{level}", "/srv/app/server.py", 10 + level) for level in range(6)
    )
    sites = []
    for leaf in range(stacks):
        digits = [leaf // 10**power % 10 for power in range(4, -1, -1)]
        stack = prefix + tuple(
            Frame(f"handler_{level}_{digit}", f"/srv/app/pkg{level}/mod{digit}.py", 1 + leaf % 7)
            for level, digit in enumerate(digits)
        )
        objects = 1 + leaf % 50
        size = objects * (32, 64, 1024, 65536)[leaf % 4]
        sites.append((stack, SiteCounts(objects, size, objects // 2, size // 2)))
    return HeapProfile(
        rate=512 * 1024, time_ns=1_700_000_000_000_000_000, duration_ns=60 * 10**9,
        sampled=tuple(sites),
    )  # fmt: skip


def test_empty_dump_opens(tmp_path: Path, open_page: OpenPage) -> None:
    empty = HeapProfile(rate=512 * 1024, time_ns=0, duration_ns=0)
    dump = DumpWriter(tmp_path).write(empty, 7, "final", {"pid": 7, "totals": None})
    tree = build_tree(read_profile(dump))
    assert (tree.depth, tree.function, tree.values[0]) == ((0,), (-1,), (0,))
    page = open_page(write_flamegraph(FlamegraphConfig(dump)).output)
    assert page.eval("document.querySelectorAll('#graph .frame').length") == 0
    assert "Number of Allocations0" in page.eval("document.getElementById('facts').textContent")
    assert page.errors() == []


def test_big_profile_opens_fast(tmp_path: Path, open_page: OpenPage) -> None:
    dump = DumpWriter(tmp_path).write(tree_profile(), 7, "final", {"pid": 7})
    started = time.monotonic()
    written = write_flamegraph(FlamegraphConfig(dump))
    build_seconds = time.monotonic() - started
    assert written.samples == 100_000 and written.nodes == 111_117
    page = open_page(written.output)
    load = page.eval("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000
    drawn = page.eval("document.querySelectorAll('#graph .frame').length")
    collapsed = page.eval("document.querySelectorAll('#graph .frame.collapsed').length")
    redraw = page.eval(
        "(() => { const s = document.getElementById('sample'), t = performance.now();"
        " s.value = 'alloc_space'; s.dispatchEvent(new Event('change'));"
        " return (performance.now() - t) / 1000; })()"
    )
    print(
        f"\n100,000 stacks: dump {dump.stat().st_size / 2**20:.2f} MiB, "
        f"HTML {written.size / 2**20:.2f} MiB written in {build_seconds:.2f} s, "
        f"{written.nodes:,} nodes; page loaded in {load:.2f} s drawing {drawn:,} elements "
        f"({collapsed:,} collapsed blocks); redraw as alloc_space {redraw * 1000:.0f} ms"
    )
    assert written.size < 16 * 2**20
    assert build_seconds < 60 and load < 15 and redraw < 5
    assert 0 < collapsed < drawn < 10_000
    # every frame and collapsed block is drawn at its share, however narrow
    root = frame(page, "all")
    everything = frames(page)
    assert len([f for f in everything if (f["function"] or "").startswith("handler_0_")]) == 10
    for drawn in everything:
        share = root["width"] * drawn["value"] / root["value"]
        assert drawn["width"] == pytest.approx(share, abs=0.5), drawn
    # a collapsed block says what it holds; a click zooms into its caller, where the
    # frames it stood for are wide enough to be drawn one by one
    block = max((f for f in everything if "collapsed" in f["classes"]), key=lambda f: f["width"])
    # Chromium hit-tests a box by the whole pixels it touches, and the mouse is at whole
    # pixels: at a block's first pixel the one before it is under it, not over it.
    page.click(int(block["x"]), block["y"] + 5)
    tip = page.eval("document.getElementById('tip').textContent")
    assert tip.startswith(f"{block['count']} frames under ")
    assert page.eval("location.hash") == f"#sample=alloc_space&zoom={block['node']}"
    row = [f for f in frames(page) if f["y"] == pytest.approx(block["y"])]
    assert len(row) >= block["count"] and not [f for f in row if "collapsed" in f["classes"]]
    assert page.errors() == []


def test_real_attach_dump_in_the_browser(tmp_path: Path, open_page: OpenPage) -> None:
    worker_pid, attached = attach_to_leaky_worker(
        [sys.executable], "--duration", "4", "--rate", "64KiB", "--dump-dir", str(tmp_path)
    )
    assert attached.returncode == 0, attached.stderr
    (dump,) = tmp_path.glob("*-final.pb.gz")
    result = run_cli("flamegraph", dump, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = open_page(Path(result.stdout.strip()))
    # the same figure heapspy report computes, drawn at its share
    report = build_report(ReportConfig(dump, top=100))
    leak = next(row for row in report.top if row.site.function == "Shipper.buffer_line")
    assert_share(page, "Shipper.buffer_line", leak.cum, report.total)
    assert leak.cum > report.total / 2
    facts = dict(page.eval(
        "[...document.querySelectorAll('#facts dt')].map(t => [t.textContent,"
        " t.nextElementSibling.textContent])"
    ))  # fmt: skip
    # the target's sys.argv, and its interpreter
    assert facts["Process"] == f"pid {worker_pid}: {LEAKY_WORKER} 0"
    assert facts["Python"].startswith(f"{sys.version.split()[0]} (")
    assert facts["Rule"] == "final"
    assert facts["Total Allocated Memory"].endswith("(exact, from the sidecar)")
    assert page.errors() == []
