"""Place the agent inside the target's filesystem and write the bootstrap that loads it.

Everything goes in one fresh directory under the target's ``/tmp`` (else ``/var/tmp``,
``/dev/shm``) as the target sees it, files 0600, the directory 0700, all handed to the
target's uid. The bootstrap is inert on its own: it only imports the agent from that
directory and hands it the one-time token; the agent deletes the files, and heapspy
removes the directory.

The target's user owns that directory in the end and may be hostile, so root never works
in it by path (issue 10): the target's root is opened as a directory descriptor
(``/proc/PID/root``, which also covers containers and chroots), ``tmp`` is reached from
it one component at a time with ``O_NOFOLLOW`` (never resolved against heapspy's own
root), and everything inside is created through descriptors (``mkdirat``, ``openat``
with ``O_EXCL|O_NOFOLLOW``, the socket bound through ``/proc/self/fd/N``) while the
directory is still root's and 0700, so that nobody else can even look into it. Only
then is it all handed over, the directory last. Cleanup goes through the same
descriptors (``unlinkat`` never follows the last component). A ``tmp`` that another user
can rearrange (another owner, or writable by others without the sticky bit) is refused.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import heapspy_agent

from heapspy.errors import InjectionFailed, PermissionDenied
from heapspy.inject.boot_script import boot_source
from heapspy.target.process import PythonTarget, check_same_process

AGENT_FILES = (
    "__init__.py",
    "protocol.py",
    "schema.py",
    "agent.py",
    "exact.py",
    "sampled.py",
    "shim.py",
    "runtime.py",
    "labels.py",
    "memstats.py",
    "census.py",
    "stacks.py",
    "census_walk.py",
    "object_types.py",
    "retainers.py",
    "retainer_names.py",
    "quiet.py",
)
SHIM_GLOB = "_heapspy_shim*.so"
PACKAGE = "heapspy_agent"
SOCKET = "agent.sock"
TOP_FILES = ("config.json", "boot.py")
TMP_CANDIDATES = (("tmp",), ("var", "tmp"), ("dev", "shm"))

_WALK = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _close(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


@dataclass
class PlacedFiles:
    """The session directory as descriptors: what root created, and how to remove it
    without following anything the target's user may have put there since."""

    tmp_fd: int  # the target's tmp directory
    name: str  # the session directory's name in it
    dir_fd: int = -1
    pkg_fd: int = -1
    pkg_files: list[str] = field(default_factory=list)

    def remove_socket(self) -> None:
        if self.dir_fd >= 0:
            try:
                os.unlink(SOCKET, dir_fd=self.dir_fd)
            except OSError:
                pass

    def remove(self) -> None:
        """Unlink the entries root made (by name, in the directories it made), then the
        directories themselves if they are still the ones made; close the descriptors.
        Whatever else is there belongs to the target's user and stays."""
        if self.pkg_fd >= 0:
            for name in self.pkg_files:
                _unlink_at(self.pkg_fd, name)
        if self.dir_fd >= 0:
            for name in (*TOP_FILES, SOCKET):
                _unlink_at(self.dir_fd, name)
            _rmdir_at(self.dir_fd, PACKAGE, self.pkg_fd)
        _rmdir_at(self.tmp_fd, self.name, self.dir_fd)
        for fd in (self.pkg_fd, self.dir_fd, self.tmp_fd):
            _close(fd)
        self.pkg_fd = self.dir_fd = self.tmp_fd = -1

    def fds(self) -> tuple[int, int, int]:
        return self.tmp_fd, self.dir_fd, self.pkg_fd


