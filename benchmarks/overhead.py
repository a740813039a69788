"""What heapspy costs a running program: throughput with heapspy attached / without.

    .venv/bin/python benchmarks/overhead.py [--quick] [--seconds 5] [--rounds 3]
        [--interpreters 3.11,3.14] [--rates 1,64KiB,512KiB] [--workloads go,chaos]
        [--frames 64] [--no-memray] [--no-control] [--json results.json]

One long-running target per interpreter (``benchmarks/overhead_driver.py``) runs eleven
pyperformance workloads round-robin in its main thread and reports, per time slice, how
many calls of each it completed. This controller alternates phases on that same
process: unattached, attached at rate R (``Session.attach`` / ``run`` / ``detach``),
unattached, attached at the next rate, ... for ``--rounds`` rounds, then the same with
``memray attach`` / ``memray detach`` (memray installed for the target, which heapspy
does not need). A workload's ratio for an attached phase is its throughput there divided
by its throughput in the unattached phases either side; a column's figure is the
geometric mean over rounds, and the bottom line the geometric mean over workloads. Only
slices that start and end inside a phase count, so attaching and detaching are not
measured, and an unattached phase opens only once the target reports that no profiler
is left in it. The ``none`` column attaches nothing: it shows the noise of the method.

An attached phase lasts ``--seconds`` and is stretched (up to 4x) until every workload
has completed a slice in it: exact tracing with 64 frames slows some workloads a
hundredfold, and those may still show n/a. Each column names the mode the agent reported
(``exact`` = tracemalloc, ``sampled`` = the shim): the agent falls back to exact when the
shim cannot be used, and says why.

pyperformance and pyperf (pure Python) and memray are installed with pip into
``.cache/bench/`` on first use. Prints ratios; this is not a timed test. The default run
takes about 9 minutes on 2 cores, ``--quick`` (no control column) about 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import log, pick_interpreters  # noqa: E402
from interpreters import Interpreter  # noqa: E402

import heapspy.channel  # noqa: E402
from heapspy.config import AttachConfig  # noqa: E402
from heapspy.errors import HeapspyError  # noqa: E402
from heapspy.session import Session  # noqa: E402
from heapspy.units import parse_size  # noqa: E402

PYPERFORMANCE = "pyperformance==1.14.0"
PYPERF = "pyperf==2.10.0"
MEMRAY = "memray==1.20.0"
DRIVER = Path(__file__).resolve().parent / "overhead_driver.py"
WORKLOADS = (
    "deltablue richards json_dumps json_loads chaos go raytrace deepcopy pprint logging xml_etree"
).split()
STRETCH = 4.0  # an attached phase lasts at most this many times --seconds
QUIET_TIMEOUT = 60.0  # how long a profiler may take to leave the target after detaching
MEMRAY_COLUMN = "memray"
CONTROL_COLUMN = "none"


# --- provisioning -------------------------------------------------------------------


def _pip(args: list[str]) -> str | None:
    """Run pip from this venv; None on success, else the tail of its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
    )
    if proc.returncode == 0:
        return None
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "is ignored" not in ln]
    return " ".join(lines[-3:]).strip() or f"pip exited with {proc.returncode}"


def provision_pyperformance(cache: Path) -> tuple[Path, Path]:
    """pyperformance + pyperf into one folder usable by every target: (it, benchmarks)."""
    site = cache / ("site-" + PYPERFORMANCE.replace("==", "-"))
    benchmarks = site / "pyperformance" / "data-files" / "benchmarks"
    if not (site / "pyperf" / "__init__.py").exists() or not benchmarks.is_dir():
        log(f"installing {PYPERFORMANCE} and {PYPERF} into {site}")
        error = _pip(["--no-deps", "--target", str(site), PYPERFORMANCE, PYPERF])
        if error:
            raise SystemExit(f"could not install pyperformance: {error}")
    return site, benchmarks


