"""Snapshots as text, one line per node: the one renderer behind the tree of
`Supervisor.render` (and of ``threadsup status``), the demo's table and
`threadsup.testing.format_snapshot`, so that all three walk and show a tree alike.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Callable

from threadsup._node import NodeStatus, State, describe_line


@dataclass(frozen=True)
class Column:
    """What each line shows of its node, under ``header``."""

    header: str
    cell: Callable[[NodeStatus], str]
    #: The least width, so that a table redrawn as states change does not shift.
    width: int = 0
    #: Aligned right (numbers) rather than left.
    right: bool = False


STATE = Column("STATE", lambda status: status.state.name, width=max(len(s.name) for s in State))
RUNNING = Column("RUNNING", lambda status: "yes" if status.running else "no")
RESTARTS = Column("RESTARTS", lambda status: str(status.restarts), right=True)
LAST_ERROR = Column("LAST ERROR", lambda status: status.last_error or "")

#: The least room a table leaves its last column, however narrow the ``width`` asked for.
MIN_LAST_WIDTH = 20
#: Between the cells of a line.
_GAP = "  "


def render(
    snapshot: Mapping[str, NodeStatus],
    columns: Sequence[Column],
    *,
    header: bool = True,
    tree: bool = False,
    width: int | None = None,
) -> str:
    """Draw ``snapshot`` (parents before children), one line per node.

    A line starts with its node: the DN indented by depth, or with ``tree`` its
    name under ``pstree`` branches (a node whose parent is not in the snapshot
    shows its whole DN). The cells of ``columns`` follow.

    With ``header`` it is a table: a first line names the columns (``DN`` for
    the nodes), every column is as wide as its widest cell, and each cell is on
    one line; ``width`` then cuts the last column (``...``) so that lines fit,
    leaving it at least `MIN_LAST_WIDTH`. Without ``header`` a line's cells just
    follow each other, for cells whose length varies from node to node.
    """
    nodes = list(_walk(snapshot, tree))
    if not header:
        return "\n".join(
            _GAP.join([label, *(column.cell(status) for column in columns)])
            for label, status in nodes
        )
    # One line a node, whatever its cells hold.
    rows = [
        [label, *(" ".join(column.cell(status).split()) for column in columns)]
        for label, status in nodes
    ]
    heads = ["DN", *(column.header for column in columns)]
    leasts = [0, *(column.width for column in columns)]

    def widest(index: int) -> int:
        return max(leasts[index], len(heads[index]), *(len(row[index]) for row in rows))

    if width is not None:
        lead = sum(widest(index) + len(_GAP) for index in range(len(heads) - 1))
        room = max(width - lead, MIN_LAST_WIDTH)
        for row in rows:
            row[-1] = describe_line(row[-1], room)
    widths = [widest(index) for index in range(len(heads))]
    rights = [False, *(column.right for column in columns)]
    return "\n".join(_line(row, widths, rights) for row in [heads, *rows])


def render_tree(snapshot: Mapping[str, NodeStatus], wall: float) -> str:
    """The tree as `Supervisor.render` and ``threadsup status`` draw it, like
    ``pstree``; ``wall`` is the `time.time` at which the snapshot was taken."""
    about = Column("", functools.partial(_describe, wall=wall))
    return render(snapshot, [about], header=False, tree=True)


def _walk(snapshot: Mapping[str, NodeStatus], tree: bool) -> Iterator[tuple[str, NodeStatus]]:
    """Each node depth first, each parent's children in snapshot order, with
    the start of its line."""
    children: dict[str, list[str]] = {}
    tops = []
    for dn in snapshot:
        parent = dn.rpartition(".")[0]
        if parent in snapshot:
            children.setdefault(parent, []).append(dn)
        else:
            tops.append(dn)
    # (dn, the start of its line, the prefix of its children's lines)
    stack = [(dn, dn, "") for dn in reversed(tops)]
    while stack:
        dn, label, prefix = stack.pop()
        yield label, snapshot[dn]
        kids = children.get(dn, [])
        for index in reversed(range(len(kids))):
            kid = kids[index]
            if not tree:
                stack.append((kid, f"{prefix}  {kid}", f"{prefix}  "))
                continue
            last = index == len(kids) - 1
            branch, carry = ("\u2514\u2500 ", "   ") if last else ("\u251c\u2500 ", "\u2502  ")
            stack.append((kid, f"{prefix}{branch}{kid.rpartition('.')[2]}", prefix + carry))


def _line(cells: Sequence[str], widths: Sequence[int], rights: Sequence[bool]) -> str:
    padded = (
        cell.rjust(width) if right else cell.ljust(width)
        for cell, width, right in zip(cells, widths, rights)
    )
    return _GAP.join(padded).rstrip()


def _describe(status: NodeStatus, wall: float) -> str:
    fields = [status.state.name]
    if status.running and status.started_at is not None:
        fields.append(f"up {_duration(wall - status.started_at)}")
    fields.append(f"restarts {status.restarts}")
    if status.next_restart_at is not None:
        wait = max(0.0, status.next_restart_at - wall)
        fields.append("restart never" if wait == math.inf else f"restart in {_duration(wait)}")
    if status.stuck_for is not None:
        fields.append(f"STUCK {_duration(status.stuck_for)}")
    if status.abandoned:
        fields.append(f"abandoned {status.abandoned}")
    if status.gave_up:
        fields.append(f"gave up: {status.gave_up}")
    if status.last_error:
        fields.append(f"last error: {status.last_error}")
    return _GAP.join(fields)


_YEAR = 365.25 * 86400


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < _YEAR:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{seconds / _YEAR:.3g}y"  # a huge backoff: 1e10 s is 317y
