#!/usr/bin/env python3
"""Provision what heapspy's tests need beyond the venv: pprof, Chromium, Prometheus, CPython 3.14.

Run by ``make provision`` (a dependency of ``make test``). Standard library only,
idempotent, and quick (one interpreter start-up, ``chromium --version``) when everything
is already in place. Go (``golang-go``) and Chromium (``chromium``, which the
``heapspy flamegraph`` tests drive headless) come from the system's own apt sources.

CPython 3.14 comes from Debian unstable's binary packages, fetched with a *private* apt
configuration so that unstable never enters the system's apt sources: its own
sources.list, state, lists and cache directories under the cache directory, the mirror
host the system already uses, and the system's Debian archive keyring. The packages are
unpacked with ``dpkg -x`` (nothing is installed) and run through unstable's own dynamic
loader, because Debian 12's glibc is too old for them::

    <cache>/root/              the unpacked packages (usr/bin/python3.14, unstable's libc, ...)
    <cache>/lib -> root/usr/lib   so that the interpreter finds its stdlib from <cache>/bin
    <cache>/bin/python3.14     wrapper: exec <loader> --argv0 "$0" --library-path ... python3.14
    <cache>/provisioned.json   what was installed; written last, read by the fast path

The wrapper ``exec``s, so its pid is the interpreter's. ``/proc/PID/exe`` of such a process
is the loader, while ``/proc/PID/maps`` shows ``root/usr/bin/python3.14`` mapped (Debian's
python3.14 is non-PIE with libpython linked in statically). ``sys.executable`` is the
wrapper (thanks to ``--argv0``), so subprocesses and multiprocessing's forkserver work, and
no environment variable leaks into children.

The cache directory is ``<repo>/.cache/py314`` unless ``HEAPSPY_CACHE_DIR`` is set.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORMAT = 1  # bump when the layout of the cache directory changes

# Everything the interpreter needs to start and to import what the agent and the test
# targets use (ctypes -> libffi, zlib, pyexpat -> libexpat, _ssl/_hashlib -> libssl which
# needs libzstd); libraries missing here fall back to the system's copies, which are older
# but ABI-compatible with unstable's libc.
PACKAGES = (
    "python3.14",
    "python3.14-minimal",
    "libpython3.14-minimal",
    "libpython3.14-stdlib",
    "libc6",
    "libgcc-s1",
    "libffi8",
    "zlib1g",
    "libexpat1",
    "libssl3t64",
    "libzstd1",
)
CHECK_IMPORTS = (
    "ctypes, socket, json, struct, threading, tracemalloc, select, zlib, hashlib, asyncio, ssl"
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# dpkg architecture -> (multiarch triplet, dynamic loader)
ARCHES = {
    "amd64": ("x86_64-linux-gnu", "ld-linux-x86-64.so.2"),
    "arm64": ("aarch64-linux-gnu", "ld-linux-aarch64.so.1"),
}


def say(msg: str) -> None:
    print(f"provision: {msg}", flush=True)


class ProvisionError(Exception):
    pass


class UnknownKey(ProvisionError):
    """unstable is signed by a key newer than the system's debian-archive-keyring."""


def run(
    argv: Sequence[str], *, cwd: Path | None = None, quiet: bool = False, shown: str = ""
) -> str:
    """Run a command, return its combined output, raise ProvisionError with it on failure."""
    if not quiet:
        say("$ " + (shown or " ".join(argv)))
    proc = subprocess.run(
        list(argv),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"},
    )
    if proc.returncode != 0:
        raise ProvisionError(f"`{' '.join(argv)}` failed ({proc.returncode}):\n{proc.stdout}")
    return proc.stdout


# --- system packages ------------------------------------------------------------------

_system_apt_updated = False


def system_apt_install(packages: Sequence[str]) -> None:
    global _system_apt_updated
    if os.geteuid() != 0:
        raise ProvisionError(
            f"need to install {' '.join(packages)} but not running as root: "
            f"run `sudo apt-get install {' '.join(packages)}`"
        )
    if not _system_apt_updated:
        run(["apt-get", "update"])
        _system_apt_updated = True
    run(["apt-get", "install", "-y", "--no-install-recommends", *packages])