def provision_memray(cache: Path, version: tuple[int, int]) -> tuple[Path | None, str]:
    """memray (binary wheel for that CPython) in its own folder, or None and why not."""
    tag = f"cp{version[0]}{version[1]}"
    site = cache / f"{MEMRAY.replace('==', '-')}-{tag}"
    if (site / "memray" / "__init__.py").exists():
        return site, ""
    log(f"installing {MEMRAY} for Python {version[0]}.{version[1]} into {site}")
    error = _pip(
        [
            "--target",
            str(site),
            "--only-binary=:all:",
            "--python-version",
            f"{version[0]}.{version[1]}",
            MEMRAY,
        ]
    )
    if error:
        return None, f"no {MEMRAY} for {tag}: {error}"
    return site, ""


# --- the target -----------------------------------------------------------------------


@dataclass(frozen=True)
class Slice:
    workload: str
    calls: int
    t0: float
    t1: float
    cpu: float  # CPU seconds of the whole target (all threads) during the slice
    present: str  # what of a profiler the target saw at t1; "-": nothing

    @property
    def quiet(self) -> bool:
        return self.present == "-"


class Driver:
    """The target process and what it reported so far."""

    def __init__(
        self,
        interp: Interpreter,
        bench_dir: Path,
        path: list[Path],
        workloads: list[str],
        slice_seconds: float,
    ) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in path)
        self.stderr_file: IO[str] = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            interp.command(
                str(DRIVER),
                "--bench-dir",
                str(bench_dir),
                "--workloads",
                ",".join(workloads),
                "--slice",
                str(slice_seconds),
            ),
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lock = threading.Lock()
        self.slices: list[Slice] = []
        self.skipped: dict[str, str] = {}
        self.workloads: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "slice" and len(parts) == 7:
                name, calls, t0, t1, cpu = parts[1], int(parts[2]), *map(float, parts[3:6])
                item = Slice(name, calls, t0, t1, cpu, parts[6])
                with self.lock:
                    self.slices.append(item)
            elif parts[0] == "skip" and len(parts) >= 2:
                self.skipped[parts[1]] = " ".join(parts[2:])
            elif parts[0] == "ready":
                self.workloads = parts[2:]
                self._ready.set()
        self._ready.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float) -> bool:
        self._ready.wait(timeout)
        return self.alive() and bool(self.workloads)

    def within(self, t0: float, t1: float) -> list[Slice]:
        with self.lock:
            return [s for s in self.slices if s.t0 >= t0 and s.t1 <= t1]

    def wait_quiet(self, since: float, timeout: float) -> str:
        """Wait for a slice ending after `since` with no profiler left in the target;
        "" once there is one, else what the target last reported."""
        deadline = time.monotonic() + timeout
        last = "no slice"
        while time.monotonic() < deadline and self.alive():
            with self.lock:
                recent = [s for s in self.slices[-50:] if s.t1 > since]
            if any(s.quiet for s in recent):
                return ""
            last = recent[-1].present if recent else last
            time.sleep(0.1)
        return last

    def covered(self, t0: float, t1: float) -> bool:
        """Every workload completed at least one slice inside [t0, t1]."""
        return {s.workload for s in self.within(t0, t1)} >= set(self.workloads)

    def stderr_text(self) -> str:
        self.stderr_file.seek(0)
        text = self.stderr_file.read()
        self.stderr_file.seek(0, os.SEEK_END)
        return text

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr_file.close()


# --- phases ------------------------------------------------------------------------------


@dataclass
class Phase:
    column: str  # "" = unattached, else the attached column's name
    round: int
    t0: float = 0.0
    t1: float = 0.0
    mode: str = ""
    method: str = ""
    notes: list[str] = field(default_factory=list)
    error: str = ""


def rate_column(rate: int) -> str:
    if rate >= 1024 and rate % 1024 == 0:
        kib = rate // 1024
        return f"{kib // 1024} MiB" if kib % 1024 == 0 else f"{kib} KiB"
    return str(rate)


def sleep_until(deadline: float) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))