def _unlink_at(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _rmdir_at(parent_fd: int, name: str, made_fd: int) -> None:
    """Remove ``name`` from ``parent_fd`` if it is still the directory open as ``made_fd``."""
    if parent_fd < 0 or made_fd < 0:
        return
    try:
        there = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        made = os.fstat(made_fd)
        if (there.st_dev, there.st_ino) == (made.st_dev, made.st_ino):
            os.rmdir(name, dir_fd=parent_fd)
    except OSError:
        pass


@dataclass
class Placement:
    """One session's files in the target, held by descriptors; paths as the target sees them."""

    pid: int
    token: str
    target_dir: str
    listener: socket.socket
    files: PlacedFiles

    @property
    def boot_path(self) -> str:
        return f"{self.target_dir}/boot.py"

    @property
    def socket_path(self) -> str:
        return f"{self.target_dir}/{SOCKET}"

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

    def close_socket(self) -> None:
        """Stop listening and remove the socket (the agent can no longer reach us)."""
        try:
            self.listener.close()
        except OSError:
            pass
        self.files.remove_socket()

    def cleanup(self) -> None:
        self.close_socket()
        self.files.remove()

    def leave_for_bootstrap(self, target: PythonTarget) -> None:
        """The bootstrap is still queued and may run later: leave its files for it (it
        removes them), but remove them ourselves if the target exits first. A small
        watcher process keeps the descriptors and a pidfd of the target for that."""
        self.close_socket()
        files = self.files
        if target.pidfd < 0 or files.dir_fd < 0:
            files.remove()
            return
        fds = (target.pidfd, *files.fds())
        code = "import heapspy.inject.bootstrap as b; b.watch_main()"
        argv = [sys.executable, "-c", code, *map(str, fds), files.name, *files.pkg_files]
        try:
            # the watcher forks again and its first process exits at once: reaped here
            subprocess.run(argv, pass_fds=[fd for fd in fds if fd >= 0], check=False,
                           timeout=30, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL,
                           start_new_session=True)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            pass
        for fd in files.fds():
            _close(fd)
        files.tmp_fd = files.dir_fd = files.pkg_fd = -1


WATCH_POLL_MS = 2000


def watch_main() -> None:
    """``leave_for_bootstrap``'s watcher: ``PIDFD TMP_FD DIR_FD PKG_FD NAME PKG_FILE...``.

    Returns at once (the work goes on in a forked child, in its own session): waits for
    the target to exit, then removes the files the bootstrap never ran to remove; ends
    as soon as the bootstrap has removed the directory itself.
    """
    import select

    pidfd, tmp_fd, dir_fd, pkg_fd = (int(a) for a in sys.argv[1:5])
    files = PlacedFiles(tmp_fd, sys.argv[5], dir_fd, pkg_fd, sys.argv[6:])
    if os.fork():
        os._exit(0)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    while not poller.poll(WATCH_POLL_MS):
        if _removed(dir_fd):  # the bootstrap ran: it removed everything
            os._exit(0)
    files.remove()
    os._exit(0)


def _removed(dir_fd: int) -> bool:
    try:
        return os.fstat(dir_fd).st_nlink == 0
    except OSError:
        return True


def _write_private(dir_fd: int, name: str, data: bytes, owner: tuple[int, int] | None) -> None:
    fd = os.open(name, _NEW_FILE, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)


def agent_source_dir() -> Path:
    return Path(heapspy_agent.__file__).resolve().parent


def _target_ids(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    return int(fields["Uid"].split()[1]), int(fields["Gid"].split()[1])


def _open_root(target: PythonTarget) -> int:
    """The target's root directory as a descriptor (its mounts, its chroot).

    ``/proc/PID/root`` is the kernel's link, followed on purpose; the pid is checked to
    still name the inspected process after the open, so the root is the target's.
    """
    try:
        fd = os.open(f"/proc/{target.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError:
        raise PermissionDenied(
            f"Cannot open the root directory of process {target.pid}.",
            hint="Run heapspy as the target's user or as root.",
        ) from None
    except OSError:
        check_same_process(target)
        raise InjectionFailed(f"Cannot open the root directory of process {target.pid}.") from None
    try:
        check_same_process(target)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _walk(root_fd: int, parts: tuple[str, ...]) -> int | None:
    """Open ``parts`` below ``root_fd`` one component at a time, following no symlink;
    None when one is missing, not a directory, or a link."""
    fd = root_fd
    for part in parts:
        try:
            nxt = os.open(part, _WALK, dir_fd=fd)
        except OSError:
            nxt = None
        if fd != root_fd:
            os.close(fd)
        if nxt is None:
            return None
        fd = nxt
    return fd


def _check_tmp(fd: int, path: str, target: PythonTarget) -> None:
    """Refuse a tmp directory that a third user could rearrange under heapspy."""
    st = os.fstat(fd)
    problem = None
    if st.st_uid not in (0, target.uid):
        problem = f"belongs to another user (uid {st.st_uid})"
    elif st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        who = "every user" if st.st_mode & 0o002 else "its group"
        mode = stat.S_IMODE(st.st_mode)
        problem = f"is writable by {who} and has no sticky bit (mode {mode:04o})"
    if problem:
        raise PermissionDenied(
            f"Process {target.pid}'s {path} {problem}: another user could replace heapspy's "
            "files there, so heapspy will not place its agent in it.",
            hint=f"Give {path} the sticky bit and its usual owner (root, mode 1777) in the "
            "target's filesystem.",
        )


def _open_tmp(root_fd: int, target: PythonTarget) -> tuple[int, str]:
    for parts in TMP_CANDIDATES:
        fd = _walk(root_fd, parts)
        if fd is None:
            continue
        path = "/" + "/".join(parts)
        try:
            _check_tmp(fd, path, target)
        except BaseException:
            os.close(fd)
            raise
        return fd, path
    raise InjectionFailed(
        f"Process {target.pid} has no /tmp, /var/tmp or /dev/shm (a real directory, not a "
        "link) to use."
    )


def _make_private_dir(parent_fd: int, name: str, where: str) -> int:
    """mkdir ``name`` in ``parent_fd`` and open it, checking it is the empty 0700
    directory just made by us (not something put there meanwhile)."""
    os.mkdir(name, 0o700, dir_fd=parent_fd)
    fd = os.open(name, _DIR, dir_fd=parent_fd)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700 or os.listdir(fd):
        os.close(fd)
        raise InjectionFailed(f"{where} was replaced while heapspy created it; giving up.")
    return fd


def place_agent(target: PythonTarget, settings: dict[str, Any], deadline: float) -> Placement:
    """Create the session directory in the target's namespace and start listening."""
    token = secrets.token_hex(16)
    root_fd = _open_root(target)
    try:
        tmp_fd, base = _open_tmp(root_fd, target)
    finally:
        os.close(root_fd)
    owner = _target_ids(target.pid) if os.geteuid() == 0 else None
    check_same_process(target)  # the ids read are the target's
    name = f"heapspy-{target.pid}-{secrets.token_hex(4)}"
    target_dir = f"{base}/{name}"
    files = PlacedFiles(tmp_fd, name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    placement = Placement(target.pid, token, target_dir, listener, files)
    try:
        try:
            files.dir_fd = _make_private_dir(tmp_fd, name, target_dir)
        except PermissionError:
            raise PermissionDenied(
                f"Cannot create {target_dir} inside process {target.pid}'s filesystem.",
                hint="Run heapspy as the target's user or as root.",
            ) from None
        # From here the directory is root's, 0700: nobody else can see into it until
        # the fchown at the very end.
        src = agent_source_dir()
        files.pkg_fd = _make_private_dir(files.dir_fd, PACKAGE, f"{target_dir}/{PACKAGE}")
        payload = [name_ for name_ in AGENT_FILES if (src / name_).exists()]
        # HEAPSPY_NO_SHIM=1 stands in for an install built without a compiler (tests)
        shims = [] if os.environ.get("HEAPSPY_NO_SHIM") else sorted(src.glob(SHIM_GLOB))
        payload += [shim.name for shim in shims[:1]]
        for name_ in payload:
            files.pkg_files.append(name_)
            _write_private(files.pkg_fd, name_, (src / name_).read_bytes(), owner)
        config = dict(settings)
        config.update(
            token=token,
            socket=placement.socket_path,
            heapspy_pid=os.getpid(),
            deadline=deadline,
        )
        _write_private(files.dir_fd, "config.json", json.dumps(config).encode(), owner)
        boot = boot_source(target_dir, token, placement.socket_path, deadline)
        _write_private(files.dir_fd, "boot.py", boot.encode(), owner)
        listener.bind(f"/proc/self/fd/{files.dir_fd}/{SOCKET}")
        os.chmod(SOCKET, 0o600, dir_fd=files.dir_fd)  # ours alone: nothing to follow
        if owner is not None:
            os.chown(SOCKET, *owner, dir_fd=files.dir_fd, follow_symlinks=False)
            os.fchown(files.pkg_fd, *owner)
        listener.listen(4)
        listener.setblocking(False)
        if owner is not None:
            os.fchown(files.dir_fd, *owner)  # last: from now on the target's user may act
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
