"""The HTTP endpoint: Go's /debug/pprof/ paths read by the real `go tool pprof`, /metrics
checked by the real `promtool` and scraped by a real Prometheus, and who may read what."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gotool import _env, require_go
from interpreters import Interpreter, find_interpreters
from support import LEAKY_WORKER, run_heapspy, wait_for

from heapspy import profile_pb2 as pb
from heapspy.errors import UsageError
from heapspy.serve.access import ListenAddress, diag_uid, parse_listen, table_uid, tcp_peer_uid
from heapspy.serve.exposition import Exposition, add_worker

TOKEN = "s3cret-token-for-scrapers-0123456789"


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9465", "--listen") == ListenAddress("127.0.0.1", 9465)
    assert parse_listen("[::1]:9465", "--listen") == ListenAddress("::1", 9465)
    assert parse_listen(":9465", "--listen") == ListenAddress("127.0.0.1", 9465)
    assert parse_listen("/run/heapspy/http.sock", "--listen") == ListenAddress(
        path="/run/heapspy/http.sock"
    )
    assert parse_listen("unix:/tmp/x.sock", "--listen").path == "/tmp/x.sock"
    assert not parse_listen("0.0.0.0:9465", "--listen").loopback
    assert parse_listen("127.0.0.2:1", "--listen").loopback
    for bad in ("9465", "127.0.0.1:http", "127.0.0.1:70000", "example.com:80"):
        with pytest.raises(UsageError):
            parse_listen(bad, "--listen")


def test_loopback_callers_are_known_by_uid() -> None:
    """The kernel's socket table names the user behind a loopback connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = (
        f"import socket,sys;s=socket.create_connection(('127.0.0.1',{port}));"
        "print(s.getsockname()[1],flush=True);sys.stdin.read()"
    )
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if os.geteuid() != 0:
        as_nobody = []
    client = subprocess.Popen(
        [*as_nobody, "/usr/bin/python3", "-c", code], stdout=subprocess.PIPE, stdin=subprocess.PIPE
    )
    try:
        conn, peer = server.accept()
        assert client.stdout is not None
        client.stdout.readline()
        local = conn.getsockname()
        uid = tcp_peer_uid(peer, local)
        expected = 65534 if as_nobody else os.geteuid()
        assert uid == expected
        # both ways of asking agree: the kernel's sock_diag and its socket table
        assert diag_uid(peer[0], peer[1], local[0], local[1]) == expected
        assert table_uid(peer[0], peer[1], local[0], local[1]) == expected
        assert diag_uid(peer[0], peer[1], local[0], local[1] ^ 1) is None  # no such socket
        conn.close()
    finally:
        client.kill()
        client.communicate()
        server.close()


def _promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.skip("promtool is not installed (tools/provision.py installs prometheus)")
    return found