def unattached(driver: Driver, seconds: float, rnd: int) -> Phase:
    """A baseline window, opened once the target shows no trace of a profiler."""
    phase = Phase("", rnd)
    still = driver.wait_quiet(time.monotonic(), QUIET_TIMEOUT)
    if still:
        phase.notes.append(f"{QUIET_TIMEOUT:g} s after detaching the target still had {still}")
    phase.t0 = time.monotonic()
    sleep_until(phase.t0 + seconds)
    phase.t1 = time.monotonic()
    return phase


def control_phase(seconds: float, rnd: int) -> Phase:
    """An 'attached' phase with nothing attached: the method's own noise."""
    phase = Phase(CONTROL_COLUMN, rnd, t0=time.monotonic(), mode="nothing")
    sleep_until(phase.t0 + seconds)
    phase.t1 = time.monotonic()
    return phase


def heapspy_phase(
    driver: Driver, rate: int, frames: int, seconds: float, rnd: int, dump_dir: Path
) -> Phase:
    phase = Phase(rate_column(rate), rnd)
    config = AttachConfig(rate=rate, frames=frames, final_dump=False, dump_dir=dump_dir)
    try:
        session = Session.attach(driver.pid, config)
    except HeapspyError as exc:
        phase.error = f"attach failed: {exc.message}"
        return phase
    except OSError as exc:
        phase.error = f"attach failed: {exc}"
        return phase
    try:
        assert session.info is not None
        phase.mode, phase.method = session.info.mode, session.info.method
        phase.notes = list(session.info.notes)
        phase.t0 = time.monotonic()
        # run() streams in a thread of its own while this one watches the driver and
        # ends the phase (request_stop only sets a flag) once every workload is measured.
        ended: list[str] = []
        runner = threading.Thread(
            target=lambda: ended.append(session.run(duration=seconds * STRETCH)), daemon=True
        )
        runner.start()
        while runner.is_alive():
            runner.join(0.2)
            now = time.monotonic()
            if now - phase.t0 >= seconds and driver.covered(phase.t0, now):
                session.request_stop("every workload measured")
        phase.t1 = time.monotonic()
        reason = ended[0] if ended else "run() raised"
        if reason not in ("duration elapsed", "every workload measured"):
            phase.notes.append(f"session ended early: {reason}")
    finally:
        session.detach()
    return phase


