"""A target with its own mount namespace (a container, a private /tmp) is reached
through /proc/PID/root, and nothing lands in heapspy's own /tmp."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TARGETS


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
