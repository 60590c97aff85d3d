"""Command line: ``python -m threadsup demo [--duration SECONDS] [--verbose]``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from threadsup.demo import run_demo
from threadsup.seconds import check_seconds


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    try:
        return check_seconds("the duration", value)
    except ValueError as exc:  # NaN or a negative
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m threadsup",
        description="threadsup: supervision trees for blocking, thread-based Python code.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="run a live supervision tree over blocking I/O",
        description=(
            "Run a supervision tree on loopback: a TCP echo server, a client, a flaky "
            "worker and a producer/consumer group. Prints the tree every second; stops "
            "on Ctrl-C or after --duration seconds."
        ),
        epilog=(
            "Exit status: 0 when the tree stopped cleanly (also after Ctrl-C), 1 when "
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
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        )
    try:
        return run_demo(args.duration)
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130


if __name__ == "__main__":
    sys.exit(main())