def _memray(
    interp: Interpreter, site: Path, args: list[str], timeout: float = 60
) -> tuple[str, float]:
    """Run the memray CLI in the target's interpreter (it must find the memray that the
    target imports); the error ("" if none) and how long it took."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            interp.command("-m", "memray", *args),
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(site)),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"`memray {args[0]}` did not return within {timeout:g} s", timeout
    error = "" if proc.returncode == 0 else " ".join((proc.stderr + proc.stdout).split())
    return error, time.monotonic() - started


def memray_phase(
    driver: Driver, interp: Interpreter, site: Path, seconds: float, rnd: int, out_dir: Path
) -> Phase:
    """`memray attach -o FILE PID`, the window, then `memray detach PID`."""
    # memray's defaults: every allocation that reaches malloc goes to the file, pymalloc's
    # small objects are not seen (no --trace-python-allocators), no native stacks.
    phase = Phase(MEMRAY_COLUMN, rnd, mode="all")
    phase.notes.append("memray defaults: malloc-level allocations, pymalloc not traced")
    # 3.14 injects with sys.remote_exec (PEP 768), older versions through gdb.
    phase.method = "sys.remote_exec" if interp.version >= (3, 14) else "gdb"
    out = out_dir / f"memray-{driver.pid}-{rnd}.bin"
    error, took = _memray(
        interp,
        site,
        [
            "attach",
            "--method",
            phase.method,
            "-o",
            str(out),
            "-f",
            "--no-compress",
            str(driver.pid),
        ],
    )
    if error:
        phase.error = f"memray attach failed: {error}"
        return phase
    phase.t0 = time.monotonic()  # tracking started before the CLI returned
    while True:
        time.sleep(0.2)
        now = time.monotonic()
        if now - phase.t0 >= seconds * STRETCH:
            break
        if now - phase.t0 >= seconds and driver.covered(phase.t0, now):
            break
    phase.t1 = time.monotonic()
    error, _ = _memray(interp, site, ["detach", "--method", phase.method, str(driver.pid)])
    if error:
        phase.notes.append(f"memray detach failed: {error}")
    with contextlib.suppress(OSError):
        size = out.stat().st_size
        out.unlink()
        log(f"  memray: attach took {took:.1f} s, capture file {size / 2**20:.1f} MiB")
    return phase


# --- analysis ---------------------------------------------------------------------------


def geomean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def throughput(slices: list[Slice]) -> dict[str, tuple[float, float]]:
    """Per workload: calls per second of wall-clock time, calls per CPU second."""
    sums: dict[str, tuple[int, float, float]] = {}
    for s in slices:
        calls, secs, cpu = sums.get(s.workload, (0, 0.0, 0.0))
        sums[s.workload] = (calls + s.calls, secs + (s.t1 - s.t0), cpu + s.cpu)
    return {w: (c / t, c / max(cpu, 1e-9)) for w, (c, t, cpu) in sums.items()}


@dataclass
class Column:
    name: str
    ratios: dict[str, list[float]] = field(default_factory=dict)  # workload -> per round
    cpu_ratios: dict[str, list[float]] = field(default_factory=dict)  # the same per CPU s
    modes: set[str] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    round_geomeans: list[tuple[float, int]] = field(default_factory=list)  # (value, workloads)
    dropped: int = 0  # baseline slices that still saw a profiler

    def ratio(self, workload: str) -> float | None:
        return geomean(self.ratios.get(workload, []))

    def cpu_ratio(self, workload: str) -> float | None:
        return geomean(self.cpu_ratios.get(workload, []))


def analyse(driver: Driver, phases: list[Phase], columns: list[str]) -> dict[str, Column]:
    result = {name: Column(name) for name in columns}
    for i, phase in enumerate(phases):
        if not phase.column:
            continue
        col = result[phase.column]
        if phase.mode:
            col.modes.add(phase.mode)
        if phase.method:
            col.methods.add(phase.method)
        col.notes.extend(n for n in phase.notes if n not in col.notes)
        if phase.error:
            col.errors.append(phase.error)
            continue
        attached = throughput(driver.within(phase.t0, phase.t1))
        base_slices: list[Slice] = []
        for j in (i - 1, i + 1):
            if 0 <= j < len(phases) and not phases[j].column:
                inside = driver.within(phases[j].t0, phases[j].t1)
                quiet = [s for s in inside if s.quiet]
                base_slices += quiet
                col.dropped += len(inside) - len(quiet)
                col.notes.extend(n for n in phases[j].notes if n not in col.notes)
        base = throughput(base_slices)
        this_round = []
        for w in driver.workloads:
            if w in attached and w in base:
                r = attached[w][0] / base[w][0]
                col.ratios.setdefault(w, []).append(r)
                col.cpu_ratios.setdefault(w, []).append(attached[w][1] / base[w][1])
                this_round.append(r)
        g = geomean(this_round)
        if g is not None:
            col.round_geomeans.append((g, len(this_round)))
    return result


def _cell(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if value >= 0.1 else f"{value:.4f}"


def render(
    label: str, driver: Driver, columns: dict[str, Column], seconds: float, rounds: int
) -> str:
    names = list(columns)
    workloads = driver.workloads
    n_all = len(workloads)
    rows: list[list[str]] = [
        ["rate", *names],
        ["mode", *("/".join(sorted(columns[n].modes)) or "-" for n in names)],
    ]
    rows += [[w, *(_cell(columns[n].ratio(w)) for n in names)] for w in workloads]
    geo, slow, cpu = ["geomean"], ["slowdown"], ["per CPU s"]
    for n in names:
        vals = [v for w in workloads if (v := columns[n].ratio(w)) is not None]
        g = geomean(vals)
        geo.append(_cell(g) + ("" if len(vals) in (0, n_all) else f" ({len(vals)}/{n_all})"))
        slow.append(f"{1 / g:.2f}x" if g else "n/a")
        cpu.append(_cell(geomean(v for w in workloads if (v := columns[n].cpu_ratio(w)))))
    rows += [geo, slow, cpu]
    first = max(len(r[0]) for r in rows) + 1
    width = max(len(c) for r in rows for c in r[1:]) + 2
    lines = [
        f"== {label}: throughput attached / unattached (1.000 = no slowdown), "
        f"{rounds} round(s) of {seconds:g} s phases =="
    ]
    lines += [f"{r[0]:<{first}}" + "".join(f"{c:>{width}}" for c in r[1:]) for r in rows]
    for n in names:
        col = columns[n]
        extra = [f"via {'/'.join(sorted(col.methods))}"] if col.methods else []
        if col.round_geomeans:
            per_round = [_cell(g) + ("" if k == n_all else f"({k})") for g, k in col.round_geomeans]
            extra.append("geomean per round: " + " ".join(per_round))
        if col.dropped:
            extra.append(f"{col.dropped} baseline slices dropped (a profiler was still there)")
        lines.append(f"  {n}: " + "; ".join(extra + col.notes + col.errors))
        missing = [w for w in workloads if col.ratio(w) is None]
        if missing and len(missing) < n_all:
            lines.append(
                f"    n/a: {', '.join(missing)} completed no slice while attached "
                "(slower than the phase allows: raise --seconds)"
            )
    lines.append(
        "  per CPU s: the geomean of calls per CPU second of the whole target, attached /"
        " unattached (counts the profiler's own threads, not time lost to other processes)"
    )
    lines += [f"  skipped {w}: {why}" for w, why in driver.skipped.items()]
    return "\n".join(lines)


# --- running -----------------------------------------------------------------------------


def run_phases(
    driver: Driver,
    interp: Interpreter,
    args: argparse.Namespace,
    memray_site: Path | None,
    work: Path,
) -> list[Phase]:
    """Unattached, then each attached phase followed by an unattached one."""
    if not driver.wait_ready(120):
        raise RuntimeError("the driver did not start:\n" + driver.stderr_text()[-2000:])
    for w, why in driver.skipped.items():
        log(f"{interp.label}: skipping {w}: {why}")
    log(f"{interp.label}: driver pid {driver.pid} runs {', '.join(driver.workloads)}")
    start = time.monotonic()
    while not driver.covered(start, time.monotonic()):  # warm-up: one full turn
        time.sleep(0.2)
        if not driver.alive():
            raise RuntimeError("the driver exited:\n" + driver.stderr_text()[-2000:])
    phases = [unattached(driver, args.seconds, 0)]
    rounds = range(1, args.rounds + 1)
    # heapspy's rates (and the control) interleaved in each round, so that drift hits
    # them alike; memray last, so that anything it leaves cannot touch heapspy's baselines.
    kinds = [("control", 0)] if args.control else []
    kinds += [("heapspy", rate) for rate in args.rates]
    plan = [(rnd, kind, rate) for rnd in rounds for kind, rate in kinds]
    plan += [(rnd, "memray", 0) for rnd in rounds] if memray_site else []
    for rnd, kind, rate in plan:
        if not driver.alive():
            log(f"{interp.label}: the driver died: {driver.stderr_text()[-2000:]}")
            break
        if kind == "memray":
            assert memray_site is not None
            phase = memray_phase(driver, interp, memray_site, args.seconds, rnd, work)
        elif kind == "control":
            phase = control_phase(args.seconds, rnd)
        else:
            phase = heapspy_phase(driver, rate, args.frames, args.seconds, rnd, work)
        how = f", {phase.mode} via {phase.method}" if phase.method else ""
        status = phase.error or f"{phase.t1 - phase.t0:.1f} s{how}"
        log(f"{interp.label}: round {rnd} {phase.column}: {status}")
        phases.append(phase)
        phases.append(unattached(driver, args.seconds, rnd))
    return phases


def run_interpreter(
    interp: Interpreter,
    args: argparse.Namespace,
    site: Path,
    bench_dir: Path,
    cache: Path,
    work: Path,
) -> dict[str, Any] | None:
    memray_site: Path | None = None
    memray_why = "disabled (--no-memray)"
    if args.memray:
        memray_site, memray_why = provision_memray(cache, interp.version)
    path = [site] + ([memray_site] if memray_site else [])
    driver = Driver(interp, bench_dir, path, args.workloads, args.slice)
    try:
        phases = run_phases(driver, interp, args, memray_site, work)
    except RuntimeError as exc:
        print(f"== {interp.label}: not measured: {exc}", flush=True)
        return None
    finally:
        driver.stop()
    columns = [CONTROL_COLUMN] if args.control else []
    columns += [rate_column(r) for r in args.rates]
    columns += [MEMRAY_COLUMN] if memray_site else []
    result = analyse(driver, phases, columns)
    if not memray_site:
        result[MEMRAY_COLUMN] = Column(MEMRAY_COLUMN, errors=[f"not run: {memray_why}"])
    label = f"{interp.label} (pid {driver.pid})"
    print(render(label, driver, result, args.seconds, args.rounds) + "\n", flush=True)
    return {
        "interpreter": interp.label,
        "workloads": driver.workloads,
        "skipped": driver.skipped,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "frames": args.frames,
        "columns": {
            n: {
                "modes": sorted(c.modes),
                "methods": sorted(c.methods),
                "ratios": c.ratios,
                "cpu_ratios": c.cpu_ratios,
                "round_geomeans": c.round_geomeans,
                "notes": c.notes,
                "errors": c.errors,
            }
            for n, c in result.items()
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n\n", 2)[-1],
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s phases")
    parser.add_argument("--seconds", type=float, help="seconds per phase (default 5; quick 3)")
    parser.add_argument("--rounds", type=int, help="attached phases per rate (default 3; quick 1)")
    parser.add_argument("--interpreters", default="3.11,3.14", help="labels or versions")
    parser.add_argument("--rates", default="1,64KiB,512KiB", help="sampling rates, bytes")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="default: all eleven")
    parser.add_argument(
        "--frames", type=int, default=AttachConfig().frames, help="stack depth (heapspy's default)"
    )
    parser.add_argument("--slice", type=float, default=0.15, help="driver's turn per workload")
    parser.add_argument(
        "--no-memray", dest="memray", action="store_false", help="skip the memray column"
    )
    parser.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        help="also a column with nothing attached, the noise floor (default: on unless quick)",
    )
    parser.add_argument(
        "--agent-timeout",
        type=float,
        default=120.0,
        help="seconds of agent silence before a session gives up (heapspy's default: 5)",
    )
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 3.0 if args.quick else 5.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.control is None:
        args.control = not args.quick
    args.rates = [parse_size(r, "rate") for r in args.rates.split(",") if r.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workloads {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    args.interpreters = [i.strip() for i in args.interpreters.split(",") if i.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache = args.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    site, bench_dir = provision_pyperformance(cache)
    work = Path(tempfile.mkdtemp(prefix="heapspy-overhead-"))
    os.environ.setdefault("HEAPSPY_RUNTIME_DIR", str(work / "run"))
    interps = pick_interpreters(args.interpreters)
    load = os.getloadavg()
    print(
        f"heapspy overhead: {len(args.workloads)} pyperformance workloads, frames={args.frames}, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} at start",
        flush=True,
    )
    if args.agent_timeout > heapspy.channel.AGENT_TIMEOUT:
        # Exact mode (tracemalloc, 64 frames) on these workloads leaves the agent silent
        # for 10-25 s at a time, and a session gives up on an agent silent for 5 s: that
        # would cut every exact phase short. The target's cost does not depend on it.
        print(
            f"(heapspy.channel.AGENT_TIMEOUT raised from {heapspy.channel.AGENT_TIMEOUT:g} "
            f"to {args.agent_timeout:g} s for this run)",
            flush=True,
        )
        heapspy.channel.AGENT_TIMEOUT = args.agent_timeout
    results = []
    t0 = time.monotonic()
    try:
        for interp in interps:
            result = run_interpreter(interp, args, site, bench_dir, cache, work)
            if result is not None:
                results.append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"done in {time.monotonic() - t0:.0f} s; load average {os.getloadavg()[0]:.2f} at end",
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
