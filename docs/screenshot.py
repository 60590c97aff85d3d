"""Write docs/status.png: the status page of a demo-like tree, in headless Chromium.

``make screenshot``. A development tool, not shipped: it needs Chromium
(``CHROMIUM=/path/to/chrome`` to choose one). The tree is the demo's (an echo
server and its client, a child program, a flaky worker, a producer/consumer
group) plus root.legacy, which ignores its cancellation: restarted, it shows
the STUCK badge.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from threadsup import CancelToken, Signal, Supervisor, command, serve
from threadsup._demo import DEMO_BACKOFF, ECHO_POLL_INTERVAL, JOB_SCRIPT, Demo
from threadsup.status import StatusServer

#: The flags headless Chromium needs as root on a machine without network or GPU.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def find_chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = candidate and shutil.which(candidate)
        if path:
            return path
    sys.exit("screenshot: no Chromium found: install chromium, or set CHROMIUM=/path/to/chrome")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "status.png")
    parser.add_argument("--size", default="1200,340", help="the window, WIDTH,HEIGHT")
    parser.add_argument(
        "--run", type=float, default=7.0, metavar="SECONDS", help="how long the tree runs first"
    )
    args = parser.parse_args()
    chromium = find_chromium()
    demo = Demo()
    release = threading.Event()

    def legacy(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        release.wait()  # ignores its token, as legacy code does

    def root(token: CancelToken) -> None:
        token.run("echo", serve(demo.echo_server, poll_interval=ECHO_POLL_INTERVAL))
        token.run("client", demo.client)
        token.run("job", command([sys.executable, "-u", "-c", JOB_SCRIPT], healthy="ready"))
        token.run("flaky", demo.flaky)
        token.run("pipeline", demo.pipeline)
        token.run("legacy", legacy, shutdown_timeout=1.0)
        token.signal(Signal.HEALTHY)
        token.wait()

    logger = logging.getLogger("threadsup.screenshot")
    logger.addHandler(logging.NullHandler())  # deaths are the point here, not noise
    logger.propagate = False
    sup = Supervisor(root, logger=logger, backoff=DEMO_BACKOFF, shutdown_timeout=5.0)
    with sup, StatusServer(sup) as server, tempfile.TemporaryDirectory() as profile:
        time.sleep(args.run - 3.0)
        sup.restart("root.legacy")  # stuck from 1 s after this
        time.sleep(3.0)
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={args.size}",
                "--virtual-time-budget=2500",
                f"--screenshot={args.output.resolve()}",
                f"{server.url}/",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        release.set()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
