"""The one snapshot renderer: the demo's table, `format_snapshot` and the tree of
`Supervisor.render`, on snapshots built by hand so that every line can be compared."""

from __future__ import annotations

from threadsup import NodeStatus, State
from threadsup._demo import TABLE
from threadsup._render import MIN_LAST_WIDTH, render, render_tree
from threadsup.testing import format_snapshot

WALL = 1_000_000.0
LONG = "RuntimeError: a much longer error message than fits"


def status(
    dn: str,
    state: State = State.HEALTHY,
    *,
    restarts: int = 0,
    last_error: str | None = None,
    running: bool = True,
) -> NodeStatus:
    started_at = WALL - 2.0 if running else None
    return NodeStatus(dn, state, running, restarts, last_error, started_at=started_at)


def snapshot(*statuses: NodeStatus) -> dict[str, NodeStatus]:
    return {each.dn: each for each in statuses}


TREE = snapshot(
    status("root"),
    status("root.db", State.DEAD, restarts=12, last_error="OSError: disk\nfull", running=False),
    status("root.web"),
    status("root.web.worker", State.CANCELLED, running=False),
)


def test_a_table_aligns_its_columns_and_keeps_each_node_on_one_line() -> None:
    assert render(TREE, TABLE).splitlines() == [
        "DN                   STATE      RESTARTS  LAST ERROR",
        "root                 HEALTHY           0",
        "  root.db            DEAD             12  OSError: disk full",
        "  root.web           HEALTHY           0",
        "    root.web.worker  CANCELLED         0",
    ]


def test_the_state_column_keeps_its_width_whatever_the_states() -> None:
    # A table redrawn every second must not shift when a node becomes CANCELLED.
    assert render(snapshot(status("root")), TABLE).splitlines() == [
        "DN    STATE      RESTARTS  LAST ERROR",
        "root  HEALTHY           0",
    ]


def test_width_cuts_the_last_column_but_leaves_it_a_minimum() -> None:
    tree = snapshot(status("root", State.DEAD, last_error=LONG, running=False))
    lead = len("DN    STATE      RESTARTS  ")
    assert render(tree, TABLE, width=lead + 30).splitlines()[1] == (
        "root  DEAD              0  RuntimeError: a much longer..."
    )
    narrow = render(tree, TABLE, width=10).splitlines()[1]
    assert narrow == f"root  DEAD              0  {LONG[: MIN_LAST_WIDTH - 3]}..."
    assert render(tree, TABLE, width=lead + len(LONG)).endswith(LONG)


def test_format_snapshot_is_the_table_with_running_and_whole_errors() -> None:
    tree = snapshot(*TREE.values(), status("root.job", State.DEAD, last_error=LONG))
    assert format_snapshot(tree).splitlines() == [
        "DN                   STATE      RUNNING  RESTARTS  LAST ERROR",
        "root                 HEALTHY    yes             0",
        "  root.db            DEAD       no             12  OSError: disk full",
        "  root.web           HEALTHY    yes             0",
        "    root.web.worker  CANCELLED  no              0",
        f"  root.job           DEAD       yes             0  {LONG}",
    ]
    assert format_snapshot({}) == "DN  STATE      RUNNING  RESTARTS  LAST ERROR"


def test_the_tree_draws_branches_and_names_a_top_node_in_full() -> None:
    tree = {**TREE, "root.db": status("root.db", State.DEAD, last_error="OSError: disk full")}
    assert render_tree(tree, WALL).splitlines() == [
        "root  HEALTHY  up 2.0s  restarts 0",
        "├─ db  DEAD  up 2.0s  restarts 0  last error: OSError: disk full",
        "└─ web  HEALTHY  up 2.0s  restarts 0",
        "   └─ worker  CANCELLED  restarts 0",
    ]
    # A part of a tree, as a caller may filter it: its top keeps its whole DN.
    web = {dn: each for dn, each in tree.items() if dn.startswith("root.web")}
    assert render_tree(web, WALL).splitlines() == [
        "root.web  HEALTHY  up 2.0s  restarts 0",
        "└─ worker  CANCELLED  restarts 0",
    ]
