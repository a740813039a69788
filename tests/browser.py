"""Drive a real headless Chromium over the DevTools protocol, for the flame graph tests.

Tests import this as ``from browser import ...`` (like ``gotool``). The browser is
started with ``--remote-debugging-pipe``: it reads protocol commands from fd 3 and writes
replies and events to fd 4, one JSON message per NUL-terminated chunk. That needs nothing
beyond the standard library (no websocket client, no Selenium, no driver binary) and lets
a test load a page, run JavaScript in it, measure what was laid out, and send real mouse
and keyboard input.

``tools/provision.py`` installs Debian's ``chromium``; ``require_browser()`` skips a test
only after a real probe (start the browser, load a page, run a script) has failed.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

# tools/provision.py looks for the same names.
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = (
    "--headless",
    # root in a container: the setuid/namespace sandbox cannot start
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)
HOW_TO_GET_IT = (
    "run `make provision` (as root it installs Debian's chromium) or `apt-get install chromium`"
)


class BrowserError(Exception):
    """The browser died, did not answer, or a protocol command failed."""


def _above_nine(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """One headless Chromium process; ``page()`` opens a tab with a fixed viewport."""

    def __init__(self, binary: str, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="heapspy-chromium-")
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # The protocol's fds must be 3 and 4 in the browser: a shell puts them there and
        # execs it, so the pid we hold is the browser's own. The redirections run in
        # order, so the browser's ends must not be 3 or 4 already: they are moved above 9,
        # which bash accepts in a redirection (dash does not).
        commands_read = _above_nine(commands_read)
        replies_write = _above_nine(replies_write)
        self.proc = subprocess.Popen(
            [
                "/bin/bash",
                "-c",
                f'exec "$0" "$@" 3<&{commands_read} 4>&{replies_write}',
                binary,
                *_FLAGS,
                f"--user-data-dir={self._profile.name}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(commands_read, replies_write),
            start_new_session=True,  # its zygote and renderers share our child's group
        )
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    # --- the protocol ------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            written = os.write(self._commands, data)
            data = data[written:]

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("the browser did not answer in time")
            ready, _, _ = select.select([self._replies], [], [], left)
            if ready:
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    try:
                        status = self.proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        status = None
                    raise BrowserError(f"the browser closed its protocol pipe (status {status})")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return dict(json.loads(message))

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._send(message)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") != ident:
                self._events.append(reply)
                continue
            if "error" in reply:
                raise BrowserError(f"{method} failed: {reply['error']}")
            return dict(reply.get("result", {}))

    def wait_event(self, method: str, session: str, timeout: float | None = None) -> dict[str, Any]:
        """The next event ``method`` of ``session``, consumed (other events are kept)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for index, event in enumerate(self._events):
                if event.get("method") == method and event.get("sessionId") == session:
                    del self._events[index]
                    return dict(event.get("params", {}))
            self._events.append(self._receive(deadline))

    def events(self, method: str, session: str) -> list[dict[str, Any]]:
        """Parameters of every event ``method`` of ``session`` received so far."""
        return [
            dict(event.get("params", {}))
            for event in self._events
            if event.get("method") == method and event.get("sessionId") == session
        ]

    # --- pages -------------------------------------------------------------------------

    def page(self, width: int = 1200, height: int = 800) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = Page(self, target, session)
        for domain in ("Page", "Runtime", "Network"):
            page.call(f"{domain}.enable")
        page.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        return page

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        # Helpers (zygote, renderers) of this browser only: the group we created for it.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(self._commands)
        os.close(self._replies)
        self._profile.cleanup()


class Page:
    """One tab: navigate, evaluate JavaScript, send mouse and keyboard input."""

    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser = browser
        self.target = target
        self.session = session

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.call(method, params, self.session)

    def goto(self, url: str) -> float:
        """Load ``url`` and wait for its load event; the seconds that took."""
        started = time.monotonic()
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"cannot load {url}: {result['errorText']}")
        self.browser.wait_event("Page.loadEventFired", self.session)
        return time.monotonic() - started

    def eval(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page (promises are awaited)."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression!r} threw: {text}")
        return result["result"].get("value")

    def mouse(self, kind: str, x: float, y: float) -> None:
        params: dict[str, Any] = {"type": kind, "x": x, "y": y}
        if kind != "mouseMoved":
            params.update(button="left", clickCount=1)
        self.call("Input.dispatchMouseEvent", params)

    def hover(self, x: float, y: float) -> None:
        self.mouse("mouseMoved", x, y)

    def click(self, x: float, y: float) -> None:
        self.hover(x, y)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y)

    def type_text(self, text: str) -> None:
        """Type into the focused element, as a user's keyboard would."""
        self.call("Input.insertText", {"text": text})

    def key(self, key: str, code: str, key_code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent",
                {"type": kind, "key": key, "code": code, "windowsVirtualKeyCode": key_code},
            )

    def errors(self) -> list[str]:
        """Uncaught exceptions and console errors the page produced so far."""
        thrown = [
            event["exceptionDetails"].get("exception", {}).get("description", "")
            or event["exceptionDetails"].get("text", "")
            for event in self.browser.events("Runtime.exceptionThrown", self.session)
        ]
        console = [
            " ".join(str(arg.get("value", arg.get("description", ""))) for arg in event["args"])
            for event in self.browser.events("Runtime.consoleAPICalled", self.session)
            if event.get("type") == "error"
        ]
        return thrown + console

    def requested_urls(self) -> list[str]:
        """Every URL the page asked for (document, scripts, images, fetches...)."""
        return [
            event["request"]["url"]
            for event in self.browser.events("Network.requestWillBeSent", self.session)
        ]

    def close(self) -> None:
        self.browser.call("Target.closeTarget", {"targetId": self.target})


def _candidates() -> list[str]:
    return [found for name in _NAMES if (found := shutil.which(name))]


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[str | None, str]:
    """A browser binary that really renders a page and runs its script, or why not."""
    tried = []
    for binary in dict.fromkeys(_candidates()):
        browser = None
        try:
            browser = Browser(binary)
            page = browser.page()
            page.goto("data:text/html,<p id=p>x</p><script>p.textContent = 6 * 7</script>")
            answer = page.eval("document.getElementById('p').textContent")
            if answer == "42":
                return binary, ""
            tried.append(f"{binary}: the probe page said {answer!r}, not '42'")
        except (BrowserError, OSError) as exc:
            tried.append(f"{binary}: {exc}")
        finally:
            if browser is not None:
                browser.close()
    return None, "; ".join(tried) or f"none of {', '.join(_NAMES)} is on PATH"


def require_browser() -> str:
    """The Chromium binary, or skip the test saying why and how to get one."""
    binary, why = _probe()
    if binary is None:
        pytest.skip(f"headless Chromium unavailable ({why}); {HOW_TO_GET_IT}")
    return binary


def file_url(path: Path, fragment: str = "") -> str:
    return path.resolve().as_uri() + (f"#{fragment}" if fragment else "")
