"""The status page in a real browser: headless Chromium loads it, runs its
script, and shows the live tree.

The first test has Chromium dump the DOM once the page has run
(``--dump-dom``); the second drives it through chromedriver's WebDriver HTTP
API (plain urllib: no Selenium) to watch the page follow the tree. Without
Chromium they skip, except in CI (``CI`` set), where .ci/run installs it.
"""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from threadsup import Backoff, CancelToken, Signal, State, Supervisor
from threadsup.status import StatusServer
from threadsup.testing import (
    AtLeast,
    Harness,
    RemoteRunnable,
    healthy_until_cancelled,
    wait_status,
)

#: Headless Chromium as root, with no network, GPU or first-run business.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: An error message a page must show as text, not run as markup.
HOSTILE = "<img src=x onerror=alert(1)> & <b>bold</b>"
#: How soon a change in the tree must show on the page.
LIVE = 2.0


def program(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not os.access(path, os.X_OK):
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{name} is missing: in CI this test never skips (.ci/run installs it)")
        pytest.skip(f"{name} is not installed (apt-get install chromium chromium-driver)")
    return path


@pytest.fixture
def serve() -> Iterator[Callable[[Supervisor], StatusServer]]:
    servers: list[StatusServer] = []

    def start(sup: Supervisor) -> StatusServer:
        server = StatusServer(sup).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


class Rows(html.parser.HTMLParser):
    """The rows of the page's tree (``<tr data-dn>``): their attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str | None]] = {}
        self.text: dict[str, str] = {}
        self.tags: set[str] = set()
        self._row: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        attributes = dict(attrs)
        dn = attributes.get("data-dn")
        if tag == "tr" and dn is not None:
            self._row = dn
            self.rows[dn] = attributes
            self.text[dn] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None:
            self.text[self._row] += data + " "


def test_the_page_shows_every_node_and_its_state(
    harness: Harness, serve: Callable[[Supervisor], StatusServer], tmp_path: Path
) -> None:
    chromium = program("chromium")

    def hostile(token: CancelToken) -> None:
        raise ConnectionError(HOSTILE)

    def root(token: CancelToken) -> None:
        token.run("db", healthy_until_cancelled)
        token.run_group({"web": healthy_until_cancelled, "cache": healthy_until_cancelled})
        token.run("flaky", hostile, backoff=Backoff(initial=3600.0, maximum=3600.0, jitter=0.0))
        token.run("starting", lambda token: token.wait())  # never signals: NEW
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    for dn in ("root", "root.db", "root.web", "root.cache"):
        wait_status(sup, dn, state=State.HEALTHY)
    wait_status(sup, "root.flaky", state=State.DEAD, next_restart_at=AtLeast(time.time() + 3000))
    wait_status(sup, "root.starting", running=True)
    server = serve(sup)
    dom = subprocess.run(
        [
            chromium,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            f"{server.url}/",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    page = Rows()
    page.feed(dom)
    snapshot = sup.snapshot()
    assert list(page.rows) == list(snapshot), dom  # every node, parents first
    for dn, status in snapshot.items():
        assert page.rows[dn]["data-state"] == status.state.name
        words = page.text[dn].lstrip("\u2502\u251c\u2514\u2500 ").split()  # the tree's lines
        assert words[:2] == [dn.rpartition(".")[2], status.state.name], page.text[dn]
    assert (page.rows["root.flaky"]["data-next-restart"] or "").startswith(("in 59m", "in 60m"))
    # The error shows as text: no element came out of it.
    assert f"ConnectionError: {HOSTILE}" in page.text["root.flaky"]
    assert page.rows["root.flaky"]["data-last-error"] == f"ConnectionError: {HOSTILE}"
    assert "img" not in page.tags and "b" not in page.tags


class WebDriver:
    """A chromedriver process and one headless Chromium session, through the
    W3C WebDriver HTTP API."""

    def __init__(self, chromedriver: str, chromium: str, profile: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.session: str | None = None
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    self.call("GET", "/status")
                    break
                except OSError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise
                    time.sleep(0.05)
            options = {"binary": chromium, "args": [*FLAGS, f"--user-data-dir={profile}"]}
            capabilities = {"browserName": "chrome", "goog:chromeOptions": options}
            answer = self.call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
            self.session = answer["sessionId"]
        except BaseException:
            self.close()
            raise

    def call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data, {"Content-Type": "application/json"}, method=method
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["value"]

    def open(self, url: str) -> None:
        self.call("POST", f"/session/{self.session}/url", {"url": url})

    def run(self, script: str, *args: object) -> Any:
        """Run ``script`` (a function body) in the page; what it returns."""
        return self.call(
            "POST", f"/session/{self.session}/execute/sync", {"script": script, "args": list(args)}
        )

    def row(self, dn: str) -> dict[str, str] | None:
        """The ``data-`` attributes of ``dn``'s row, and its text (``text``)."""
        return self.run(  # type: ignore[no-any-return]
            "const row = document.querySelector(`tr[data-dn='${arguments[0]}']`);"
            "return row && {...row.dataset, text: row.innerText};",
            dn,
        )

    def wait_row(self, dn: str, what: str, check: Callable[[dict[str, str]], bool]) -> float:
        """Poll ``dn``'s row until ``check`` holds; how long that took. Fails
        after `LIVE` seconds."""
        started = time.monotonic()
        while True:
            row = self.row(dn)
            took = time.monotonic() - started
            if row is not None and check(row):
                return took
            if took > LIVE:
                pytest.fail(f"the page did not show {what} within {LIVE} s: {row}")
            time.sleep(0.02)

    def close(self) -> None:
        try:
            if self.session is not None:
                self.call("DELETE", f"/session/{self.session}")  # quits Chromium
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    chromium, chromedriver = program("chromium"), program("chromedriver")
    driver = WebDriver(chromedriver, chromium, tmp_path / "profile")
    try:
        yield driver
    finally:
        driver.close()


@pytest.mark.slow
def test_the_page_follows_restarts_and_deaths_within_two_seconds(
    harness: Harness, serve: Callable[[Supervisor], StatusServer], browser: WebDriver
) -> None:
    worker = RemoteRunnable()

    def root(token: CancelToken) -> None:
        token.run("db", healthy_until_cancelled)
        token.run("worker", worker, backoff=Backoff(initial=3600.0, maximum=3600.0, jitter=0.0))
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    worker.wait_incarnation(0).healthy()
    wait_status(sup, "root.worker", state=State.HEALTHY)
    server = serve(sup)
    browser.open(f"{server.url}/")
    browser.wait_row("root.worker", "the tree", lambda row: row["state"] == "HEALTHY")

    sup.restart("root.worker")
    worker.wait_incarnation(1).healthy()
    took = browser.wait_row(
        "root.worker",
        "the restart",
        lambda row: (row["state"], row["restarts"]) == ("HEALTHY", "1"),
    )
    print(f"restart shown after {took:.2f} s")

    worker.current.die(ConnectionError(HOSTILE))
    took = browser.wait_row("root.worker", "the death", lambda row: row["state"] == "DEAD")
    print(f"death shown after {took:.2f} s")
    row = browser.row("root.worker")
    assert row is not None
    assert row["lastError"] == f"ConnectionError: {HOSTILE}"
    assert f"ConnectionError: {HOSTILE}" in row["text"]
    assert row["nextRestart"].startswith(("in 59m", "in 60m"))  # the countdown
    assert browser.run("return document.querySelectorAll('img, b').length") == 0

    browser.run("document.querySelector(`tr[data-dn='root.worker']`).click()")
    panel = browser.run(
        "const panel = document.getElementById('logs');"
        "return {dn: panel.dataset.dn, hidden: panel.hidden,"
        " title: document.getElementById('logs-title').textContent};"
    )
    assert panel == {"dn": "root.worker", "hidden": False, "title": "logs of root.worker"}
    assert browser.run("return document.body.classList.contains('offline')") is False
