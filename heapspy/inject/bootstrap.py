"""Place the agent inside the target's filesystem and write the bootstrap that loads it.

Everything goes in one fresh directory under the target's ``/tmp`` as the target sees it
(reached through ``/proc/PID/root``, so containers work too), created with ``mkdir``
(fails if it exists), owned by the target's uid, mode 0700, files 0600. The bootstrap is
inert on its own: it only imports the agent from that directory and hands it the
one-time token; the agent deletes the files, and heapspy removes the directory.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import heapspy_agent

from heapspy.errors import InjectionFailed, PermissionDenied
from heapspy.inject.boot_script import boot_source
from heapspy.target.process import PythonTarget

AGENT_FILES = (
    "__init__.py",
    "protocol.py",
    "schema.py",
    "agent.py",
    "exact.py",
    "sampled.py",
    "shim.py",
    "runtime.py",
)
SHIM_GLOB = "_heapspy_shim*.so"


@dataclass
class Placement:
    """One session's files in the target, with paths both as heapspy and target see them."""

    pid: int
    token: str
    host_dir: Path
    target_dir: str
    listener: socket.socket

    @property
    def boot_path(self) -> str:
        return f"{self.target_dir}/boot.py"

    @property
    def socket_path(self) -> str:
        return f"{self.target_dir}/agent.sock"

    def pending_call_source(self, page: int) -> bytes:
        """What the ptrace injector hands to PyRun_SimpleString: tiny, never raises.

        It runs in ``__main__``'s namespace, so it binds no name there; the address of
        the page holding it goes to the agent, which unmaps it (the source has been
        compiled by then and is never read again).
        """
        return (
            f"try:exec(open({self.boot_path!r}).read(),"
            f"{{'__builtins__':__builtins__,'__name__':'heapspy_boot','_heapspy_page':{page}}})\n"
            "except BaseException:pass\n"
        ).encode()

    def cleanup(self) -> None:
        try:
            self.listener.close()
        except OSError:
            pass
        shutil.rmtree(self.host_dir, ignore_errors=True)


def _write_private(path: Path, data: bytes, owner: tuple[int, int]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        if os.geteuid() == 0:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)


def agent_source_dir() -> Path:
    return Path(heapspy_agent.__file__).resolve().parent


def _target_ids(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    return int(fields["Uid"].split()[1]), int(fields["Gid"].split()[1])


def _root_of(pid: int) -> Path:
    """The target's root directory as heapspy can reach it.

    Plain ``/`` when the target shares our mount namespace, so that the files can still
    be removed if the target exits mid-attach (``/proc/PID/root`` vanishes then);
    ``/proc/PID/root`` otherwise (containers, private /tmp mounts), which resolves paths
    in the target's own mounts.
    """
    proc_root = Path(f"/proc/{pid}/root")
    try:
        theirs = os.stat(f"/proc/{pid}/ns/mnt").st_ino
        ours = os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        return proc_root
    return Path("/") if theirs == ours else proc_root


def place_agent(target: PythonTarget, settings: dict[str, Any], deadline: float) -> Placement:
    """Create the session directory in the target's namespace and start listening."""
    token = secrets.token_hex(16)
    owner = _target_ids(target.pid)
    root = _root_of(target.pid)
    base = None
    for candidate in ("/tmp", "/var/tmp", "/dev/shm"):
        if (root / candidate.lstrip("/")).is_dir():
            base = candidate
            break
    if base is None:
        raise InjectionFailed(f"Process {target.pid} has no /tmp, /var/tmp or /dev/shm to use.")
    name = f"heapspy-{target.pid}-{secrets.token_hex(4)}"
    target_dir = f"{base}/{name}"
    host_dir = root / base.lstrip("/") / name
    try:
        os.mkdir(host_dir, 0o700)
    except PermissionError:
        raise PermissionDenied(
            f"Cannot create {target_dir} inside process {target.pid}'s filesystem.",
            hint="Run heapspy as the target's user or as root.",
        ) from None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    placement = Placement(target.pid, token, host_dir, target_dir, listener)
    try:
        if os.geteuid() == 0:
            os.chown(host_dir, *owner)
        src = agent_source_dir()
        pkg = host_dir / "heapspy_agent"
        os.mkdir(pkg, 0o700)
        if os.geteuid() == 0:
            os.chown(pkg, *owner)
        for name_ in AGENT_FILES:
            if (src / name_).exists():
                _write_private(pkg / name_, (src / name_).read_bytes(), owner)
        # HEAPSPY_NO_SHIM=1 stands in for an install built without a compiler (tests)
        shims = [] if os.environ.get("HEAPSPY_NO_SHIM") else sorted(src.glob(SHIM_GLOB))
        for shim in shims[:1]:
            _write_private(pkg / shim.name, shim.read_bytes(), owner)
        config = dict(settings)
        config.update(
            token=token,
            socket=placement.socket_path,
            heapspy_pid=os.getpid(),
            deadline=deadline,
        )
        _write_private(host_dir / "config.json", json.dumps(config).encode(), owner)
        boot = boot_source(target_dir, token, placement.socket_path, deadline)
        _write_private(host_dir / "boot.py", boot.encode(), owner)
        sock_host = str(host_dir / "agent.sock")
        listener.bind(sock_host)
        os.chmod(sock_host, 0o600)
        if os.geteuid() == 0:
            os.chown(sock_host, *owner)
        listener.listen(4)
        listener.setblocking(False)
    except PermissionError as exc:  # e.g. root without CAP_CHOWN or CAP_DAC_OVERRIDE
        placement.cleanup()
        raise PermissionDenied(
            f"Cannot prepare the agent's files in {target_dir} for process {target.pid}: "
            f"{exc.strerror}.",
            hint="As root heapspy needs CAP_CHOWN and CAP_DAC_OVERRIDE to hand them to the "
            "target's user; or run heapspy as that user.",
        ) from None
    except BaseException:
        placement.cleanup()
        raise
    return placement
