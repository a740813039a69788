"""A target with its own mount namespace (a container, a private /tmp) is reached
through /proc/PID/root, and nothing lands in heapspy's own /tmp."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from interpreters import Interpreter, interpreter_params, py314_cache_dir
from support import TARGETS, Target, heapspy_dirs_in_tmp, run_heapspy, wait_for

from heapspy.pprof import decode_profile


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare --mount")
def test_private_tmp_mount(tmp_path: Path) -> None:
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is not installed")
    script = Path("/dev/shm") / f"heapspy-ns-target-{os.getpid()}.py"
    shutil.copy(TARGETS / "probe_target.py", script)
    inner = f"mount -t tmpfs tmpfs /tmp && exec /usr/bin/python3.11 {script} busy"
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HEAPSPY_PROBE": "/dev/null"},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("READY")
        assert os.stat(f"/proc/{proc.pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "heapspy",
                "attach",
                str(proc.pid),
                "--duration",
                "1",
                "--dump-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert list(Path("/tmp").glob(f"heapspy-{proc.pid}-*")) == []
        assert list(Path(f"/proc/{proc.pid}/root/tmp").iterdir()) == []
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        script.unlink()


def _container(interp: Interpreter, rootfs: Path, app: Path) -> list[str]:
    """A command that runs probe_target.py in something shaped like a container: its
    own mount, pid, network, IPC and UTS namespaces, chrooted into a root where Python
    lives at a path the host does not have (pyenv's build bind-mounted at /opt/python;
    3.14 with Debian unstable's whole /usr, its own glibc and loader included). /app is
    a host directory (the probe file comes back through it), /tmp a fresh tmpfs."""
    for name in ("usr", "opt/python", "tmp", "app", "lib64", "proc"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    (rootfs / "lib").symlink_to("usr/lib")
    if interp.version >= (3, 14):
        usr, python, env = py314_cache_dir() / "root" / "usr", "/usr/bin/python3.14", ""
        (rootfs / "lib64" / "ld-linux-x86-64.so.2").symlink_to(
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
        )
    else:
        install = Path(interp.argv[0]).parents[1]  # .../versions/3.X.Y
        usr, python = Path("/usr"), f"/opt/python/bin/python{interp.version_text}"
        env = "LD_LIBRARY_PATH=/opt/python/lib"  # pyenv's rpath names its host path
        (rootfs / "lib64").rmdir()
        (rootfs / "lib64").symlink_to("usr/lib64")
    mounts = [f"mount --bind {usr} {rootfs}/usr", f"mount -t tmpfs tmpfs {rootfs}/tmp"]
    mounts.append(f"mount -t proc proc {rootfs}/proc")  # this pid namespace's
    mounts.append(f"mount --bind {app} {rootfs}/app")
    if interp.version < (3, 14):
        mounts.append(f"mount --bind {install} {rootfs}/opt/python")
    inner = " && ".join(
        [
            *mounts,
            f"exec env {env} HEAPSPY_PROBE=/app/probe.json chroot {rootfs} "
            f"{python} -u /app/probe_target.py grow",
        ]
    )
    return [
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--net",
        "--ipc",
        "--uts",
        "--propagation",
        "private",
        "sh",
        "-c",
        inner,
    ]


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare and chroot")
@pytest.mark.parametrize("interp", [p for p in interpreter_params() if "static" not in p.id])
def test_container_shaped_target(interp: Interpreter, tmp_path: Path) -> None:
    """What `docker run` gives, less the cgroups: heapspy sees the target by its host
    pid, reads its Python through /proc/PID/root, reaches it with a socket placed in
    its /tmp, and is named by no pid it can see (the agent sees pid 0 for its peer)."""
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is not installed")
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(TARGETS / "probe_target.py", app)
    proc = subprocess.Popen(
        _container(interp, tmp_path / "rootfs", app), stdout=subprocess.PIPE, text=True
    )
    pid = 0
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.split() == ["READY", "1"], line  # pid 1 of its own pid namespace
        (pid,) = [
            int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        ]
        exe = os.readlink(f"/proc/{pid}/exe")
        assert not Path(exe).exists() or interp.version >= (3, 14), exe
        target = Target(proc, app / "probe.json")
        target.pid = pid
        before = target.state()
        out = run_heapspy("attach", str(pid), "--duration", "2", "--dump-dir", str(tmp_path))
        assert out.returncode == 0, out.stderr
        assert "sampled mode" in out.stderr, out.stderr
        assert "grow_cache (probe_target.py:" in out.stdout, out.stdout
        (dump,) = tmp_path.glob(f"heap-{pid}-*.pb.gz")
        names = {s.stack[-1].function for s in decode_profile(dump.read_bytes()).samples}
        assert "grow_cache" in names, names
        assert wait_for(lambda: target.threads() == len(before["threads"]))
        after = target.state()
        assert after["modules"] == [] and after["main_globals"] == [] and not after["tracing"]
        assert after["threads"] == before["threads"]
        assert [f for f in after["fds"] if "libffi" not in f] == before["fds"]
        assert list(Path(f"/proc/{pid}/root/tmp").iterdir()) == []
        assert heapspy_dirs_in_tmp(pid) == []
    finally:
        if pid:  # the pid namespace's init: when it ends, unshare ends too
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
