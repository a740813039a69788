"""`heapspy detach`: end a session held by another heapspy process."""

from __future__ import annotations

import sys
import time

import typer

from heapspy import control
from heapspy.errors import NoSession


def detach(
    pid: int = typer.Argument(..., metavar="PID", help="Process id of the profiled target."),
) -> None:
    """End the heapspy session that holds PID, as if its owner were interrupted.

    The owner writes its final dump, the agent switches itself off and the target is left
    as it was. Fails with exit code 13 when no session holds PID.

    Example:

      heapspy detach 4242
    """
    reply = control.request(pid, "detach")
    if not reply.get("ok"):
        raise NoSession(f"The session for {pid} refused to detach: {reply.get('error')}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            control.request(pid, "status", timeout=1.0)
        except NoSession:
            print(f"heapspy: detached from {pid}", file=sys.stderr)
            return
        except TimeoutError:
            pass  # its loop has ended: it is writing the final dump, its socket still open
        time.sleep(0.05)
    print(f"heapspy: asked the session for {pid} to detach; it is still closing", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("detach")(detach)
