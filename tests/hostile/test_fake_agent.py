"""A target that pre-loads its own ``heapspy_agent``: the bootstrap's import finds the fake,
which then says whatever it likes on heapspy's socket.

Each case runs the real CLI (as root) against a real target run as the dedicated
unprivileged user, and checks the documented outcome: a one-line reason, exit 18 for a
protocol violation (12 for a refusal), the final dump wherever a session existed, no
traceback, heapspy's peak RSS under 200 MB. Text the fake sends (function names, notes,
the Python version, an end reason) never reaches a terminal or a log raw, and cannot
make the daemon stop profiling the process.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from untrusted_user import as_untrusted, run_heapspy_measured, untrusted_ids

from heapspy import control
from heapspy.errors import NoSession
from heapspy.pprof import read_profile

PYTHON = "/usr/bin/python3.11"  # runnable by another user (pyenv's are under /root, 0700)
RSS_BOUND = 200 << 20
EVIL = "evil\x1b]0;pwned\x07\x1b[2Jfn"  # an OSC title change and a screen clear

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play both sides"),
    pytest.mark.skipif(not os.access(PYTHON, os.X_OK), reason=f"needs {PYTHON}"),
]

# The fake agent: heapspy's bootstrap calls start(dir, token, page) as it would the real one.
FAKE_AGENT = r"""
import json, os, socket, struct, threading, time

H = struct.Struct(">IB")
EVIL = "evil\x1b]0;pwned\x07\x1b[2Jfn"


