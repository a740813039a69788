"""Hostile targets against the agent's placement: symlink races, an unsafe /tmp, pid reuse.

Every target here runs as ``heapspy-hostile``, an unprivileged user the tests create;
heapspy runs as root, as the daemon does. The canaries are root-owned files that a
racing target points its symlinks at: they must come out of every case unchanged, and
nothing root-owned may be left in the target's filesystem.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from interpreters import Interpreter, py314
from support import run_heapspy, wait_for
from untrusted_user import as_untrusted, untrusted_ids

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PY311 = Interpreter((3, 11), ("/usr/bin/python3.11",), "3.11-debian-static", static=True)

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a hostile user"),
]


def hostile_ids() -> tuple[int, int]:
    return untrusted_ids()


def as_hostile() -> list[str]:
    return list(as_untrusted())


@dataclass
class Canaries:
    """Root-owned files a hostile target aims at, and what they looked like."""

    base: Path
    file: Path
    dir: Path

    @classmethod
    def make(cls, base: Path) -> Canaries:
        base.mkdir(mode=0o755)
        file = base / "canary.txt"
        file.write_text("root's own\n")
        file.chmod(0o644)
        d = base / "canary.d"
        d.mkdir(mode=0o755)
        return cls(base, file, d)

    def check(self) -> None:
        st = self.file.lstat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o644)
        assert self.file.read_text() == "root's own\n"
        st = self.dir.lstat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o755)
        assert sorted(os.listdir(self.dir)) == []


@pytest.fixture
def canaries() -> Iterator[Canaries]:
    # outside /tmp and outside pytest's root-only tmp_path: a place any user can name
    base = Path(f"/var/lib/heapspy-canaries-{os.getpid()}-{time.monotonic_ns()}")
    made = Canaries.make(base)
    yield made
    shutil.rmtree(base, ignore_errors=True)


def root_owned_left(pid: int, tmp: Path = Path("/tmp")) -> list[str]:
    """Everything root owns under the target's session directories (links not followed)."""
    found = []
    for top in tmp.glob(f"heapspy-{pid}-*"):
        stack = [top]
        while stack:
            p = stack.pop()
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            if st.st_uid == 0:
                found.append(str(p))
            if p.is_dir() and not p.is_symlink():
                stack.extend(p.iterdir())
    return found


def remove_session_dirs(pid: int, tmp: Path = Path("/tmp")) -> None:
    for left in tmp.glob(f"heapspy-{pid}-*"):
        if left.is_symlink() or not left.is_dir():
            left.unlink()
        else:
            shutil.rmtree(left, ignore_errors=True)


