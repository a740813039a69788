"""One `heapspy attach --native` session on a target that says READY, allocates through
native code, then says DONE: what tests/test_native.py and test_native_frames.py share."""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from support import run_heapspy


@contextlib.contextmanager
def native_session(
    target_argv: Sequence[str], attach_args: Sequence[str], dump_dir: Path
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start the target, attach ``--native --no-census`` (plus ``attach_args``) once it is
    READY, and yield it with its DONE line (printed once the agent samples; a heapspy that
    fails first ends the wait). On leaving the block heapspy is interrupted and must exit
    0 (its final dump is in ``dump_dir``); both are killed whatever happened."""
    target = subprocess.Popen([*target_argv], stdout=subprocess.PIPE, text=True)
    heapspy = None
    try:
        assert target.stdout is not None and target.stdout.readline().startswith("READY")
        heapspy = subprocess.Popen(
            [sys.executable, "-m", "heapspy", "attach", str(target.pid), "--native",
             *attach_args, "--no-census", "--dump-dir", str(dump_dir), "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        ready: list[Any] = []
        while not ready and heapspy.poll() is None:
            ready, _, _ = select.select([target.stdout], [], [], 0.5)
        assert ready, heapspy.communicate()[1]
        done = target.stdout.readline()
        assert done.startswith("DONE"), done
        yield target, done
        heapspy.send_signal(2)
        _, err = heapspy.communicate(timeout=60)
        assert heapspy.returncode == 0, err
    finally:
        target.kill()
        target.wait()
        assert target.stdout is not None
        target.stdout.close()
        if heapspy is not None and heapspy.poll() is None:
            heapspy.kill()
            heapspy.wait()


def native_status(pid: int) -> dict[str, Any] | None:
    """`heapspy status PID`'s native part (None until the agent's first interval sent it)."""
    out = run_heapspy("status", str(pid), "--format", "json")
    if out.returncode != 0:
        return None
    status = json.loads(out.stdout)[0]
    native = status.get("status", status).get("native")
    return dict(native) if native else None


def final_dump(dump_dir: Path) -> Path:
    """The session's one final dump."""
    final = sorted(dump_dir.glob("*-final.pb.gz"))
    assert len(final) == 1, list(dump_dir.iterdir())
    return final[0]