def frame(kind, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return H.pack(len(data), kind) + data


def start(directory, token, page=None):
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    threading.Thread(target=run, args=(config,), daemon=True).start()


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def flood(seq):
    stacks = [
        {"id": seq * 100000 + i,
         "frames": [["f%d_%d_%d" % (seq, i, j), "/x/%d/%d.py" % (i, j), j + 1] for j in range(12)]}
        for i in range(10000)
    ]
    values = {str(s["id"]): [1, 4096] for s in stacks}
    return frame(3, {"seq": seq, "stacks": stacks, "inuse": values, "alloc": values})


def run(config):
    scenario = os.environ["FAKE_SCENARIO"]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(config["socket"])
    token = config["token"] if scenario != "forged-token" else "0" * len(config["token"])
    hello = frame(1, {"version": 2, "token": token, "pid": os.getpid(),
                      "python": "3.11\x1b]0;pwned\x07", "argv": ["worker\x1b[2J"]})
    if scenario == "refuse":  # as a second heapspy's agent refuses: no wait for WELCOME
        s.sendall(hello + frame(5, {"code": "already_attached", "message": "held",
                                    "holder_pid": 1}))
        s.close()
        return
    s.sendall(hello)
    length, _kind = H.unpack(recv_exact(s, 5))
    recv_exact(s, length)  # WELCOME
    ready = frame(2, {"sampling": {"mode": "sampled", "rate": 524288, "frames": 64},
                      "notes": ["note \x1b[31mred\x1b[0m"]})
    sample = frame(3, {"seq": 1,
                       "stacks": [{"id": 1, "frames": [[EVIL, "/app/x.py", 3]]}],
                       "inuse": {"1": [10, 1 << 20]}, "alloc": {"1": [10, 1 << 20]}})
    bad = {
        "oversized": H.pack(100 << 20, 3) + b"{" * 4096,
        "bad-json": frame(3, b'{"seq": 1,'),
        "deep": frame(3, b"[" * 200000 + b"]" * 200000),
        "wrong-types": frame(3, {"seq": 2, "stacks": [{"id": "x", "frames": 7}]}),
        "bad-header": H.pack(2, 3) + b'{"seq": 2}',
        "unknown-kind": frame(99, {}),
        "replayed-hello": hello,
    }
    if scenario == "ready-plus-samples":  # one write: READY and a SAMPLES frame
        s.sendall(ready + sample + frame(4, {"reason": "done"}))
        s.close()
        return
    if scenario == "flood":
        s.sendall(ready)
        for seq in range(2, 8):
            s.sendall(flood(seq))
        s.sendall(sample + frame(4, {"reason": "flooded"}))
        s.close()
        return
    if scenario == "endless-flood":  # floods until heapspy hangs up, answers nothing
        s.sendall(ready)
        seq = 2
        try:
            while True:
                s.sendall(flood(seq))
                seq += 1
        except OSError:
            pass
        s.close()
        return
    if scenario == "stall":  # says nothing more and reads nothing: heapspy waits alone
        s.sendall(ready + sample)
        time.sleep(3600)
        return
    if scenario == "forged-bye":  # what `heapspy detach` makes heapspy say
        s.sendall(ready)
        time.sleep(0.5)  # apart from READY: heapspy once dropped what came with it
        s.sendall(sample + frame(4, {"reason": "detached by `heapspy detach`"}))
        s.close()
        return
    else:
        s.sendall(ready + sample)
        s.sendall(bad[scenario])
    try:  # stay until heapspy hangs up: ending the session is its decision
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()
"""

TARGET = """
import os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake"))
import heapspy_agent  # the fake: what the bootstrap's `import heapspy_agent.agent` finds
print("READY", os.getpid(), flush=True)
while True:
    time.sleep(0.02)
"""


@pytest.fixture
def shared() -> Iterator[Path]:
    """The fake package and the target script, readable by the untrusted user."""
    path = Path(tempfile.mkdtemp(prefix="heapspy-fake-agent-"))
    path.chmod(0o755)
    pkg = path / "fake" / "heapspy_agent"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "agent.py").write_text(FAKE_AGENT)
    (path / "target.py").write_text(TARGET)
    for p in (path / "fake", pkg):
        p.chmod(0o755)
    for f in (pkg / "__init__.py", pkg / "agent.py", path / "target.py"):
        f.chmod(0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class FakeTarget:
    def __init__(self, shared: Path, scenario: str, *args: str) -> None:
        untrusted_ids()
        self.proc = subprocess.Popen(
            [*as_untrusted(), PYTHON, str(shared / "target.py"), *args],
            stdout=subprocess.PIPE,
            text=True,
            cwd=shared,
            env={"PATH": os.environ["PATH"], "FAKE_SCENARIO": scenario},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY"), line
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def fake(shared: Path) -> Iterator[object]:
    started: list[FakeTarget] = []

    def _start(scenario: str, *args: str) -> FakeTarget:
        target = FakeTarget(shared, scenario, *args)
        started.append(target)
        return target

    yield _start
    for target in started:
        target.stop()


def _attach(pid: int, dumps: Path) -> tuple[object, list[Path]]:
    out = run_heapspy_measured(
        "attach", str(pid), "--method", "ptrace", "--dump-dir", str(dumps), timeout=120
    )
    assert not out.timed_out, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert out.max_rss < RSS_BOUND, f"heapspy peaked at {out.max_rss >> 20} MiB"
    for stream in (out.stdout, out.stderr):
        assert "\x1b" not in stream and "\x07" not in stream, repr(stream)
    return out, sorted(dumps.glob("*-final.pb.gz"))


def _functions(dump: Path) -> set[str]:
    return {frame.function for sample in read_profile(dump).samples for frame in sample.stack}


VIOLATIONS = {
    "oversized": "frame too large",
    "bad-json": "not valid JSON",
    "deep": "nested deeper",
    "wrong-types": "SAMPLES.stacks[0].id: expected an integer",
    "bad-header": "not valid JSON",
    "unknown-kind": "unknown frame kind 99",
    "replayed-hello": "a second HELLO mid-session",
}


@pytest.mark.parametrize("scenario", sorted(VIOLATIONS))
def test_a_protocol_violation_ends_the_session_with_its_final_dump(
    scenario: str, fake: object, tmp_path: Path
) -> None:
    target = fake(scenario)  # type: ignore[operator]
    out, finals = _attach(target.pid, tmp_path / "dumps")
    assert out.returncode == 18, out.stderr  # type: ignore[attr-defined]
    last = out.stderr.strip().splitlines()[-1]  # type: ignore[attr-defined]
    assert last.startswith(f"heapspy: The agent in process {target.pid} broke the protocol (")
    assert VIOLATIONS[scenario] in last and "final dump" in last
    assert len(finals) == 1  # what was collected before the violation is kept
    assert EVIL in _functions(finals[0])  # the dump keeps names as they are
    sidecar = json.loads(Path(str(finals[0]).replace(".pb.gz", ".json")).read_text())
    assert VIOLATIONS[scenario] in sidecar["protocol_violation"]
    # the terminal saw the function name and the note escaped, never raw
    assert "evil\\x1b]0;pwned\\x07" not in out.stderr  # type: ignore[attr-defined]
    assert "note \\x1b[31mred" in out.stderr  # type: ignore[attr-defined]
    assert "3.11\\x1b]0;pwned\\x07" in out.stderr  # type: ignore[attr-defined]


def test_a_forged_token_is_refused_before_any_session(fake: object, tmp_path: Path) -> None:
    target = fake("forged-token")  # type: ignore[operator]
    out, finals = _attach(target.pid, tmp_path / "dumps")
    assert out.returncode == 18, out.stderr  # type: ignore[attr-defined]
    assert "HELLO without the session token" in out.stderr  # type: ignore[attr-defined]
    assert len(out.stderr.strip().splitlines()) == 1  # type: ignore[attr-defined]
    assert finals == []


def test_a_refusal_that_breaks_the_welcome_is_still_already_attached(
    fake: object, tmp_path: Path
) -> None:
    """The refusing agent closes without waiting for WELCOME: writing it fails with EPIPE,
    and the refusal already read is the answer (exit 12, which the daemon waits out),
    not "Broken pipe" (exit 14, which it retries)."""
    for _ in range(3):
        target = fake("refuse")  # type: ignore[operator]
        out, _ = _attach(target.pid, tmp_path / "dumps")
        assert out.returncode == 12, out.stderr  # type: ignore[attr-defined]
        assert "already has a heapspy agent" in out.stderr  # type: ignore[attr-defined]


def test_frames_read_with_ready_are_not_dropped(fake: object, tmp_path: Path) -> None:
    target = fake("ready-plus-samples")  # type: ignore[operator]
    out, finals = _attach(target.pid, tmp_path / "dumps")
    assert out.returncode == 0, out.stderr  # type: ignore[attr-defined]
    assert len(finals) == 1
    assert EVIL in _functions(finals[0]), "the SAMPLES sent with READY was lost"
    # the end-of-session table names the function, escaped
    assert "evil\\x1b]0;pwned\\x07\\x1b[2Jfn" in out.stdout  # type: ignore[attr-defined]


def test_a_flood_of_stacks_is_bounded_and_counted(fake: object, tmp_path: Path) -> None:
    """6 frames of 10k stacks of 12 distinct frames each (once 472 MB of heapspy RSS)."""
    target = fake("flood")  # type: ignore[operator]
    out, finals = _attach(target.pid, tmp_path / "dumps")
    assert out.returncode == 0, out.stderr  # type: ignore[attr-defined]
    assert len(finals) == 1
    sidecar = json.loads(Path(str(finals[0]).replace(".pb.gz", ".json")).read_text())
    assert sidecar["dropped"]["stacks"] > 0
    with gzip.open(finals[0]) as f:
        assert len(f.read()) < 64 << 20


def _daemon_log(log: Path, pattern: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} in the daemon's log:\n{log.read_text()}")


def _start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """heapspy's daemon on ``config``, its output in ``log`` (read by _daemon_log)."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "heapspy", "daemon", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_the_daemon_is_not_fooled_by_what_the_target_says(fake: object, tmp_path: Path) -> None:
    """The end reason "detached by `heapspy detach`" once made the daemon's stderr regex
    conclude a user had detached, and leave the process unprofiled; now only the child's
    own event says so. Every line the daemon logs has the target's text escaped."""
    tag = f"tag{os.getpid()}x{time.monotonic_ns()}"
    target = fake("forged-bye", tag)  # type: ignore[operator]
    config = tmp_path / "heapspy.toml"
    config.write_text(
        '[daemon]\nscan_interval = "0.2s"\nsettle = "0.2s"\nretry_backoff = "0.5s"\n'
        'retry_max = "1s"\nstop_timeout = "20s"\n'
        f'[[watch]]\nname = "w"\ncmdline = "{tag}"\nmethod = "ptrace"\n'
        f'dump_dir = "{tmp_path / "dumps"}"\n'
    )
    log = tmp_path / "daemon.log"
    daemon = _start_daemon(config, log)
    try:
        ended = rf"\[w {target.pid}\] session ended while the process runs .*attaching again"
        _daemon_log(log, ended)
        text = _daemon_log(log, ended + rf"(.|\n)*\[w {target.pid}\] attaching to")
        attempts = re.findall(rf"\[w {target.pid}\] attaching to", text)
        assert len(attempts) >= 2  # profiled again: the forged reason changed nothing
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    assert "detached by hand" not in text
    assert "\x1b" not in text and "\x07" not in text
    assert "note \\x1b[31mred" in text


REAL_TARGET = """
import os, sys, time
print("READY", os.getpid(), flush=True)
keep = []
while True:
    keep.append(bytearray(4096))
    del keep[:-2000]
    time.sleep(0.001)
"""


def _intervals(pid: int) -> int:
    try:
        return int(control.request(pid, "status", timeout=10)["status"]["intervals"])
    except (NoSession, OSError):
        return -1


@pytest.mark.parametrize(
    "scenarios",
    [
        pytest.param(("bad-json", "ready-plus-samples"), id="quick"),
        # a flood costs the daemon ~30 s of CPU here (bounded, shared with the others); a
        # silent agent holds its own drain up to stop_timeout
        pytest.param(("bad-json", "stall", "ready-plus-samples", "flood"), id="soak",
                     marks=pytest.mark.soak),
    ],
)  # fmt: skip
def test_hostile_agents_cannot_hurt_the_daemons_other_sessions(
    scenarios: tuple[str, ...], fake: object, shared: Path, tmp_path: Path
) -> None:
    """One daemon runs every session in its own process: an agent that breaks the
    protocol, one that goes silent, one whose first frames came with READY (and, in the
    soak version, one that floods) each get their own outcome, while a real worker's
    session beside them goes on collecting and answering, and the daemon drains them."""
    tag = f"tag{os.getpid()}x{time.monotonic_ns()}"
    fakes = {s: fake(s, tag) for s in scenarios}  # type: ignore[operator]
    (shared / "real.py").write_text(REAL_TARGET)
    (shared / "real.py").chmod(0o644)
    real = subprocess.Popen(
        [*as_untrusted(), PYTHON, str(shared / "real.py"), tag], stdout=subprocess.PIPE,
        text=True, cwd=shared, env={"PATH": os.environ["PATH"]},
    )  # fmt: skip
    dumps = tmp_path / "dumps"
    config = tmp_path / "heapspy.toml"
    config.write_text(
        '[daemon]\nscan_interval = "0.2s"\nsettle = "0.2s"\nretry_backoff = "2s"\n'
        'retry_max = "60s"\nstop_timeout = "6s"\n'
        f'[[watch]]\nname = "w"\ncmdline = "{tag}"\nmethod = "ptrace"\ncensus = false\n'
        f'dump_dir = "{dumps}"\n'
    )
    log = tmp_path / "daemon.log"
    try:
        assert real.stdout is not None and real.stdout.readline().startswith("READY")
        daemon = _start_daemon(config, log)
        try:
            pid = {s: t.pid for s, t in fakes.items()}  # type: ignore[attr-defined]
            _daemon_log(log, rf"\[w {pid['bad-json']}\] not profiled \(exit 18\)")
            if "flood" in pid:
                _daemon_log(log, rf"\[w {pid['flood']}\] session ended while the process "
                                 r"runs \(flooded\)", timeout=180)  # fmt: skip
            _daemon_log(log, rf"\[w {pid['ready-plus-samples']}\] session ended while the "
                             r"process runs \(done\)")  # fmt: skip
            if "stall" in pid:
                _daemon_log(log, rf"\[w {pid['stall']}\] attached to ")
            _daemon_log(log, rf"\[w {real.pid}\] attached to ")
            # the real session goes on collecting beside them, and answers
            first = _intervals(real.pid)
            deadline = time.monotonic() + 60
            while _intervals(real.pid) < first + 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _intervals(real.pid) >= first + 3 >= 3
            if "stall" in pid:
                assert _intervals(pid["stall"]) >= 0  # silent agent: its session still serves
            held = json.loads(
                subprocess.run([sys.executable, "-m", "heapspy", "status", "--format", "json"],
                               capture_output=True, text=True, check=True).stdout
            )  # fmt: skip
            mine = (real.pid, pid.get("stall"))
            holders = {r["holder_pid"] for r in held if r["target_pid"] in mine}
            assert holders == {daemon.pid}
            peak = psutil.Process(daemon.pid).memory_full_info().rss
            with open(f"/proc/{daemon.pid}/status") as f:
                hwm = [int(line.split()[1]) << 10 for line in f if line.startswith("VmHWM:")]
            assert max([peak, *hwm]) < RSS_BOUND, f"the daemon peaked at {max(hwm) >> 20} MiB"
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=90) == 0
    finally:
        real.kill()
        real.wait()
        assert real.stdout is not None
        real.stdout.close()
    text = log.read_text(errors="replace")
    # every session detached within stop_timeout, the silent agent's too: the agent is
    # asked nothing after a third of it, answered or not
    assert "did not detach within" not in text, text[-3000:]
    if "flood" in pid:  # not attached again every retry_backoff (it was, flooding each time)
        assert re.search(
            rf"\[w {pid['flood']}\] session ended .*\(flooded\) after \d+ "
            r"stacks were dropped; attaching again in 1 min",
            text,
        ), text[-3000:]
        assert len(re.findall(rf"\[w {pid['flood']}\] attaching to", text)) == 1, text[-3000:]
    assert "Traceback" not in text and "\x1b" not in text and "\x07" not in text
    # the frames that came with READY crossed the hand-over from helper to daemon
    finals = sorted(dumps.glob(f"heap-{pid['ready-plus-samples']}-*-final.pb.gz"))
    assert finals and EVIL in _functions(finals[0])
    assert sorted(dumps.glob(f"heap-{real.pid}-*-final.pb.gz"))  # drained: final dump
    if "stall" in pid:
        assert sorted(dumps.glob(f"heap-{pid['stall']}-*-final.pb.gz"))


