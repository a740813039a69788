"""The native sampling shim and its ctypes binding, driven directly (no attach).

Each scenario is a script in ``tests/shim_targets/`` run in a fresh subprocess of every
interpreter (the shim changes the process's allocators), with PYTHONPATH at ``agent/``
and the library compiled from ``Cargo-free/`` for this test session with -Werror. The
script prints one JSON line of observations; the assertions live here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from heapspy_agent.shim import ERR_FREE_THREADED, scale_heap_sample
from interpreters import Interpreter, interpreter_params, numpy_site

REPO = Path(__file__).resolve().parent.parent
TARGETS = REPO / "tests" / "shim_targets"
SOURCES = sorted(str(p) for p in (REPO / "Cargo-free").glob("*.c"))
# The flags setup.py uses, plus -Werror: the shim must stay warning-clean.
CFLAGS = ["-O2", "-std=gnu11", "-fPIC", "-shared", "-fvisibility=hidden", "-Wall", "-Wextra"]
KiB = 1024
MiB = 1024 * KiB

INTERPRETERS = interpreter_params()


@pytest.fixture(scope="session")
def shim_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc or not shutil.which(cc):
        pytest.skip("no C compiler: the shim cannot be built (the agent uses tracemalloc)")
    out = tmp_path_factory.mktemp("shim") / "_heapspy_shim.so"
    proc = subprocess.run(
        [cc, *CFLAGS, "-Werror", "-I", str(REPO / "Cargo-free"), "-o", str(out), *SOURCES,
         "-lm", "-ldl"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def run(
    interp: Interpreter,
    shim_so: Path,
    script: str,
    *args: str,
    malloc: str | None = None,
    timeout: float = 120,
    path: tuple[Path, ...] = (),
) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("PYTHONMALLOC", None)
    env.update(
        PYTHONPATH=os.pathsep.join(map(str, (REPO / "agent", *path))),
        HEAPSPY_SHIM=str(shim_so),
        PYTHONDONTWRITEBYTECODE="1",
    )
    if malloc:
        env["PYTHONMALLOC"] = malloc
    proc = subprocess.run(
        interp.command("-X", "faulthandler", str(TARGETS / script), *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, f"{script} {args} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def within(estimate: float, truth: float, tolerance: float) -> bool:
    return abs(estimate - truth) <= tolerance * truth


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_estimates_match_truth_at_64kib(interp: Interpreter, shim_so: Path) -> None:
    """56 MiB retained at each of three functions, 200 MiB of churn at a fourth.

    Tolerances are ~4.5 standard deviations of the estimator (sqrt((1-p)/(n p)) for n
    objects sampled with probability p): 3.3 % for 1 KiB objects, 0.9 % for 256 KiB ones,
    1.7 % for the churn's 4 KiB objects.
    """
    r = run(interp, shim_so, "accuracy.py", str(64 * KiB), "17")
    lines = r["lines"]
    small, large, mixed, churn = r["small"], r["large"], r["mixed"], r["churn"]
    # One line, one size: the shim's per-sample estimate and Go's per-stack one agree.
    for site, tolerance in ((small, 0.15), (large, 0.05)):
        assert site["truth"] >= 50 * MiB
        assert within(site["est_live_bytes"], site["truth"], tolerance), site
        assert within(site["go_live_bytes"], site["truth"], tolerance), site
        assert math.isclose(site["go_live_bytes"], site["est_live_bytes"], rel_tol=1e-6)
    # One line mixing 1000-byte and 1 MiB objects: the shim weighs each sample.
    assert within(mixed["est_live_bytes"], mixed["truth"], 0.15), mixed
    # Temporaries freed before anyone looked still count as allocated, not as live.
    assert within(churn["est_alloc_bytes"], churn["truth_alloc"], 0.10), churn
    assert churn["alloc_count"] > 1000 and churn["live_count"] <= 1
    # The retained data's whole stack, root -> leaf, with the allocating line.
    assert [["<module>", lines["call_main"]], ["main", lines["call_small"]],
            ["retain_small", lines["small"]]] in r["stacks_small"]  # fmt: skip
    assert r["after_free"] == {"retain_small": 0, "retain_large": 0, "retain_mixed": 0}


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_realloc_transitions_and_edge_cases(interp: Interpreter, shim_so: Path) -> None:
    steps = {s["step"]: s for s in run(interp, shim_so, "transitions.py")["steps"]}
    live = {name: s["live_mib"] for name, s in steps.items() if "live_mib" in s}
    assert live == {
        "start": 0,
        "malloc unsampled": 0,
        "unsampled->sampled": 2,
        "sampled->sampled": 3,  # replaces the 2 MiB entry, does not add to it
        "sampled->unsampled": 0,
        "unsampled->unsampled": 0,
        "realloc(NULL)": 1,
        "failed realloc": 1,  # the old block is intact and still tracked
        "free sampled": 0,
        "malloc(0)": 0,
        "calloc sampled": 3,
        "free calloc": 0,
    }
    assert all(s["rest"] < 64 * KiB for s in steps.values() if "rest" in s)
    # Exact size classes: 1 MiB is class 20, 2 MiB 21, 3-4 MiB 22, 5 MiB 23.
    assert steps["sampled->unsampled"]["classes"] == [1, 1, 2, 0]
    assert steps["unsampled->unsampled"]["classes"] == [1, 1, 2, 1]
    assert steps["realloc(NULL)"]["classes"] == [2, 1, 2, 1]
    assert steps["failed realloc"]["classes"] == [2, 1, 2, 1]  # a failure is no allocation
    assert steps["calloc sampled"]["classes"] == [2, 1, 3, 1]
    assert steps["malloc(0)"]["class0"] - steps["free sampled"]["class0"] == 1
    # A zero-byte allocation is never sampled, even when every other one is.
    assert steps["1000 x malloc(0) at rate 1"]["not_sampled"] == 1000
    # nelem * elsize overflowing: neither counted nor sampled at its wrapped size.
    assert steps["calloc overflow"]["class3"] == 0


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_every_free_of_a_sampled_block_is_seen(interp: Interpreter, shim_so: Path) -> None:
    """The free path's filter never hides a sampled block (shim_targets/frees.py)."""
    r = run(interp, shim_so, "frees.py")
    assert (r["held"], r["half"], r["done"]) == (r["n"], r["n"] // 2, 0)


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_exact_totals_whatever_the_rate(interp: Interpreter, shim_so: Path) -> None:
    r = run(interp, shim_so, "totals.py")
    n_mem, size_mem, n_obj, size_obj, n_re = r["known"]
    off, on = r["runs"]
    for run_ in (off, on):
        mem, obj = run_["mem_classes"], run_["obj_classes"]
        assert (mem[22], obj[22], mem[23], obj[23]) == (n_mem, 0, 0, n_obj)
        assert (mem[26], mem[27]) == (1, 1)
        assert (mem[24], obj[24]) == (n_re, 0)  # reallocs: fast path at rate 0, sampled at 64 KiB
        assert sum(mem) == run_["mem_alloc_count"] and sum(obj) == run_["obj_alloc_count"]
        assert run_["mem_alloc_bytes"] >= n_mem * size_mem + 128 * MiB + 1 + n_re * 9_000_000
        assert run_["obj_alloc_bytes"] >= n_obj * size_obj
        assert run_["mem_realloc_count"] >= n_re
        assert run_["mem_free_count"] >= n_mem + 2 + n_re + 1 and run_["obj_free_count"] >= n_obj
    assert off["sampled_count"] == 0
    # Every 3 MB and 5 MB block is sampled at 64 KiB (p = 1 - exp(-45) and better).
    assert on["sampled_count"] >= n_mem + n_obj + 2
    for k in (22, 23, 24, 26, 27):
        assert off["mem_classes"][k] == on["mem_classes"][k]
        assert off["obj_classes"][k] == on["obj_classes"][k]


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_numpy_array_data_through_its_handler(interp: Interpreter, shim_so: Path) -> None:
    """NumPy's array buffers bypass the PyMem domains; the hooked default handler brings
    them into the estimates (61-64 MiB per function, tolerances ~4.5 sd at 64 KiB), the
    exact totals, and leaves NumPy's handler as it was, also when stopped while threads
    are inside its GIL-releasing calloc."""
    site = numpy_site(interp)
    r = run(interp, shim_so, "numpy_data.py", str(64 * KiB), "20", path=(site,))
    assert r["why"] == "" and r["hooked"], r
    assert r["handler_while_hooked"] == r["handler_after_stop"] == "default_allocator"
    small, zeros, churn = (r["by_caller"][f] for f in ("retain_small", "retain_zeros", "churn"))
    assert within(small[0], r["truth_small"], 0.08), (small, r["truth_small"])
    assert within(zeros[0], r["truth_zeros"], 0.01), (zeros, r["truth_zeros"])
    assert churn[0] < 0.01 * r["truth_churn"], churn  # freed: not live...
    assert within(churn[1], r["truth_churn"], 0.12), churn  # ...but allocated
    alloc_count, alloc_bytes, _frees, reallocs = r["numpy_domain"]
    truth = r["truth_small"] + r["truth_zeros"] + r["truth_churn"]
    assert alloc_bytes >= truth and alloc_count >= 8000 + 8 + 3000, r["numpy_domain"]
    assert reallocs >= 2000, r["numpy_domain"]  # grow(): one resize per 32 elements
    assert r["live_after_free"] == {"retain_small": 0, "retain_zeros": 0}
    assert r["stopped"] is True and r["mapped_after_unload"] is False
    assert r["cycles_unloaded"] == 20 and r["handler_at_end"] == "default_allocator"
    assert r["works_after"] == 45.0


def _check_cycles(r: dict[str, Any], cycles: int) -> None:
    assert r["restored"] == cycles
    assert r["mismatches"] == []
    assert r["calls"] > cycles and r["samples"] > 0
    assert r["mapped_after_unload"] is False


@pytest.mark.parametrize("malloc", [None, "debug"], ids=["pymalloc", "debug"])
@pytest.mark.parametrize("interp", INTERPRETERS)
def test_start_stop_cycles_during_storm(
    interp: Interpreter, shim_so: Path, malloc: str | None
) -> None:
    _check_cycles(run(interp, shim_so, "cycles.py", "20", malloc=malloc), 20)


@pytest.mark.slow
@pytest.mark.parametrize("malloc", [None, "debug"], ids=["pymalloc", "debug"])
@pytest.mark.parametrize("interp", INTERPRETERS)
def test_100_start_stop_cycles_during_storm(
    interp: Interpreter, shim_so: Path, malloc: str | None
) -> None:
    _check_cycles(run(interp, shim_so, "cycles.py", "100", malloc=malloc, timeout=600), 100)


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_chained_on_top_of_tracemalloc(interp: Interpreter, shim_so: Path) -> None:
    r = run(interp, shim_so, "tracemalloc_chain.py", "under")
    assert r["drain_stacks"] > 0 and r["snapshot_traces"] > 10000
    assert r["stop_restored"] is True
    assert r["traced_growth"] >= 1000 * 1000  # tracemalloc's hooks are back and tracing
    assert r["mapped_after_unload"] is False


@pytest.mark.parametrize("malloc", [None, "debug"], ids=["pymalloc", "debug"])
@pytest.mark.parametrize("interp", INTERPRETERS)
def test_tracemalloc_stopped_behind_our_back(
    interp: Interpreter, shim_so: Path, malloc: str | None
) -> None:
    r = run(interp, shim_so, "tracemalloc_chain.py", "stale", malloc=malloc)
    assert r["stop_restored"] is False and r["state"] == r["left"]
    assert r["unload"].startswith("refused")
    assert r["stop_again"] is False and r["alive"] is True


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_tracemalloc_started_on_top_of_us(interp: Interpreter, shim_so: Path) -> None:
    r = run(interp, shim_so, "tracemalloc_chain.py", "over")
    assert r["stop_restored"] is False and r["state_after_stop"] == r["left"]
    assert r["samples_in_second_session"] > 0
    assert r["second_stop_restored"] is True and r["state_final"] == r["idle"]
    assert r["mapped_after_unload"] is False


@pytest.mark.parametrize("malloc", [None, "debug"], ids=["pymalloc", "debug"])
@pytest.mark.parametrize("interp", INTERPRETERS)
def test_sampling_everything_changes_nothing(
    interp: Interpreter, shim_so: Path, malloc: str | None
) -> None:
    """Rate 1 takes a stack for every allocation: stack capture's own allocations must go
    straight through, pending exceptions survive, and the program computes the same."""
    with_shim = run(interp, shim_so, "guard.py", "shim", malloc=malloc)
    without = run(interp, shim_so, "guard.py", "none", malloc=malloc)
    assert with_shim["digest"] == without["digest"]
    # Every allocation is sampled except zero-byte ones (counted in class 0 with 1-byte ones).
    assert with_shim["allocs"] > 10000
    assert 0 <= with_shim["allocs"] - with_shim["sampled"] <= with_shim["size_0_or_1"]
    assert with_shim["stacks"] == 64  # max_stacks
    assert with_shim["overflow_samples"] > 0 and with_shim["stack0"] == [2, 0]
    assert 1 in with_shim["flags"]  # truncated at max_frames
    assert with_shim["max_depth"] == 8


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_refusals(interp: Interpreter, shim_so: Path) -> None:
    r = run(interp, shim_so, "refusals.py")
    codes = r["codes"]
    assert r["free_threaded"] == codes["FREE_THREADED"] == ERR_FREE_THREADED
    assert r["stop_idle"] == r["set_rate_idle"] == codes["NOT_RUNNING"]
    assert r["bad_frames"] == r["too_many_frames"] == codes["ARG"]
    assert r["missing_library"] == r["not_a_shim"] == codes["LOAD"]
    assert r["twice"] == r["unload_running"] == codes["RUNNING"]
    assert r["park_idle"] == r["park_twice"] == r["unpark_twice"] == codes["NOT_RUNNING"]
    assert r["parked_allocs"] < 1000 < 10000 < r["unparked_allocs"]
    if interp.version >= (3, 12):
        assert r["subinterpreter"] == codes["SUBINTERP"]
    else:
        assert r["foreign"] == [[4, 0]]  # STACK_FOREIGN, no frames
    assert r["stopped"] is True
    assert r["after_unload"] == codes["LOAD"] and r["mapped_after_unload"] is False


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_stop_releases_everything_and_unloads(interp: Interpreter, shim_so: Path) -> None:
    r = run(interp, shim_so, "unload.py")
    assert r["stopped"] is True
    assert r["during"][0] > r["before"][0]  # the stack table held the code objects...
    assert r["after"] == r["before"]  # ...and gave every reference back
    assert {"leaf", "middle", "main"} <= set(r["named"])
    assert (r["stacks_after_stop"], r["memory_after_stop"]) == (0, 0)
    assert r["mapped_before"] is True and r["mapped_after"] is False
    assert r["alive"] == 5


@pytest.mark.parametrize("malloc", [None, "debug"], ids=["pymalloc", "debug"])
@pytest.mark.parametrize("interp", INTERPRETERS)
def test_exit_while_running(interp: Interpreter, shim_so: Path, malloc: str | None) -> None:
    assert run(interp, shim_so, "exit_running.py", malloc=malloc) == {"kept": 50000}


def test_scale_heap_sample_is_gos_formula() -> None:
    rate = 512 * KiB
    # One sample of exactly `rate` bytes stands for 1 / (1 - 1/e) of them.
    assert scale_heap_sample(1, rate, rate) == (1, int(rate / (1 - math.exp(-1))))
    count, size = scale_heap_sample(100, 100 * 100, rate)
    assert count == int(100 / (1 - math.exp(-100 / rate)))
    assert scale_heap_sample(0, 0, rate) == (0, 0)
    assert scale_heap_sample(7, 700, 1) == (7, 700)


def test_shim_path_finds_the_library_beside_the_module(tmp_path: Path) -> None:
    pkg = tmp_path / "heapspy_agent"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    shutil.copy(REPO / "agent" / "heapspy_agent" / "shim.py", pkg / "shim.py")
    code = "from heapspy_agent.shim import shim_path; print(shim_path())"
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")

    def found() -> str:
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()

    assert found() == "None"
    build = tmp_path / "build" / "lib.linux-x86_64-cpython-311" / "heapspy_agent"
    build.mkdir(parents=True)
    (build / "_heapspy_shim.so").write_bytes(b"")
    (tmp_path / "agent").mkdir()
    shutil.move(str(pkg), str(tmp_path / "agent" / "heapspy_agent"))
    env["PYTHONPATH"] = str(tmp_path / "agent")
    assert found() == str(build / "_heapspy_shim.so")  # a source checkout's build output
    (tmp_path / "agent" / "heapspy_agent" / "_heapspy_shim.so").write_bytes(b"")
    assert found() == str(tmp_path / "agent" / "heapspy_agent" / "_heapspy_shim.so")


@pytest.mark.slow
@pytest.mark.parametrize("cc", ["cc", "/nonexistent/cc"], ids=["compiler", "no-compiler"])
def test_pip_builds_the_shim_into_the_package_or_warns(tmp_path: Path, cc: str) -> None:
    """``pip wheel .`` puts _heapspy_shim.so inside heapspy_agent; without a compiler the
    build still succeeds, without the library, and says so."""
    # pip builds in the source tree: use a clean copy, no stale build/ or in-place .so.
    src = tmp_path / "src"
    src.mkdir()
    junk = shutil.ignore_patterns("__pycache__", "*.so", "build", "*.egg-info", ".*")
    for name in ("pyproject.toml", "setup.py", "README.md", "Cargo-free", "agent", "heapspy"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=junk)
        else:
            shutil.copy(REPO / name, src / name)
    env = dict(os.environ, CC=cc)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (wheel,) = tmp_path.glob("heapspy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    if cc == "cc":
        assert "heapspy_agent/_heapspy_shim.so" in names
    else:
        assert not any("_heapspy_shim" in n and n.endswith(".so") for n in names)
        assert "sampling shim was not built" in proc.stderr + proc.stdout


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_object_blocks_and_their_types(interp: Interpreter, shim_so: Path) -> None:
    """Every allocation sampled: each object made (builtins, a class with and without
    __slots__, with __weakref__, subclasses of dict/list/bytes/str/int) sits where
    hs_object_block() says, in a sampled block that the type check gives its own type;
    a MEM buffer, an OBJ buffer of zeros and a 16-byte OBJ block holding dict's address
    at ob_type (too small for a dict) get none. Under PYTHONMALLOC=debug (its hooks sit
    below ours: the pointers are the same); tests/test_types.py attaches to every
    interpreter with pymalloc."""
    for malloc in ("debug",):
        r = run(interp, shim_so, "object_types.py", malloc=malloc)
        assert r["wrong"] == [], (malloc, r["wrong"])
        found = r["found"]
        for name in ("dict", "bytes", "str", "int", "set", "bytearray", "Plain", "Slotted",
                     "MyDict", "MyList", "MyBytes", "MyStr", "MyInt", "WithWeak"):  # fmt: skip
            key = name if name[0].islower() else "__main__." + name
            assert found.get(key, 0) >= 30, (malloc, key, found)
        assert r["not_objects"] == [-1, -1, -1]
        assert r["domains"] == r["expect_domains"]
        for name in ("__main__.Plain", "__main__.Slotted", "__main__.MyDict", "bytes"):
            assert r["by_type"].get(name, 0) >= 120, (malloc, name, r["by_type"])


@pytest.mark.parametrize(
    "interp", [p for p in INTERPRETERS if p.values[0].label in ("3.12-pyenv", "3.13-pyenv")]
)
def test_default_task_names_cannot_crowd_out_given_ones(
    interp: Interpreter, shim_so: Path
) -> None:
    """4,200 one-step tasks with asyncio's default name (a str up to 3.12, an int from
    3.13), then one named task: the default names stop at half the named label sets,
    the given name is still read at its sample (shim_targets/task_names.py)."""
    out = run(interp, shim_so, "task_names.py")
    assert out["probe"] is True
    assert out["default"] == out["half"], out
    assert out["named"] == ["after-flood"], out


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_frames_read_in_place_match_the_frame_api(interp: Interpreter, shim_so: Path) -> None:
    """From 3.11 samples read frames in place (frame_walk.c): every capture of a workload
    sampled in full (generators, asyncio tasks, C code calling back into Python, cells
    made before RESUME, truncated recursion) is also walked through the frame API and
    must match it frame by frame; the task labels come out as with the API alone
    (shim_targets/frame_walk.py). Before 3.11 the walk stays off."""
    out = run(interp, shim_so, "frame_walk.py")
    in_place, api = out["in_place"], out["api"]
    assert api["walked"] is False
    if interp.version < (3, 11):
        assert in_place["walked"] is False and in_place["checked"] == 0, in_place["checked"]
        return
    assert in_place["walked"] is True
    assert in_place["checked"] >= 1000, in_place["checked"]
    assert in_place["differ"] == 0, (in_place["differ"], in_place["checked"])

    def tally(stacks: list[str]) -> tuple[int, int, int, int]:
        return (
            sum("'walker'" in s for s in stacks),  # the C Task's name, read at the sample
            sum(s.endswith(", True)") for s in stacks),  # the Python Task's slot
            sum(", True, '" in s for s in stacks),  # truncated
            sum("with_cells" in s for s in stacks),
        )

    walker, _, truncated, cells = tally(in_place["stacks"])
    assert walker > 0 and truncated > 0 and cells > 0, tally(in_place["stacks"])
    assert tally(in_place["stacks"]) == tally(api["stacks"])
