"""The HTTP endpoint: Go's ``/debug/pprof/`` paths and Prometheus' ``/metrics``.

It runs in a thread of the process that serves it (``heapspy attach --listen``, or the
daemon). ``heapspy attach`` talks to its session through the control socket; the daemon,
whose sessions are threads of its own process, reads their figures and current profile
directly (``heapspy.daemon.serving``): a scrape of 50 workers then waits for none of the
50 session threads. Requests are small and few (a scrape every 15 s), so a thread per
request is fine; each is bounded in time.
"""

from __future__ import annotations

import html
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from heapspy.errors import Remedy, UsageError
from heapspy.serve import workers as workers_mod
from heapspy.serve.access import (
    Caller,
    ListenAddress,
    tcp_peer_uid,
    token_matches,
    unix_peer_uid,
)
from heapspy.serve.delta import delta, with_default_type
from heapspy.serve.exposition import CONTENT_TYPE, Exposition, add_worker

log = logging.getLogger("heapspy")

MAX_SECONDS = 300.0  # a delta profile's window, at most (Go's default limit is the write timeout)
PPROF_TYPE = "application/octet-stream"


@dataclass
class ServeOptions:
    token: str | None = None
    allow_gc: bool = True
    # extra series about the server's owner (the daemon: attach failures, watched count)
    extra_metrics: Callable[[Exposition], None] | None = None
    list_workers: Callable[[], list[workers_mod.Worker]] = field(default=workers_mod.list_workers)
    # one worker by pid (None: no session on it), for requests that name one
    find_worker: Callable[[int], workers_mod.Worker | None] = field(default=workers_mod.find_worker)
    # one worker's figures and current profile (``gc``: collect first); raise WorkerGone
    metrics: Callable[[int], dict[str, Any]] = field(default=workers_mod.metrics)
    profile: Callable[[int, bool], bytes] = field(default=workers_mod.profile)

    def metrics_or_none(self, pid: int) -> dict[str, Any] | None:
        try:
            return self.metrics(pid)
        except workers_mod.WorkerGone:  # ended between listing and asking
            return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("http: " + format, *args)

    # --- who is asking ---------------------------------------------------------------
    def _caller(self) -> Caller:
        token = token_matches(self.headers.get("Authorization"), self.server.options.token)
        if self.server.address.path:
            return Caller(unix_peer_uid(self.connection), token)
        peer = self.client_address
        local = self.connection.getsockname()
        return Caller(tcp_peer_uid((peer[0], peer[1]), (local[0], local[1])), token)

    # --- responses ------------------------------------------------------------------
    def _send(
        self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _text(self, status: int, text: str) -> None:
        self._send(status, (text.rstrip("\n") + "\n").encode(), "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, max_num_fields=16).items()}
        caller = self._caller()
        try:
            if url.path == "/metrics":
                return self._metrics(caller)
            if url.path in ("/debug/pprof", "/debug/pprof/"):
                return self._index(caller)
            if url.path == "/debug/pprof/census":
                return self._census(caller, query)
            if url.path in ("/debug/pprof/heap", "/debug/pprof/allocs"):
                kind = "alloc_space" if url.path.endswith("allocs") else "inuse_space"
                return self._profile(caller, query, kind)
            if url.path == "/":
                return self._send(
                    HTTPStatus.FOUND, b"", "text/plain", {"Location": "/debug/pprof/"}
                )
            self._text(HTTPStatus.NOT_FOUND, f"heapspy: no page at {url.path}")
        except BrokenPipeError:
            pass

    def _visible(self, caller: Caller) -> list[workers_mod.Worker]:
        return [w for w in self.server.options.list_workers() if caller.may_read(w.uid)]

    def _metrics(self, caller: Caller) -> None:
        expo = Exposition()
        if self.server.options.extra_metrics is not None and caller.may_read(None):
            self.server.options.extra_metrics(expo)
        for worker in self._visible(caller):
            figures = self.server.options.metrics_or_none(worker.pid)
            if figures is not None:
                add_worker(expo, figures)
        self._send(HTTPStatus.OK, expo.text().encode(), CONTENT_TYPE)

    def _index(self, caller: Caller) -> None:
        rows = []
        for w in self._visible(caller):
            figures = self.server.options.metrics_or_none(w.pid) or {}
            watch = str(figures.get("watch") or "")
            links = " ".join(
                f'<a href="/debug/pprof/{p}?pid={w.pid}">{p}</a>'
                for p in ("heap", "allocs", "census")
            )
            rows.append(
                f"<tr><td>{w.pid}</td><td>{html.escape(watch)}</td>"
                f"<td><code>{html.escape(w.command[:300])}</code></td><td>{links}</td></tr>"
            )
        body = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>heapspy /debug/pprof/"
            "</title></head><body><h1>heapspy: watched workers</h1>"
            "<table><tr><th>pid</th><th>watch</th><th>command line</th><th>profiles</th></tr>"
            + "".join(rows)
            + "</table><p>Profiles are Go heap profiles: <code>go tool pprof "
            "http://HOST:PORT/debug/pprof/heap?pid=N</code>; <code>seconds=S</code> gives a "
            "delta over S seconds; <code>gc=1</code> runs a garbage collection first; "
            "<code>census</code> is what holds the memory, by type and by root (a walk of "
            "every object: one a minute at most). "
            "<a href='/metrics'>/metrics</a> is Prometheus' text format.</p></body></html>"
        )
        self._send(HTTPStatus.OK, body.encode(), "text/html; charset=utf-8")

    def _choose(self, caller: Caller, query: dict[str, str]) -> workers_mod.Worker | None:
        if "pid" in query:
            text = query["pid"]
            if not text.isdigit() or len(text) > 10:
                self._text(HTTPStatus.BAD_REQUEST, f"heapspy: pid must be a number, got {text!r}")
                return None
            found = self.server.options.find_worker(int(text))
            if found is None or not caller.may_read(found.uid):
                self._text(HTTPStatus.NOT_FOUND, f"heapspy: no session on pid {text} for you")
                return None
            return found
        visible = self._visible(caller)
        if len(visible) == 1:
            return visible[0]
        if not visible:
            self._text(HTTPStatus.NOT_FOUND, "heapspy: no watched worker you may read")
            return None
        choices = ", ".join(str(w.pid) for w in visible)
        self._text(
            HTTPStatus.BAD_REQUEST, f"heapspy: several workers; add ?pid=N, one of {choices}"
        )
        return None

    def _census(self, caller: Caller, query: dict[str, str]) -> None:
        worker = self._choose(caller, query)
        if worker is None:
            return
        try:
            data = workers_mod.census(worker.pid)
        except workers_mod.WorkerGone as exc:
            self._text(HTTPStatus.SERVICE_UNAVAILABLE, f"heapspy: pid {worker.pid}: {exc}")
            return
        self._send(
            HTTPStatus.OK,
            data,
            PPROF_TYPE,
            {"Content-Disposition": f'attachment; filename="census-{worker.pid}.pb.gz"'},
        )

    def _profile(self, caller: Caller, query: dict[str, str], kind: str) -> None:
        worker = self._choose(caller, query)
        if worker is None:
            return
        gc = query.get("gc", "0") not in ("", "0", "false")
        if gc and not self.server.options.allow_gc:
            self._text(HTTPStatus.FORBIDDEN, "heapspy: gc=1 is turned off in this configuration")
            return
        seconds = 0.0
        if query.get("seconds"):
            try:
                seconds = float(query["seconds"])
            except ValueError:
                seconds = -1.0
            if not 0 < seconds <= MAX_SECONDS:
                self._text(
                    HTTPStatus.BAD_REQUEST,
                    f"heapspy: seconds must be between 0 and {MAX_SECONDS:g}, "
                    f"got {query['seconds']!r}",
                )
                return
        try:
            data = self.server.options.profile(worker.pid, gc)
            if seconds:
                time.sleep(seconds)
                later = self.server.options.profile(worker.pid, False)
                data = delta(data, later, kind)
            elif kind != "inuse_space":
                data = with_default_type(data, kind)
        except workers_mod.WorkerGone as exc:
            self._text(HTTPStatus.SERVICE_UNAVAILABLE, f"heapspy: pid {worker.pid}: {exc}")
            return
        name = "allocs" if kind == "alloc_space" else "heap"
        self._send(
            HTTPStatus.OK,
            data,
            PPROF_TYPE,
            {"Content-Disposition": f'attachment; filename="{name}-{worker.pid}.pb.gz"'},
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: ListenAddress, options: ServeOptions) -> None:
        self.address = address
        self.options = options
        if address.path:
            self.address_family = socket.AF_UNIX
            super().__init__(address.path, _Handler, bind_and_activate=False)  # type: ignore[arg-type]
        else:
            self.address_family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
            super().__init__((address.host, address.port), _Handler, bind_and_activate=False)

    def server_bind(self) -> None:
        if self.address.path:
            try:
                os.unlink(self.address.path)
            except FileNotFoundError:
                pass
            old = os.umask(0o111)  # connect needs write: any local user may ask, uid decides
            try:
                self.socket.bind(self.address.path)
            finally:
                os.umask(old)
            self.server_address = self.address.path  # type: ignore[assignment]
            return
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        sock.settimeout(MAX_SECONDS + 60)
        if self.address.path:
            return sock, ("unix", 0)
        # headers and body go out as two writes: without this the body waits for the
        # client's delayed ACK of the headers (Nagle), up to 40 ms a request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr


@dataclass
class Endpoint:
    """A running endpoint; ``close`` stops it and removes a Unix socket."""

    server: _Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        address = self.server.address
        if address.path:
            return f"unix:{address.path}"
        host, port = self.server.server_address[:2]
        text = host.decode() if isinstance(host, bytes) else str(host)
        text = f"[{text}]" if ":" in text else text
        return f"http://{text}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.server.address.path:
            try:
                os.unlink(self.server.address.path)
            except OSError:
                pass


def serve(address: ListenAddress, options: ServeOptions) -> Endpoint:
    """Start serving in a background thread."""
    if not address.loopback and options.token is None:
        raise UsageError(
            f"Refusing to serve heap profiles on {address}, which is not loopback, without a "
            "token: a remote caller's user cannot be checked.",
            remedies=(Remedy("listen_token"),),
        )
    server = _Server(address, options)
    try:
        server.server_bind()
        server.server_activate()
    except OSError as exc:
        server.server_close()
        raise UsageError(f"Cannot listen on {address}: {exc.strerror or exc}.") from None
    # A process that forks (the daemon starts its session processes so) must not hand
    # the listening socket to its children: they would keep the port after a restart.
    os.register_at_fork(after_in_child=server.socket.close)
    thread = threading.Thread(target=server.serve_forever, name="heapspy-http", daemon=True)
    thread.start()
    return Endpoint(server, thread)
