"""Command line: ``threadsup run MODULE:ATTR``, ``threadsup status URL`` and ``threadsup demo``.

Also ``python -m threadsup ...``. Exit statuses are `threadsup.ExitStatus`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from threadsup._demo import run_demo
from threadsup._errors import require_runnable
from threadsup._logs import LEVELS, configure_logging
from threadsup._render import render_tree
from threadsup._seconds import check_seconds
from threadsup._token import Runnable
from threadsup.service import ExitStatus, run
from threadsup.status import ListenError, fetch_snapshot, parse_address, tree_json_url

_logger = logging.getLogger("threadsup.cli")


class UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    try:
        return check_seconds("the value", value)
    except ValueError as exc:  # NaN or a negative
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _level(text: str) -> str:
    if text.upper() not in LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a level: use one of {', '.join(LEVELS)}")
    return text.upper()


def _address(text: str) -> str:
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def load_runnable(spec: str) -> Runnable:
    """The runnable ``MODULE:ATTR`` names (``ATTR`` may be dotted); `UsageError`
    with one line saying what is wrong otherwise. A failed import's traceback
    is logged at DEBUG."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise UsageError(f"expected MODULE:ATTR, like myapp.workers:root, not {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the console script does not
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:  # an import error, or whatever the module's code raised
        _logger.debug("importing %r failed", module_name, exc_info=True)
        raise UsageError(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc}"
            + ("" if _logger.isEnabledFor(logging.DEBUG) else " (--log-level DEBUG shows why)")
        ) from None
    for name in attr.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise UsageError(f"{spec}: {target!r} has no attribute {name!r}") from None
    try:
        require_runnable(target, spec)
    except TypeError as exc:
        raise UsageError(str(exc)) from None
    return target  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threadsup" if os.path.basename(sys.argv[0]) == "threadsup" else "python -m threadsup",
        description="threadsup: supervision trees for blocking, thread-based Python code.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    service = commands.add_parser(
        "run",
        help="run a supervision tree as a service",
        description=(
            "Import MODULE, take its attribute ATTR as the root runnable and run it with "
            "threadsup.run() until SIGTERM or SIGINT (SIGHUP restarts the tree, SIGUSR1 "
            "logs every runnable's stack)."
        ),
        epilog=(
            "Exit status: 0 stopped in time or finished; 1 the root gave up; 2 usage error; "
            "3 the stop ran out of time; 4 threadsup's processor failed; 128+N a second "
            "stop signal N during the stop."
        ),
    )
    service.add_argument("target", metavar="MODULE:ATTR", help="the root runnable, e.g. app:root")
    service.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long a stop may take in total (default: 10)",
    )
    service.add_argument(
        "--max-restarts",
        type=_count,
        metavar="N",
        help="the root gives up after N restarts within --within seconds (default: never)",
    )
    service.add_argument(
        "--within",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="the window of --max-restarts (default: 60)",
    )
    service.add_argument(
        "--log-level",
        type=_level,
        default="INFO",
        metavar="LEVEL",
        help=f"the process's log level: {', '.join(LEVELS)} (default: INFO)",
    )
    service.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines, or one JSON object a line (default: text)",
    )
    service.add_argument(
        "--status",
        type=_address,
        metavar="HOST:PORT",
        help="serve the status page and the /healthz and /readyz probes there "
        "(port 0: any free port; the log says which)",
    )
    status = commands.add_parser(
        "status",
        help="print the tree of a running service from its status server",
        description=(
            "Print the tree that the status server at URL (threadsup run --status) "
            "serves, as Supervisor.render() draws it."
        ),
        epilog="Exit status: 0 printed (or --watch ended by Ctrl-C); 1 URL unreachable or "
        "not a threadsup status server; 2 usage error.",
    )
    status.add_argument("url", metavar="URL", help="the status server, e.g. http://127.0.0.1:8000")
    status.add_argument(
        "--watch",
        action="store_true",
        help="redraw the tree every second until Ctrl-C",
    )
    demo = commands.add_parser(
        "demo",
        help="run a live supervision tree over blocking I/O",
        description=(
            "Run a supervision tree on loopback: a TCP echo server, a client, a flaky "
            "worker and a producer/consumer group. Prints the tree every second; stops "
            "on Ctrl-C or after --duration seconds."
        ),
        epilog=(
            "Exit status: 0 when the tree stopped cleanly (also after Ctrl-C), 3 when "
            "threads were still running after the shutdown timeout, 2 on a usage error, "
            "130 on a second Ctrl-C during the shutdown."
        ),
    )
    demo.add_argument(
        "--duration",
        type=_seconds,
        metavar="SECONDS",
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    demo.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print the supervisor's log records to stderr",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(parser, args)
    if args.command == "status":
        return show_status(args.url, watch=args.watch, prog=f"{parser.prog} status")
    if args.verbose:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        )
    return run_demo(args.duration)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    try:
        root = load_runnable(args.target)
    except UsageError as exc:
        parser.exit(ExitStatus.USAGE, f"{parser.prog} run: error: {exc}\n")
    try:
        return run(
            root,
            shutdown_timeout=args.shutdown_timeout,
            max_restarts=args.max_restarts,
            within=args.within,
            status=args.status,
        )
    except ListenError as exc:  # before the tree started
        parser.exit(ExitStatus.USAGE, f"{parser.prog} run: error: {exc}\n")


#: Clears a terminal and puts the cursor top left.
_CLEAR = "\x1b[H\x1b[2J"


def show_status(
    url: str,
    *,
    watch: bool = False,
    out: TextIO | None = None,
    prog: str = "threadsup status",
    interval: float = 1.0,
) -> int:
    """Print the tree that the status server at ``url`` serves, as
    `Supervisor.render` does; with ``watch``, redraw it every ``interval``
    seconds until Ctrl-C. 0, or 1 with one line on stderr when the tree
    cannot be had."""
    out = sys.stdout if out is None else out
    try:
        while True:
            try:
                snapshot, wall = fetch_snapshot(url)
            except (OSError, ValueError) as exc:
                sys.stderr.write(f"{prog}: error: {exc}\n")
                return 1
            tree = render_tree(snapshot, wall)
            if not watch:
                out.write(f"{tree}\n")
                return 0
            moment = time.strftime("%H:%M:%S", time.localtime(wall))
            out.write(f"{_CLEAR}{tree_json_url(url)} at {moment} (Ctrl-C quits)\n\n{tree}\n")
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def console_main() -> None:
    """The ``threadsup`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