class Hostile:
    """A target run as the hostile user: ``racer.py`` unless told otherwise."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/"
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.proc.kill()
            raise AssertionError(f"hostile target did not start: {line!r}")
        self.pid = int(line.split()[1])

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        _, err = self.proc.communicate(timeout=30)
        return err


def racer(interp: Interpreter, canaries: Canaries) -> Hostile:
    return Hostile(
        [*as_hostile(), *interp.argv, "-I", str(HERE / "racer.py"), str(canaries.file),
         str(canaries.dir)]
    )  # fmt: skip


def interp_for(method: str) -> Interpreter:
    return py314() if method == "pep768" else PY311


# strace (on the main thread only, where the placement runs: the watcher processes a
# timed-out attach leaves must not keep strace alive) widens every window in which root
# works in the session directory: each of these calls returns 20 ms late, an age for a
# target spinning on os.listdir. Before the fix, this made root chown a canary to the
# target's user (the socket swapped for a link between bind and chown).
SLOW_CALLS = "mkdir,mkdirat,chown,fchown,fchownat,lchown,chmod,fchmod,fchmodat,bind,unlinkat"


@pytest.mark.slow
@pytest.mark.parametrize(
    "attaches",
    [pytest.param(12, id="12"), pytest.param(50, id="50", marks=pytest.mark.soak)],
)
@pytest.mark.parametrize("method", ["ptrace", "pep768"])
def test_racing_target_cannot_reach_root_files(
    method: str, attaches: int, canaries: Canaries
) -> None:
    """12 attaches per injection path (50 under `make soak`) against a target that swaps
    the session directory, the package, the socket and the files for symlinks to root's
    canaries, with strace slowing root's every step: the canaries never change, and
    root leaves nothing of its own behind."""
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    interp = interp_for(method)
    target = racer(interp, canaries)
    try:
        env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'agent'}"}
        out = subprocess.run(
            ["strace", "-qq", "-o", "/dev/null",
             "-e", f"trace={SLOW_CALLS}", "-e", f"inject={SLOW_CALLS}:delay_exit=20000",
             sys.executable, str(HERE / "attach_loop.py"), str(target.pid), str(attaches), method],
            capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert target.proc.poll() is None, "the target died"
    finally:
        said = target.stop()
        left = root_owned_left(target.pid)
        remove_session_dirs(target.pid)  # the racer's own leftovers, even on failure
    canaries.check()
    assert "crash" not in result["errors"], result
    assert sum(result["errors"].values()) + result["attached"] == attaches
    assert left == []
    # the racer did race: it swapped things in the directories it could reach
    assert "swapped" in said or result["attached"] == attaches, (result, said)


@pytest.mark.skipif(not shutil.which("unshare"), reason="unshare (util-linux) is missing")
@pytest.mark.parametrize(
    ("mount", "why"),
    [
        ("mode=0777", "is writable by every user and has no sticky bit (mode 0777)"),
        ("mode=1777,uid=65534,gid=65534", "belongs to another user (uid 65534)"),
    ],
    ids=["no-sticky", "other-owner"],
)
def test_unsafe_tmp_is_refused(mount: str, why: str, tmp_path: Path) -> None:
    """A target whose /tmp another user can rearrange under root is refused with a
    sentence (exit 7), and nothing is created there."""
    uid, gid = hostile_ids()
    inner = (
        f"mount -t tmpfs -o {mount},size=1m heapspy-hostile-tmp /tmp && "
        f"exec {' '.join(as_hostile())} {PY311.argv[0]} -I -c "
        '\'import time; print("READY", __import__("os").getpid(), flush=True); '
        "[time.sleep(0.01) for _ in iter(int, 1)]'"
    )
    target = Hostile(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner])
    try:
        out = run_heapspy(
            "attach", str(target.pid), "--duration", "1", "--dump-dir", str(tmp_path / "d")
        )
        listing = os.listdir(f"/proc/{target.pid}/root/tmp")
    finally:
        target.stop()
    assert out.returncode == 7, out.stderr
    assert f"Process {target.pid}'s /tmp {why}" in out.stderr, out.stderr
    assert listing == []


def _spawn_at(pid: int, argv: list[str]) -> subprocess.Popen[str] | None:
    """Start ``argv`` as process ``pid`` (via ns_last_pid), or None if another process
    took the pid first."""
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd="/")
    if proc.pid == pid:
        return proc
    proc.kill()
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    return None


SLEEPER = ["-I", "-c", "import time; print('READY', flush=True); time.sleep(600)"]


@pytest.mark.parametrize("method", ["ptrace", "pep768"])
def test_reused_pid_is_refused(method: str) -> None:
    """Inspected, then gone, and its pid given to a new Python before the injection: the
    injection refuses the newcomer (exit 9, as for a vanished target), leaving it as it
    was."""
    from heapspy.errors import TargetExited
    from heapspy.target.process import inspect_target

    interp = interp_for(method)
    first = subprocess.Popen([*interp.argv, *SLEEPER], stdout=subprocess.PIPE, text=True)
    assert first.stdout is not None and first.stdout.readline().startswith("READY")
    target = inspect_target(first.pid)
    first.kill()
    first.wait()
    first.stdout.close()
    newcomer = None
    for _ in range(50):
        newcomer = _spawn_at(target.pid, [*interp.argv, *SLEEPER])
        if newcomer is not None:
            break
    if newcomer is None:
        pytest.skip(f"could not get pid {target.pid} again (a busy machine took it)")
    try:
        assert newcomer.stdout is not None and newcomer.stdout.readline().startswith("READY")
        with pytest.raises(TargetExited) as err:
            if method == "ptrace":
                from heapspy.inject.ptrace import inject_pending_call

                inject_pending_call(target, lambda page: b"pass\n")
            else:
                from heapspy.inject.pep768 import request_exec

                request_exec(target, "/nonexistent/boot.py")
        assert err.value.exit_code == 9
        assert f"Process {target.pid} exited" in err.value.message
        assert newcomer.poll() is None
    finally:
        newcomer.kill()
        newcomer.wait()
        assert newcomer.stdout is not None
        newcomer.stdout.close()


CHILD_WITH_START = """
import json, sys
from pathlib import Path
from heapspy.config import AttachConfig
from heapspy.daemon.child import AttachChild
pid, start, dumps = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
child = AttachChild(pid, AttachConfig(dump_dir=dumps, attach_timeout=5.0), start)
code = child.wait(60)
child.finish()
print(json.dumps({"code": code, "said": child.early}))
"""


def test_daemon_child_refuses_another_process(tmp_path: Path) -> None:
    """The daemon hands its session process (pid, start time): a process with that pid
    but another start time is not attached (exit 9). (In a fresh interpreter: a forked
    session process must not inherit pytest's capture.)"""
    from heapspy.target.process import start_time

    proc = subprocess.Popen([*PY311.argv, *SLEEPER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("READY")
        env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'agent'}"}
        out = subprocess.run(
            [sys.executable, "-c", CHILD_WITH_START, str(proc.pid),
             str(start_time(proc.pid) + 1), str(tmp_path)],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        result = json.loads(out.stdout)
        assert result["code"] == 9, (result, out.stderr)
        assert result["said"] == [
            f"Process {proc.pid} exited (its pid may already name another process); "
            "nothing was done."
        ]
        assert proc.poll() is None
        assert not list(Path("/tmp").glob(f"heapspy-{proc.pid}-*"))
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_queued_bootstrap_files_go_when_the_target_dies(tmp_path: Path) -> None:
    """A bootstrap still queued when heapspy gives up (main thread asleep) leaves its
    files for the bootstrap; if the target then dies instead of running it, heapspy
    removes them (nothing is left in /tmp)."""
    target = Hostile(
        [*as_hostile(), *PY311.argv, "-I", "-c",
         "import os, time; print('READY', os.getpid(), flush=True); time.sleep(600)"]
    )  # fmt: skip
    try:
        out = run_heapspy(
            "attach", str(target.pid), "--attach-timeout", "1", "--method", "ptrace",
            "--no-nudge", "--dump-dir", str(tmp_path),
        )  # fmt: skip
        assert out.returncode == 11, out.stderr
        assert list(Path("/tmp").glob(f"heapspy-{target.pid}-*")), "nothing was queued"
    finally:
        os.kill(target.pid, signal.SIGKILL)
        target.stop()
    try:
        assert wait_for(lambda: not list(Path("/tmp").glob(f"heapspy-{target.pid}-*")), 30)
    finally:
        remove_session_dirs(target.pid)


def _tracer_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith("TracerPid:"))
    return int(line.split()[1])


def test_daemon_kills_a_session_that_does_not_attach_in_time(tmp_path: Path) -> None:
    """A session process held up before attaching (here: stopped, after its injection)
    is killed at attach_timeout + ATTACH_GRACE and counted as a failed attempt, so that
    such targets cannot hold the max_attaching slots forever."""
    import psutil

    from heapspy.daemon.supervise import ATTACH_GRACE

    tag = f"heapspy-deadline-{os.getpid()}-{time.monotonic_ns()}"
    target = subprocess.Popen(
        [*PY311.argv, "-I", "-c", "import sys, time; time.sleep(600)", tag]
    )  # main thread asleep: the pending call waits, the session waits attach_timeout
    config = tmp_path / "heapspy.toml"
    config.write_text(
        '[daemon]\nscan_interval = "0.2s"\nsettle = "0.3s"\nretry_backoff = "30s"\n'
        f'[[watch]]\nname = "w"\ncmdline = "{tag}"\ndump_dir = "{tmp_path / "d"}"\n'
        'method = "ptrace"\nattach_timeout = "3s"\nnudge = false\n'
    )
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "heapspy", "daemon", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def session_process() -> psutil.Process | None:
            kids = psutil.Process(daemon.pid).children()
            return kids[0] if kids else None

        assert wait_for(lambda: session_process() is not None, 60), log_path.read_text()
        child = session_process()
        assert child is not None
        # stopped once its bootstrap is queued and the target let go (never mid-ptrace)
        assert wait_for(
            lambda: (
                bool(list(Path("/tmp").glob(f"heapspy-{target.pid}-*")))
                and _tracer_of(target.pid) == 0
            ),
            30,
        )
        child.send_signal(signal.SIGSTOP)
        limit = f"{3 + ATTACH_GRACE:g} s"
        want = f"attach failed (exit -9): not attached within {limit}"
        assert wait_for(lambda: want in log_path.read_text(), 60), log_path.read_text()
        text = log_path.read_text()
        assert f"not attached within {limit}: killing its session process (pid {child.pid})" in text
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        assert target.poll() is None
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        target.kill()
        target.wait()
        remove_session_dirs(target.pid)
        # a SIGKILLed session leaves its lock file (the lock itself went with it)
        runtime = Path(os.environ["HEAPSPY_RUNTIME_DIR"]) / "sessions"
        (runtime / f"{target.pid}.lock").unlink(missing_ok=True)


@pytest.mark.parametrize("planted", ["root-dir", "link"])
def test_planted_runtime_dir_is_refused(planted: str, tmp_path: Path) -> None:
    """Another user (here root) made the predictable fallback runtime dir
    ``/tmp/heapspy-UID`` first: heapspy, run as UID, refuses it and says why."""
    uid, gid = hostile_ids()
    runtime = Path(f"/tmp/heapspy-{uid}")
    aside = runtime.with_name(f"{runtime.name}.aside-{os.getpid()}")
    if runtime.exists() or runtime.is_symlink():
        runtime.rename(aside)
    elsewhere = tmp_path / "theirs"
    try:
        if planted == "root-dir":
            runtime.mkdir(mode=0o700)
            why = f"belongs to uid 0, not to you (uid {uid})"
        else:
            elsewhere.mkdir(mode=0o700)
            os.chown(elsewhere, uid, gid)
            tmp_path.chmod(0o755)
            runtime.symlink_to(elsewhere)
            why = "is a symbolic link"
        env = {k: v for k, v in os.environ.items()
               if k not in ("XDG_RUNTIME_DIR", "HEAPSPY_RUNTIME_DIR")}  # fmt: skip
        env.update(HOME="/", PYTHONPATH=f"{REPO}:{REPO / 'agent'}")
        out = subprocess.run(
            [*as_hostile(), sys.executable, "-m", "heapspy", "status"],
            capture_output=True, text=True, timeout=60, env=env, cwd="/",
        )  # fmt: skip
    finally:
        if runtime.is_symlink():
            runtime.unlink()
        elif runtime.exists():
            shutil.rmtree(runtime)
        if aside.exists() or aside.is_symlink():
            aside.rename(runtime)
    assert out.returncode == 7, out.stderr
    assert f"{runtime} {why}: it is not a private directory of yours" in out.stderr
    assert list(elsewhere.iterdir()) == [] if elsewhere.exists() else True