def _check_metrics(text: str) -> None:
    out = subprocess.run(
        [_promtool(), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr + text


def test_exposition_is_valid_for_promtool() -> None:
    expo = Exposition()
    add_worker(
        expo,
        {
            "pid": 42,
            "watch": 'api "v2"\n',
            "rss": 1 << 20,
            "live_heap": 12345,
            "live_heap_err95": 10.5,
            "allocated_bytes": 99,
            "allocations": 3,
            "frees": None,
            "gc_collections": [3, 1, 0],
            "dumps": {"final": 1, "rss>1GiB": 2},
            "psi_some_avg10": 12.5,
        },
    )
    text = expo.text()
    _check_metrics(text)
    assert 'heapspy_live_heap_bytes{pid="42",watch="api \\"v2\\"\\n"} 12345' in text
    assert "heapspy_frees_total" not in text  # unknown, not 0
    assert 'heapspy_gc_collections_total{pid="42",watch="api \\"v2\\"\\n",generation="2"} 0' in text
    assert "heapspy_memory_pressure_some_ratio" in text and " 0.125" in text


# --- a real session behind the endpoint ------------------------------------------


def _interp() -> Interpreter:
    found = [i for i in find_interpreters() if i.version == (3, 11)]
    if not found:
        pytest.skip("no CPython 3.11")
    return found[0]


@dataclass
class Served:
    worker: subprocess.Popen[str]
    heapspy: subprocess.Popen[str]
    url: str

    @property
    def pid(self) -> int:
        return self.worker.pid


def _start_worker(interp: Interpreter) -> subprocess.Popen[str]:
    worker = subprocess.Popen(
        [*interp.argv, str(LEAKY_WORKER), "0.0001"], stdout=subprocess.PIPE, text=True
    )
    assert worker.stdout is not None and worker.stdout.readline().startswith("READY")
    return worker


def _attach_serving(pid: int, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    token = tmp_path / "token"
    if not token.exists():
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "heapspy",
            "attach",
            str(pid),
            "--rate",
            "64KiB",
            "--interval",
            "0.5",
            "--dump-dir",
            str(tmp_path / "dumps"),
            "--listen",
            "127.0.0.1:0",
            "--listen-token-file",
            str(token),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    serving = proc.stderr.readline()
    match = re.search(r"serving (http://\S+)/debug/pprof/", serving)
    assert match, serving + proc.stderr.read()
    attached = proc.stderr.readline()
    assert "attached to" in attached, attached + proc.stderr.read()
    return proc, match[1]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    worker = _start_worker(_interp())
    heapspy = None
    try:
        heapspy, url = _attach_serving(worker.pid, tmp_path)
        yield Served(worker, heapspy, url)
    finally:
        if heapspy is not None:
            heapspy.terminate()
            heapspy.communicate(timeout=30)
        worker.kill()
        worker.wait()
        assert worker.stdout is not None
        worker.stdout.close()


def _get(url: str, token: str | None = None, timeout: float = 60) -> tuple[int, bytes, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def _pprof_url(*args: str, cwd: Path) -> str:
    """`go tool pprof ARGS URL` as a user runs it: Go fetches over HTTP itself. Only
    its lines about fetching, waiting and saving may appear on stderr."""
    env = {**_env(), "PPROF_TMPDIR": str(cwd)}
    out = subprocess.run(
        [require_go(), "tool", "pprof", *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    noise = [
        line
        for line in out.stderr.splitlines()
        if line.strip()
        and not line.startswith(("Fetching profile over HTTP", "Saved profile in", "Please wait"))
    ]
    assert not noise, out.stderr
    return out.stdout


def _top_function(text: str) -> str:
    """The first function of `pprof -top` output ("" when it lists none yet)."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["flat", "flat%"])
    return lines[header + 1].split()[-1] if len(lines) > header + 1 else ""


def _profile(data: bytes) -> pb.Profile:
    message = pb.Profile()
    message.ParseFromString(gzip.decompress(data))
    return message


def test_go_tool_pprof_reads_the_live_heap_over_http(served: Served, tmp_path: Path) -> None:
    require_go()
    heap = f"{served.url}/debug/pprof/heap"

    # the leak grows: wait until the live profile names it first, as a user would re-fetch
    def leak_on_top() -> bool:
        out = _pprof_url("-top", "-nodefraction=0", heap, cwd=tmp_path)
        return "flat%" in out and _top_function(out) == "Shipper.buffer_line"

    assert wait_for(leak_on_top, 60), _pprof_url("-top", heap, cwd=tmp_path)
    # Go's parameters: allocs defaults to alloc_space, seconds= gives a delta
    status, data, ctype = _get(f"{served.url}/debug/pprof/allocs?pid={served.pid}")
    assert status == 200 and ctype == "application/octet-stream"
    message = _profile(data)
    assert message.string_table[message.default_sample_type] == "alloc_space"
    status, data, _ = _get(f"{heap}?seconds=1.5")
    assert status == 200
    message = _profile(data)
    assert any("delta profile over" in message.string_table[c] for c in message.comment)
    assert 1.4e9 <= message.duration_nanos
    out = _pprof_url("-top", "-seconds", "1", heap, cwd=tmp_path)
    assert "delta profile over" in out and "Shipper.buffer_line" in out
    status, data, _ = _get(f"{heap}?gc=1")
    assert status == 200 and _profile(data).sample


def test_census_over_http_names_what_holds_the_memory(served: Served, tmp_path: Path) -> None:
    """/debug/pprof/census: a census of the worker, types at the leaves, roots first."""
    census = f"{served.url}/debug/pprof/census?pid={served.pid}"
    status, data, ctype = _get(census, timeout=180)
    assert status == 200 and ctype == "application/octet-stream", data[:300]
    message = _profile(data)
    types = {message.string_table[t.type] for t in message.sample_type}
    assert {"objects", "space"} <= types
    out = _pprof_url("-top", "-sample_index=space", census, cwd=tmp_path)
    assert re.search(r"\bbytes\b", out), out  # the worker keeps its lines as bytes
    # within a minute the same census is served again, not a new walk of the heap
    again = _get(census, timeout=60)[1]
    assert again == data


def test_metrics_index_and_bad_requests(served: Served) -> None:
    rss = re.compile(rf'heapspy_rss_bytes{{pid="{served.pid}",watch=""}} \d+')
    # the worker's figures arrive with the session's first interval
    assert wait_for(lambda: bool(rss.search(_get(f"{served.url}/metrics")[1].decode())), 30)
    status, body, ctype = _get(f"{served.url}/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    text = body.decode()
    _check_metrics(text)
    assert f'heapspy_up{{pid="{served.pid}",watch=""}} 1' in text
    assert re.search(rf'heapspy_allocations_total{{pid="{served.pid}",watch=""}} \d+', text)
    status, body, _ = _get(f"{served.url}/debug/pprof/")
    assert status == 200 and f"heap?pid={served.pid}" in body.decode()
    assert _get(f"{served.url}/debug/pprof/heap?pid=abc")[0] == 400
    assert _get(f"{served.url}/debug/pprof/heap?pid=1")[0] == 404
    assert _get(f"{served.url}/debug/pprof/heap?seconds=-3")[0] == 400
    assert _get(f"{served.url}/nothing")[0] == 404


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to call as another user")
def test_another_user_reads_nothing_without_the_token(served: Served) -> None:
    code = (
        "import sys,urllib.request as u,urllib.error as e\n"
        "r=u.Request(sys.argv[1])\n"
        "if len(sys.argv)>2: r.add_header('Authorization','Bearer '+sys.argv[2])\n"
        "try:\n s=u.urlopen(r,timeout=60);print(s.status)\n print(s.read().decode())\n"
        "except e.HTTPError as x:\n print(x.code);print(x.read().decode())\n"
    )

    def as_nobody(url: str, *token: str) -> tuple[int, str]:
        out = subprocess.run(
            [
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                code,
                url,
                *token,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        status, _, body = out.stdout.partition("\n")
        assert status.strip().isdigit(), out.stdout + out.stderr
        return int(status), body

    status, body = as_nobody(f"{served.url}/debug/pprof/heap")
    assert status == 404 and "no watched worker you may read" in body
    status, body = as_nobody(f"{served.url}/metrics")
    assert status == 200 and "heapspy_up" not in body
    status, body = as_nobody(f"{served.url}/debug/pprof/heap?pid={served.pid}", "wrong" * 8)
    assert status == 404
    status, body = as_nobody(f"{served.url}/metrics", TOKEN)
    assert status == 200 and f'heapspy_up{{pid="{served.pid}"' in body


def test_refusals_before_serving(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o644)
    for args, words in (
        (["--listen", "0.0.0.0:0"], "not loopback"),
        (["--listen", "127.0.0.1:0", "--listen-token-file", str(token)], "can be read by others"),
        (["--listen", "nowhere"], "HOST:PORT"),
    ):
        out = run_heapspy("attach", str(os.getpid()), *args, timeout=60)
        assert out.returncode == 2 and words in out.stderr, out.stderr


def test_no_scrape_gc_is_refused(tmp_path: Path) -> None:
    worker = _start_worker(_interp())
    heapspy = None
    try:
        heapspy, url = _attach_serving(worker.pid, tmp_path, "--no-scrape-gc")
        status, body, _ = _get(f"{url}/debug/pprof/heap?gc=1")
        assert status == 403 and b"gc=1" in body
        assert _get(f"{url}/debug/pprof/heap")[0] == 200
    finally:
        if heapspy is not None:
            heapspy.terminate()
            heapspy.communicate(timeout=30)
        worker.kill()
        worker.communicate()


# --- a real Prometheus scraping it -------------------------------------------------


@pytest.mark.slow
def test_prometheus_scrapes_a_growing_live_heap(served: Served, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if not prometheus:
        pytest.skip("prometheus is not installed (tools/provision.py installs it)")
    target = urllib.parse.urlsplit(served.url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
        "scrape_configs:\n  - job_name: heapspy\n"
        f"    authorization:\n      credentials_file: {tmp_path / 'token'}\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    query = urllib.parse.quote(f'heapspy_live_heap_bytes{{pid="{served.pid}"}}[60s]')
    api = f"http://127.0.0.1:{port}/api/v1/query?query={query}"

    def grown() -> bool:
        try:
            status, body, _ = _get(api, timeout=5)
        except OSError:
            return False
        if status != 200:
            return False
        result = json.loads(body)["data"]["result"]
        if not result:
            return False
        values = [float(v) for _t, v in result[0]["values"]]
        return len(values) >= 3 and values[-1] > values[0] > 0

    try:
        assert wait_for(grown, 90), _get(api, timeout=5)
    finally:
        server.terminate()
        server.wait(timeout=30)
        assert server.stderr is not None
        server.stderr.close()


# --- the daemon serves every worker it watches ------------------------------------


def test_daemon_serves_its_workers(tmp_path: Path) -> None:
    interp = _interp()
    tag = f"tag{os.getpid()}x{time.monotonic_ns()}"
    workers = [
        subprocess.Popen(
            [*interp.argv, str(LEAKY_WORKER), "0.001", tag], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    config = tmp_path / "heapspy.toml"
    config.write_text(
        '[daemon]\nscan_interval = "0.2s"\nsettle = "0s"\nlisten = "127.0.0.1:0"\n'
        f'[[watch]]\nname = "api"\ncmdline = "{tag}"\ndump_dir = "{tmp_path / "dumps"}"\n'
        'rate = "64KiB"\ninterval = "0.5s"\n'
    )
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "heapspy", "daemon", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        for w in workers:
            assert w.stdout is not None and w.stdout.readline().startswith("READY")

        def attached() -> bool:
            text = log_path.read_text()
            return all(f"attached to {w.pid} " in text for w in workers)

        assert wait_for(attached, 60), log_path.read_text()
        match = re.search(r"serving (http://\S+)/debug/pprof/", log_path.read_text())
        assert match, log_path.read_text()
        url = match[1]
        status, body, _ = _get(f"{url}/debug/pprof/heap")
        assert status == 400
        assert all(str(w.pid) in body.decode() for w in workers), body
        status, body, _ = _get(f"{url}/debug/pprof/heap?pid={workers[1].pid}")
        assert status == 200 and _profile(body).string_table
        status, body, _ = _get(f"{url}/debug/pprof/")
        assert all(f"heap?pid={w.pid}" in body.decode() for w in workers)
        assert body.decode().count("<td>api</td>") == 2

        def both_series() -> bool:
            text = _get(f"{url}/metrics")[1].decode()
            return all(f'heapspy_rss_bytes{{pid="{w.pid}",watch="api"}}' in text for w in workers)

        assert wait_for(both_series, 30)
        text = _get(f"{url}/metrics")[1].decode()
        _check_metrics(text)
        assert "heapspy_daemon_sessions 2" in text
        assert "heapspy_daemon_attach_failures_total 0" in text
        # its sessions are served from the daemon's own data, not through their control
        # sockets (each a round trip to the session's thread): without the socket, the
        # worker is still served
        (Path(os.environ["HEAPSPY_RUNTIME_DIR"]) / "sessions" / f"{workers[0].pid}.sock").unlink()
        status, body, _ = _get(f"{url}/debug/pprof/heap?pid={workers[0].pid}")
        assert status == 200 and _profile(body).string_table
        text = _get(f"{url}/metrics")[1].decode()
        assert f'heapspy_rss_bytes{{pid="{workers[0].pid}",watch="api"}}' in text
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        for w in workers:
            w.kill()
            w.communicate()
