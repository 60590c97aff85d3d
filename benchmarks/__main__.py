"""``python -m benchmarks [--quick] [--json FILE] [--only NAME ...]``: run threadsup's
benchmarks, print a table of medians and 90th percentiles, and optionally write
them as JSON."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import threadsup
from benchmarks import NOTES, format_table, load, run, select


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run threadsup's benchmarks: medians and 90th percentiles of N samples.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="few samples each, and 1,000 threads where a full run starts 10,000: "
        "a smoke run of some seconds",
    )
    parser.add_argument(
        "--observed",
        action="store_true",
        help="attach a subscriber and a status server to every tree (the log backlog is "
        "on by default): what observing a tree costs",
    )
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the results here")
    parser.add_argument(
        "--only",
        metavar="NAME",
        action="append",
        default=[],
        help="run only benchmarks matching NAME (a glob, or a dotted prefix such as "
        "wakeup.get); repeatable; their baselines run too",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    registry = load()
    if args.list:
        for bench in registry.values():
            print(f"{bench.name:<32} {bench.description}")
        return 0
    try:
        benchmarks = select(args.only)
    except KeyError as exc:
        parser.error(str(exc.args[0]))

    started = time.monotonic()
    when = datetime.datetime.now(datetime.timezone.utc)
    results = run(
        benchmarks,
        quick=args.quick,
        observe=args.observed,
        progress=lambda text: print(f"  {text}", file=sys.stderr, flush=True),
    )
    took = time.monotonic() - started
    print(format_table(results))
    for text in NOTES:
        print(f"note: {text}")
    kind = ("quick" if args.quick else "full") + (", observed" if args.observed else "")
    print(f"\n{len(results)} benchmarks in {took:.1f} s ({kind} run)")

    if args.json is not None:
        report = {
            "schema": 1,
            "command": " ".join(["python -m benchmarks", *(argv or sys.argv[1:])]),
            "quick": args.quick,
            "observed": args.observed,
            "started_at": when.isoformat(timespec="seconds"),
            "duration_s": took,
            "machine": {
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
            },
            "threadsup": str(Path(threadsup.__file__).resolve().parent),
            "notes": list(NOTES),
            "results": [result.as_json() for result in results],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