def ensure_system_tool(find: Callable[[], str | None], package: str, why: str) -> str:
    """The path of a tool from the system's own apt sources, installed when missing."""
    found = find()
    if found is None:
        say(f"{package} is missing ({why}): installing it")
        system_apt_install([package])
        found = find()
        if found is None:
            raise ProvisionError(f"{package} installed but its binary is not found")
    return found


def go_binary() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    return "/usr/lib/go/bin/go" if os.access("/usr/lib/go/bin/go", os.X_OK) else None


def ensure_pprof() -> None:
    go = ensure_system_tool(go_binary, "golang-go", "needed for `go tool pprof`")
    probe = subprocess.run([go, "tool", "pprof", "-h"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise ProvisionError(f"`{go} tool pprof -h` failed:\n{probe.stdout}{probe.stderr}")
    version = subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip()
    say(f"pprof ok ({go}; {version})")


# Where Debian's chromium package and others put the browser; tests/browser.py looks in
# the same places.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_binary() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def ensure_chromium() -> None:
    """Chromium for the flame graph tests, which open the HTML in a real headless browser."""
    browser = ensure_system_tool(
        chromium_binary, "chromium", "the flamegraph tests render pages in it"
    )
    # --version starts no browser: it is the quick check that the binary runs at all
    # (tests/browser.py probes a real headless page before using it).
    probe = subprocess.run([browser, "--version"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        raise ProvisionError(f"`{browser} --version` failed:\n{probe.stdout}{probe.stderr}")
    say(f"chromium ok ({browser}; {probe.stdout.strip()})")


def ensure_jemalloc() -> None:
    """jemalloc, preloaded into a test target: `heapspy trim` must refuse it."""
    if not list(Path("/usr/lib").glob("*/libjemalloc.so*")):
        say("libjemalloc2 is missing (the trim tests preload it): installing it")
        system_apt_install(["libjemalloc2"])
    say("jemalloc ok")


def ensure_prometheus() -> None:
    """Prometheus and promtool: the /metrics tests have a real server scrape heapspy."""
    server = ensure_system_tool(
        lambda: shutil.which("prometheus"), "prometheus", "the /metrics tests scrape with it"
    )
    tool = shutil.which("promtool")
    if tool is None:
        raise ProvisionError("prometheus installed but promtool is not on PATH")
    probe = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        raise ProvisionError(f"`{server} --version` failed:\n{probe.stdout}{probe.stderr}")
    first = (probe.stdout or probe.stderr).splitlines()[0] if (probe.stdout or probe.stderr) else ""
    say(f"prometheus ok ({server}; {first.strip()})")


# --- CPython 3.14 from Debian unstable ----------------------------------------------------


def cache_dir() -> Path:
    env = os.environ.get("HEAPSPY_CACHE_DIR")
    return Path(env).resolve() if env else REPO / ".cache" / "py314"


def wrapper_path(cache: Path) -> Path:
    return cache / "bin" / "python3.14"


def _system_sources() -> list[tuple[str, str | None]]:
    """(URI, Signed-By) of each Debian archive entry in the system's apt sources."""
    found: list[tuple[str, str | None]] = []
    etc = Path("/etc/apt")
    files = [etc / "sources.list"]
    parts = etc / "sources.list.d"
    if parts.is_dir():
        files += sorted(parts.iterdir())
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if (
                    fields.get("enabled", "yes").lower() == "no"
                    or "deb" not in fields.get("types", "").split()
                ):
                    continue
                uris = fields.get("uris", "").split()
                found.extend((uri, fields.get("signed-by")) for uri in uris)
        elif path.name == "sources.list" or path.suffix == ".list":
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)", line)
                if not m:
                    continue
                opts = dict(o.split("=", 1) for o in (m[1] or "").split() if "=" in o)
                found.append((m[2], opts.get("signed-by")))
    return found


def mirror_and_keyring() -> tuple[str, str]:
    """The Debian mirror the system already uses, and the keyring that signs it."""
    for uri, signed_by in _system_sources():
        base = uri.rstrip("/")
        if base.endswith("/debian") and "security" not in base:
            keyring = signed_by if signed_by and signed_by.startswith("/") else DEFAULT_KEYRING
            return base, keyring
    return DEFAULT_MIRROR, DEFAULT_KEYRING


class PrivateApt:
    """apt-get with its own sources, state, lists and cache: the system's are not touched."""

    def __init__(self, top: Path, mirror: str, keyring: str, arch: str) -> None:
        self.top = top
        self.mirror = mirror
        self.keyring = keyring
        self.arch = arch
        for sub in ("lists/partial", "cache/archives/partial", "empty", "debs"):
            (top / sub).mkdir(parents=True, exist_ok=True)
        (top / "status").touch()
        (top / "sources.list").write_text(f"deb [signed-by={keyring}] {mirror} unstable main\n")

    def options(self) -> list[str]:
        t = self.top
        opts = {
            "Dir::Etc::SourceList": t / "sources.list",
            "Dir::Etc::SourceParts": t / "empty",
            "Dir::Etc::Preferences": t / "empty" / "none",
            "Dir::Etc::PreferencesParts": t / "empty",
            "Dir::Etc::TrustedParts": t / "empty",
            "Dir::State": t,
            "Dir::State::Lists": t / "lists",
            "Dir::State::status": t / "status",
            "Dir::Cache": t / "cache",
            "APT::Architecture": self.arch,
            "APT::Architectures": self.arch,
            "APT::Default-Release": "unstable",
            "Acquire::Languages": "none",
        }
        if os.geteuid() == 0:
            # apt drops to _apt for downloads, which cannot write into a root-owned tree
            opts["APT::Sandbox::User"] = "root"
        out = []
        for key, value in opts.items():
            out += ["-o", f"{key}={value}"]
        return out

    def apt_get(self, *args: str, cwd: Path | None = None) -> str:
        return run(
            ["apt-get", *self.options(), *args],
            cwd=cwd,
            shown=f"apt-get <private config in {self.top}> {' '.join(args)}",
        )

    def update(self) -> None:
        """Fetch unstable's package lists; UnknownKey if its signing key is not trusted."""
        try:
            out = self.apt_get("update")
        except ProvisionError as exc:
            out = str(exc)
        if "NO_PUBKEY" in out or "not signed" in out or re.search(r"^[WE]: .*GPG", out, re.M):
            raise UnknownKey(f"unstable's Release is not signed by a key in {self.keyring}:\n{out}")
        if re.search(r"^E: ", out, re.M):
            raise ProvisionError(f"apt-get update of unstable failed:\n{out}")

    def versions(self, packages: Sequence[str]) -> dict[str, str]:
        out = run(
            ["apt-cache", *self.options(), "show", "--no-all-versions", *packages], quiet=True
        )
        versions: dict[str, str] = {}
        name = None
        for line in out.splitlines():
            if line.startswith("Package: "):
                name = line.split(": ", 1)[1]
            elif line.startswith("Version: ") and name:
                versions[name] = line.split(": ", 1)[1]
        return versions

    def download(self, packages: Sequence[str]) -> list[Path]:
        debs = self.top / "debs"
        for old in debs.glob("*.deb"):
            old.unlink()
        self.apt_get("download", *packages, cwd=debs)
        return sorted(debs.glob("*.deb"))


def dpkg_arch() -> str:
    try:
        return run(["dpkg", "--print-architecture"], quiet=True).strip()
    except (OSError, ProvisionError):
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def write_wrapper(cache: Path, arch: str) -> Path:
    triplet, loader_name = ARCHES[arch]
    root = cache / "root"
    libdirs = [root / "usr/lib" / triplet, root / "lib" / triplet]
    loader = next((d / loader_name for d in libdirs if (d / loader_name).exists()), None)
    if loader is None:
        raise ProvisionError(f"no {loader_name} in the unpacked libc6")
    lib_path = ":".join(str(d) for d in libdirs if d.is_dir())
    # The interpreter looks for its stdlib relative to argv[0] (<cache>/bin) first.
    link = cache / "lib"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to("root/usr/lib")
    wrapper = wrapper_path(cache)
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    tmp = wrapper.with_suffix(".tmp")
    tmp.write_text(
        "#!/bin/sh\n"
        "# Generated by tools/provision.py: Debian unstable's CPython 3.14 run through\n"
        "# unstable's own loader (the system's glibc is too old for it). exec keeps the pid.\n"
        f'exec "{loader}" --argv0 "$0" --library-path "{lib_path}" '
        f'"{root}/usr/bin/python3.14" "$@"\n'
    )
    tmp.chmod(0o755)
    tmp.replace(wrapper)
    return wrapper


def probe_wrapper(wrapper: Path) -> str:
    """Start the interpreter and import what heapspy needs; return its version."""
    proc = subprocess.run(
        [str(wrapper), "-I", "-c", f"import sys, {CHECK_IMPORTS}; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise ProvisionError(f"{wrapper} does not run:\n{proc.stdout}{proc.stderr}")
    return proc.stdout.strip()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise concurrent `make provision` runs (engineers run tests side by side)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another provisioning run ({path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def already_provisioned(cache: Path) -> str | None:
    try:
        stamp = json.loads((cache / "provisioned.json").read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("format") != FORMAT or not wrapper_path(cache).exists():
        return None
    try:
        return probe_wrapper(wrapper_path(cache))
    except (ProvisionError, OSError, subprocess.TimeoutExpired):
        return None


def ensure_py314(force: bool = False) -> Path:
    cache = cache_dir()
    with locked(cache.parent / f".{cache.name}.lock"):
        version = None if force else already_provisioned(cache)
        if version:
            say(f"CPython {version} ok ({wrapper_path(cache)})")
            return wrapper_path(cache)
        started = time.monotonic()
        arch = dpkg_arch()
        if arch not in ARCHES:
            raise ProvisionError(f"unsupported architecture {arch!r} (supported: {list(ARCHES)})")
        mirror, keyring = mirror_and_keyring()
        if not Path(keyring).exists():
            say(f"{keyring} missing: installing debian-archive-keyring")
            system_apt_install(["debian-archive-keyring"])
        say(f"fetching CPython 3.14 from {mirror} unstable into {cache} (private apt state)")
        (cache / "provisioned.json").unlink(missing_ok=True)
        apt = PrivateApt(cache / "apt", mirror, keyring, arch)
        try:
            apt.update()
        except UnknownKey:
            # Debian ships new archive keys to stable through point releases and updates.
            say(f"unstable's signing key is not in {keyring}: upgrading debian-archive-keyring")
            system_apt_install(["debian-archive-keyring"])
            apt.update()
        versions = apt.versions(PACKAGES)
        missing = [p for p in PACKAGES if p not in versions]
        if missing:
            raise ProvisionError(f"not in unstable: {', '.join(missing)}")
        debs = apt.download(PACKAGES)
        root = cache / "root"
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        for deb in debs:
            run(["dpkg-deb", "-x", str(deb), str(root)], quiet=True)
        say("unpacked " + ", ".join(f"{p} {versions[p]}" for p in PACKAGES))
        wrapper = write_wrapper(cache, arch)
        version = probe_wrapper(wrapper)
        # Only the unpacked tree is needed from now on.
        shutil.rmtree(cache / "apt")
        (cache / "provisioned.json").write_text(
            json.dumps(
                {
                    "format": FORMAT,
                    "python": version,
                    "mirror": mirror,
                    "keyring": keyring,
                    "arch": arch,
                    "packages": versions,
                    "provisioned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=2,
            )
            + "\n"
        )
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())
        say(
            f"CPython {version} ready: {wrapper} ({size / 2**20:.0f} MiB, "
            f"{time.monotonic() - started:.1f} s)"
        )
        return wrapper


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="re-fetch CPython 3.14")
    parser.add_argument("--skip-go", action="store_true", help="do not check Go's pprof")
    parser.add_argument("--skip-chromium", action="store_true", help="do not check Chromium")
    parser.add_argument("--skip-prometheus", action="store_true", help="do not check Prometheus")
    args = parser.parse_args(argv)
    try:
        if not args.skip_go:
            ensure_pprof()
        if not args.skip_chromium:
            ensure_chromium()
        if not args.skip_prometheus:
            ensure_prometheus()
        ensure_jemalloc()
        ensure_py314(force=args.force)
    except ProvisionError as exc:
        print(f"provision: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
