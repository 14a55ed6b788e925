"""A real browser for the dashboard's tests: Debian's Chromium, driven over WebDriver.

ChromeDriver (Debian's ``chromium-driver``, the same version as the browser)
speaks the W3C WebDriver protocol, plain JSON over HTTP, so httpx (already a
test dependency) drives it and nothing is downloaded at run time. The
browser runs headless with the flags this machine needs (no sandbox as root,
no background networking: the network is closed), in a fresh profile.

:func:`find` locates both programs. When they are missing the tests are
skipped with the reason, except in CI (``CI=true``), where they fail:
scripts/test.sh installs them there.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver", "chromedriver")

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)

_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def _which(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


def find() -> tuple[str, str]:
    """``(chromium, chromedriver)``, or skip (fail in CI) naming what is missing."""
    chromium, driver = _which(CHROMIUM), _which(CHROMEDRIVER)
    if chromium and driver:
        return chromium, driver
    missing = " and ".join(
        n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p
    )
    reason = f"{missing} not installed (apt-get install -y chromium chromium-driver)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser tests: {reason}; scripts/test.sh installs them")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WebDriverError(AssertionError):
    pass


class Browser:
    """One Chromium session: load pages, run a script, click, take a screenshot."""

    def __init__(self, chromium: str, driver: str) -> None:
        self._profile = tempfile.mkdtemp(prefix="ledger-chromium-")
        port = _free_port()
        self._driver = subprocess.Popen(
            [driver, f"--port={port}", "--allowed-ips=127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        try:
            self._wait_ready()
            value = self._call(
                "POST",
                "/session",
                {
                    "capabilities": {
                        "alwaysMatch": {
                            "browserName": "chrome",
                            "goog:chromeOptions": {
                                "binary": chromium,
                                "args": [*FLAGS, f"--user-data-dir={self._profile}"],
                            },
                        }
                    }
                },
            )
            self._session = f"/session/{value['sessionId']}"
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if self._http.get("/status").json()["value"]["ready"]:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if self._driver.poll() is not None or time.monotonic() > deadline:
                raise WebDriverError("chromedriver did not start")
            time.sleep(0.05)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        reply = self._http.request(method, path, json=body)
        value = reply.json().get("value")
        if reply.status_code != 200:
            raise WebDriverError(f"{method} {path}: {value}")
        return value

    def get(self, url: str) -> None:
        self._call("POST", f"{self._session}/url", {"url": url})

    @property
    def url(self) -> str:
        return str(self._call("GET", f"{self._session}/url"))

    def run(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body; ``arguments[i]`` are ``args``) and return its value."""
        return self._call(
            "POST", f"{self._session}/execute/sync", {"script": script, "args": list(args)}
        )

    def click(self, selector: str) -> None:
        element = self._call(
            "POST", f"{self._session}/element", {"using": "css selector", "value": selector}
        )
        self._call("POST", f"{self._session}/element/{element[_ELEMENT]}/click", {})

    def text(self, selector: str) -> str:
        """The rendered text (``innerText``) of the first element matching ``selector``."""
        return str(self.run("return document.querySelector(arguments[0]).innerText", selector))

    def size(self, width: int, height: int) -> None:
        self._call("POST", f"{self._session}/window/rect", {"width": width, "height": height})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("GET", f"{self._session}/screenshot"))

    def full_page_screenshot(self, width: int) -> bytes:
        """The whole page at ``width`` CSS pixels: the window grows to the page's height."""
        self.size(width, 900)
        height = int(self.run("return document.documentElement.scrollHeight"))
        self.size(width, height + 140)  # the window's frame is not part of the viewport
        return self.screenshot()

    def close(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            with contextlib.suppress(httpx.HTTPError, WebDriverError):
                self._call("DELETE", session)
        self._http.close()
        self._driver.terminate()
        try:
            self._driver.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._driver.kill()
            self._driver.wait()
        shutil.rmtree(self._profile, ignore_errors=True)


def save(png: bytes, path: Path) -> None:
    assert png.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG"
    path.write_bytes(png)