def _flood_config(fake: object, tmp_path: Path, stop_timeout: str) -> tuple[int, str]:
    """An endless flooder and the text of a daemon config watching it (in
    ``tmp_path/heapspy.toml``, dumps in ``tmp_path/dumps``)."""
    tag = f"tag{os.getpid()}x{time.monotonic_ns()}"
    target = fake("endless-flood", tag)  # type: ignore[operator]
    text = (
        f'[daemon]\nscan_interval = "0.2s"\nsettle = "0.2s"\nstop_timeout = "{stop_timeout}"\n'
        f'[[watch]]\nname = "w"\ncmdline = "{tag}"\nmethod = "ptrace"\ncensus = false\n'
        f'dump_dir = "{tmp_path / "dumps"}"\n'
    )
    (tmp_path / "heapspy.toml").write_text(text)
    return target.pid, text


def _flooded(log: Path, pid: int) -> None:
    """Once the daemon has attached to the flooder and the flood is on."""
    _daemon_log(log, rf"\[w {pid}\] attached to ")
    deadline = time.monotonic() + 60
    while _intervals(pid) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.mark.soak
def test_a_stopping_daemon_cuts_a_flooding_session_off(fake: object, tmp_path: Path) -> None:
    """An agent that floods until heapspy hangs up, and answers nothing, once kept each
    call of the detach (memory, types, retainers, then the detach's own wait) reading
    until its timeout: 5 + 30 + 5 + 3 s, past stop_timeout, and the daemon exited without
    the session's final dump. Now the agent is asked nothing after a third of stop_timeout."""
    # the default stop_timeout: the detach once took ~43 s here
    pid, _ = _flood_config(fake, tmp_path, "20s")
    log = tmp_path / "daemon.log"
    daemon = _start_daemon(tmp_path / "heapspy.toml", log)
    try:
        _flooded(log, pid)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=90) == 0
    text = log.read_text(errors="replace")
    assert "did not detach within" not in text, text[-3000:]
    assert "stopped: every session detached" in text, text[-3000:]
    assert sorted((tmp_path / "dumps").glob(f"heap-{pid}-*-final.pb.gz")), text[-3000:]


@pytest.mark.soak
def test_a_reload_cuts_a_flooding_session_off(fake: object, tmp_path: Path) -> None:
    """A reload that changes a watch detaches its sessions with stop_timeout's deadline,
    as a stop does: against an agent that floods and answers nothing, the detach once
    had none, and took ~43 s (see the test above)."""
    pid, text = _flood_config(fake, tmp_path, "3s")
    log = tmp_path / "daemon.log"
    daemon = _start_daemon(tmp_path / "heapspy.toml", log)
    try:
        _flooded(log, pid)
        (tmp_path / "heapspy.toml").write_text(text + 'rate = "1MiB"\n')
        daemon.send_signal(signal.SIGHUP)
        _daemon_log(log, rf"\[w {pid}\] detaching: its watch changed")
        # 3 s allowed: ten times that, where the undeadlined detach took ~43 s
        deadline = time.monotonic() + 30
        while not sorted((tmp_path / "dumps").glob(f"heap-{pid}-*-final.pb.gz")):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=90) == 0
