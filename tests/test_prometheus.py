"""Prometheus metrics (`threadsup.prometheus.register`): every test scrapes the real
text format with `prometheus_client.generate_latest` and reads it back with
prometheus_client's own parser, as a Prometheus server would see it."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import threadsup
from threadsup import Backoff, CancelToken, Runnable, Signal, State
from threadsup.prometheus import register
from threadsup.testing import (
    FAST_BACKOFF,
    Harness,
    RemoteRunnable,
    done_at_once,
    healthy_until_cancelled,
    raising,
    wait_snapshot,
    wait_status,
    wait_until,
)

T = TypeVar("T")

#: Tolerance when comparing `time.time` values taken at two moments.
CLOCK = 0.05

COUNTERS = {
    "threadsup_node_restarts",
    "threadsup_node_deaths",
    "threadsup_dynamic_nodes_restarts",
    "threadsup_dynamic_nodes_deaths",
}
GAUGES = {
    "threadsup_tree_ready",
    "threadsup_nodes",
    "threadsup_abandoned_threads",
    "threadsup_node_state",
    "threadsup_node_gave_up",
    "threadsup_node_stuck",
    "threadsup_node_abandoned_threads",
    "threadsup_node_healthy_time_seconds",
    "threadsup_node_next_restart_time_seconds",
    "threadsup_dynamic_nodes",
    "threadsup_dynamic_nodes_stuck",
}
#: Series of the tree as a whole: ready, one per state, abandoned threads.
TREE_SERIES = 1 + len(State) + 1
#: Series of every node that is its own anchor: a state each, restarts, deaths,
#: gave up, stuck, abandoned threads (more while HEALTHY or waiting to restart).
NODE_SERIES = len(State) + 5


class Scrape:
    """One scrape of a registry, parsed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.text = generate_latest(registry).decode()
        self.families = {f.name: f for f in text_string_to_metric_families(self.text)}
        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in self.families.values()
            for sample in family.samples
        }

    def __len__(self) -> int:
        return len(self.samples)

    def value(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        if key not in self.samples:
            raise AssertionError(f"no sample {name}{labels} in the scrape:\n{self.text}")
        return self.samples[key]

    def by_dn(self, name: str, supervisor: str, **labels: str) -> dict[str, float]:
        """The samples ``name`` of one supervisor, by DN."""
        wanted = {"supervisor": supervisor, **labels}
        found = {}
        for (sample, label_set), value in self.samples.items():
            labels_of = dict(label_set)
            if sample == name and {k: labels_of.get(k) for k in wanted} == wanted:
                found[labels_of["dn"]] = value
        return found

    def states(self, supervisor: str) -> dict[str, str]:
        """Each node's state, checking that exactly one of its state series is 1."""
        series: dict[str, dict[str, float]] = {}
        for (sample, label_set), value in self.samples.items():
            labels = dict(label_set)
            if sample == "threadsup_node_state" and labels["supervisor"] == supervisor:
                series.setdefault(labels["dn"], {})[labels["state"]] = value
        states = {}
        for dn, values in series.items():
            assert sorted(values) == sorted(s.name for s in State), (dn, values)
            assert sorted(values.values()) == [0.0] * (len(State) - 1) + [1.0], (dn, values)
            states[dn] = next(state for state, value in values.items() if value == 1.0)
        return states

    def supervisors(self) -> set[str]:
        """The supervisor labels present (the default registry has other metrics too)."""
        return {value for _, labels in self.samples for key, value in labels if key == "supervisor"}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def parent(**children: Runnable) -> Runnable:
    """A root that runs each child in a group of its own, signals HEALTHY and waits."""

    def run(token: CancelToken) -> None:
        for name, child in children.items():
            token.run(name, child)
        token.signal(Signal.HEALTHY)
        token.wait()

    return run


# ------------------------------------------------------------------ what it reports


def test_the_families_have_help_and_their_types(
    harness: Harness, registry: CollectorRegistry
) -> None:
    register(harness.start(healthy_until_cancelled), registry)
    families = Scrape(registry).families
    assert {name for name, f in families.items() if f.type == "counter"} == COUNTERS
    assert {name for name, f in families.items() if f.type == "gauge"} == GAUGES
    assert all(family.documentation for family in families.values())


def test_a_scrape_shows_states_restarts_deaths_and_times(
    harness: Harness, registry: CollectorRegistry
) -> None:
    flaky = RemoteRunnable()
    broken = raising(RuntimeError("broken"))

    def root(token: CancelToken) -> None:
        token.run("ok", healthy_until_cancelled)
        token.run("finished", done_at_once)
        token.run("flaky", flaky)
        token.run("broken", broken, backoff=Backoff(initial=60, jitter=0))
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    register(sup, registry)
    flaky.wait_incarnation(0).die()
    flaky.wait_incarnation(1).die()
    flaky.wait_incarnation(2).healthy()
    wait_status(sup, "root.flaky", state=State.HEALTHY)
    wait_status(sup, "root.finished", state=State.DONE, running=False)
    wait_status(sup, "root.broken", state=State.DEAD, running=False)
    wait_status(sup, "root.ok", state=State.HEALTHY)
    snap = sup.snapshot()

    scrape = Scrape(registry)
    label = harness.base  # the default label: the supervisor's base logger's name
    assert scrape.supervisors() == {label}
    assert scrape.states(label) == {
        "root": "HEALTHY",
        "root.ok": "HEALTHY",
        "root.finished": "DONE",
        "root.flaky": "HEALTHY",
        "root.broken": "DEAD",
    }
    zero = dict.fromkeys(snap, 0.0)
    assert scrape.by_dn("threadsup_node_restarts_total", label) == {**zero, "root.flaky": 2}
    assert scrape.by_dn("threadsup_node_deaths_total", label) == {
        **zero,
        "root.flaky": 2,
        "root.broken": 1,
    }
    for name in ("gave_up", "stuck", "abandoned_threads"):
        assert scrape.by_dn(f"threadsup_node_{name}", label) == zero
    healthy = scrape.by_dn("threadsup_node_healthy_time_seconds", label)
    assert healthy == {
        dn: pytest.approx(status.healthy_since, abs=CLOCK)
        for dn, status in snap.items()
        if status.state is State.HEALTHY
    }
    assert scrape.by_dn("threadsup_node_next_restart_time_seconds", label) == {
        "root.broken": pytest.approx(snap["root.broken"].next_restart_at, abs=CLOCK)
    }
    assert scrape.value("threadsup_tree_ready", supervisor=label) == 0  # root.broken is DEAD
    assert [scrape.value("threadsup_nodes", supervisor=label, state=s.name) for s in State] == [
        0,  # NEW
        3,  # HEALTHY
        1,  # DONE
        1,  # DEAD
        0,  # CANCELLED
    ]
    assert scrape.value("threadsup_abandoned_threads", supervisor=label) == 0
    assert not scrape.by_dn("threadsup_dynamic_nodes", label)


def test_tree_ready_follows_the_supervisor(harness: Harness, registry: CollectorRegistry) -> None:
    child = RemoteRunnable()
    sup = harness.track(harness.supervisor(parent(child=child)))
    register(sup, registry, name="t")
    scrape = Scrape(registry)  # not started yet: the root alone, NEW
    assert scrape.value("threadsup_tree_ready", supervisor="t") == 0
    assert scrape.states("t") == {"root": "NEW"}
    sup.start()
    wait_status(sup, "root", state=State.HEALTHY)
    assert Scrape(registry).value("threadsup_tree_ready", supervisor="t") == 0  # child is NEW
    child.wait_incarnation(0).healthy()
    wait_until(sup.ready, what="the tree to be ready")
    assert Scrape(registry).value("threadsup_tree_ready", supervisor="t") == 1
    assert sup.stop(10)
    scrape = Scrape(registry)  # a stopped tree still reports its last states
    assert scrape.value("threadsup_tree_ready", supervisor="t") == 0
    assert scrape.states("t") == {"root": "CANCELLED", "root.child": "CANCELLED"}


def test_a_node_that_gave_up(harness: Harness, registry: CollectorRegistry) -> None:
    """root.c gives up at its second failure within its window; root dies in its
    place and waits 30 s for its restart."""
    flaky = raising(RuntimeError("flaky"))

    def root(token: CancelToken) -> None:
        token.run("c", flaky, max_restarts=1, within=30, backoff=FAST_BACKOFF)
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root, backoff=Backoff(initial=30, jitter=0))
    register(sup, registry)
    wait_snapshot(
        sup,
        lambda s: s["root"].next_restart_at is not None,
        what="root.c gave up, and root waits for its restart",
    )
    scrape = Scrape(registry)
    label = harness.base
    assert scrape.states(label) == {"root": "DEAD", "root.c": "DEAD"}
    assert scrape.by_dn("threadsup_node_gave_up", label) == {"root": 0, "root.c": 1}
    assert scrape.by_dn("threadsup_node_deaths_total", label) == {"root": 1, "root.c": 2}
    assert scrape.by_dn("threadsup_node_restarts_total", label) == {"root": 0, "root.c": 1}
    assert list(scrape.by_dn("threadsup_node_next_restart_time_seconds", label)) == ["root"]
    assert scrape.value("threadsup_tree_ready", supervisor=label) == 0


def test_stuck_then_abandoned(harness: Harness, registry: CollectorRegistry) -> None:
    """A child that ignores its cancellation is stuck once its shutdown timeout has
    passed; with ``on_stuck="abandon"`` its subtree restarts without its thread,
    which counts as abandoned until it exits."""
    release = harness.gate()

    def root(token: CancelToken) -> None:
        token.run("s", stubborn(release), shutdown_timeout=0.2)
        token.run("a", stubborn(release), shutdown_timeout=0.2, on_stuck="abandon")
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    register(sup, registry, name="t")
    wait_status(sup, "root.s", state=State.HEALTHY)
    wait_status(sup, "root.a", state=State.HEALTHY)
    scrape = Scrape(registry)
    assert scrape.by_dn("threadsup_node_stuck", "t") == {"root": 0, "root.s": 0, "root.a": 0}

    sup.restart("root.s")
    sup.restart("root.a")
    wait_status(sup, "root.s", stuck=True)
    wait_status(sup, "root.a", state=State.HEALTHY, restarts=1, abandoned=1)
    scrape = Scrape(registry)
    assert scrape.by_dn("threadsup_node_stuck", "t") == {"root": 0, "root.s": 1, "root.a": 0}
    assert scrape.by_dn("threadsup_node_abandoned_threads", "t") == {
        "root": 0,
        "root.s": 0,
        "root.a": 1,
    }
    assert scrape.value("threadsup_abandoned_threads", supervisor="t") == 1

    release.set()
    wait_status(sup, "root.s", state=State.HEALTHY, restarts=1)
    wait_status(sup, "root.a", abandoned=0)
    scrape = Scrape(registry)
    assert set(scrape.by_dn("threadsup_node_stuck", "t").values()) == {0}
    assert scrape.value("threadsup_abandoned_threads", supervisor="t") == 0


def stubborn(release: threading.Event) -> Runnable:
    """HEALTHY; once cancelled, its first incarnation waits for ``release``."""
    first = threading.Event()

    def run(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        token.wait()
        if not first.is_set():
            first.set()
            release.wait(30)

    return run


# ------------------------------------------------------------------- dynamic nodes


def test_a_thousand_dynamic_children_add_no_series(
    harness: Harness, registry: CollectorRegistry
) -> None:
    """Dynamic nodes, and the nodes under them, count in their anchor's series:
    the scrape has as many series with 1,000 of them as with one."""
    many = 1000
    fail = harness.gate()

    def failing(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        fail.wait(30)
        raise RuntimeError("connection lost")

    reader = RemoteRunnable()

    def nested(token: CancelToken) -> None:
        token.run("reader", reader)
        token.signal(Signal.HEALTHY)
        token.wait()

    once = RemoteRunnable()
    server = RemoteRunnable()
    sup = harness.start(parent(server=server))
    register(sup, registry, name="t")
    inc = server.wait_incarnation(0)
    inc.healthy()
    inc.call(lambda t: t.spawn("c0", healthy_until_cancelled))
    wait_status(sup, "root.server.c0", state=State.HEALTHY)
    one = Scrape(registry)

    def spawn_the_rest(token: CancelToken) -> None:
        for index in range(1, many):
            token.spawn(f"c{index}", healthy_until_cancelled)
        for index in range(10):
            token.spawn(f"bad{index}", failing)
        token.spawn("nested", nested)
        token.spawn("once", once, restart="transient", backoff=FAST_BACKOFF)

    inc.call(spawn_the_rest)
    once.wait_incarnation(0).die()
    once.wait_incarnation(1).healthy()
    reader.wait_incarnation(0).die()  # a static child of a dynamic node
    reader.wait_incarnation(1).healthy()
    dynamic = many + 10 + 3  # c*, bad*, nested, nested.reader, once
    wait_snapshot(
        sup,
        lambda s: sum(st.state is State.HEALTHY for st in s.values()) == 2 + dynamic,
        timeout=30,
        what="every dynamic node HEALTHY",
    )
    scrape = Scrape(registry)
    assert len(scrape) == len(one) == TREE_SERIES + 2 * (NODE_SERIES + 1) + len(State) + 3
    assert set(scrape.states("t")) == {"root", "root.server"}
    healthy = {"supervisor": "t", "dn": "root.server", "state": "HEALTHY"}
    assert scrape.value("threadsup_dynamic_nodes", **healthy) == dynamic
    assert scrape.value("threadsup_nodes", supervisor="t", state="HEALTHY") == 2 + dynamic
    assert counters(scrape, "root.server") == (2, 2)  # once and reader

    fail.set()  # the bad ones die, and leave the tree: temporary
    wait_snapshot(sup, lambda s: not any(".bad" in dn for dn in s), what="bad* gone")
    wait_status(sup, "root.server.nested.reader", state=State.HEALTHY)
    assert sup.remove("root.server.once", 10)
    scrape = Scrape(registry)
    assert scrape.value("threadsup_dynamic_nodes", **healthy) == many + 2
    assert counters(scrape, "root.server") == (2, 12)  # gone, and still counted

    inc.die()  # the anchor's restart discards its dynamic nodes; it keeps their counts
    server.wait_incarnation(1).healthy()
    wait_status(sup, "root.server", state=State.HEALTHY, restarts=1)
    wait_snapshot(sup, lambda s: len(s) == 2, what="the dynamic nodes discarded")
    scrape = Scrape(registry)
    assert len(scrape) == len(one)
    assert {
        state.name: scrape.value(
            "threadsup_dynamic_nodes", supervisor="t", dn="root.server", state=state.name
        )
        for state in State
    } == dict.fromkeys((s.name for s in State), 0)
    assert counters(scrape, "root.server") == (2, 12)
    assert scrape.value("threadsup_node_deaths_total", supervisor="t", dn="root.server") == 1


def counters(scrape: Scrape, dn: str) -> tuple[float, float]:
    """The restarts and deaths of the dynamic nodes anchored at ``dn``."""
    return (
        scrape.value("threadsup_dynamic_nodes_restarts_total", supervisor="t", dn=dn),
        scrape.value("threadsup_dynamic_nodes_deaths_total", supervisor="t", dn=dn),
    )


# ------------------------------------------------------- registering and unregistering


def test_two_supervisors_in_one_registry_are_told_apart(
    harness: Harness, registry: CollectorRegistry
) -> None:
    first = harness.start(parent(x=healthy_until_cancelled))
    second = harness.start(parent(y=done_at_once))
    register(first, registry, name="first")
    register(second, registry, name="second")
    wait_status(first, "root.x", state=State.HEALTHY)
    wait_status(second, "root.y", state=State.DONE, running=False)
    scrape = Scrape(registry)
    assert scrape.supervisors() == {"first", "second"}
    assert scrape.states("first") == {"root": "HEALTHY", "root.x": "HEALTHY"}
    assert scrape.states("second") == {"root": "HEALTHY", "root.y": "DONE"}
    # Each family once, both trees' samples in it: what the exposition format requires.
    types = [line.split()[2] for line in scrape.text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types)) == len(COUNTERS | GAUGES)
    assert len(scrape) == 2 * (TREE_SERIES + 2 * NODE_SERIES) + 3  # 3 HEALTHY


def test_a_label_taken_in_a_registry_is_a_value_error(
    harness: Harness, registry: CollectorRegistry
) -> None:
    first = harness.start(healthy_until_cancelled)
    second = harness.start(healthy_until_cancelled)  # the same base logger
    register(first, registry)
    for sup in (second, first):
        with pytest.raises(ValueError, match=rf"supervisor='{harness.base}'.*name="):
            register(sup, registry)
    register(second, registry, name="other")
    with pytest.raises(ValueError, match="supervisor='other'"):
        register(first, registry, name="other")
    assert Scrape(registry).supervisors() == {harness.base, "other"}
    other = CollectorRegistry()
    register(first, other)  # another registry: another set of series
    assert Scrape(other).supervisors() == {harness.base}


def test_a_registry_already_holding_threadsup_names_is_a_value_error(
    harness: Harness, registry: CollectorRegistry
) -> None:
    Gauge("threadsup_tree_ready", "someone else's", registry=registry)
    with pytest.raises(ValueError, match="threadsup_tree_ready"):
        register(harness.start(healthy_until_cancelled), registry)
    assert Scrape(registry).families.keys() == {"threadsup_tree_ready"}


def test_unregister(harness: Harness, registry: CollectorRegistry) -> None:
    first = harness.start(healthy_until_cancelled)
    second = harness.start(healthy_until_cancelled)
    unregister_first = register(first, registry, name="first")
    unregister_second = register(second, registry, name="second")
    unregister_first()
    assert Scrape(registry).supervisors() == {"second"}
    unregister_first()  # idempotent, and leaves the others alone
    assert Scrape(registry).supervisors() == {"second"}
    register(first, registry, name="first")  # the label is free again
    assert Scrape(registry).supervisors() == {"first", "second"}
    unregister_first()  # an old unregister leaves a new registration alone
    assert Scrape(registry).supervisors() == {"first", "second"}
    unregister_second()
    assert Scrape(registry).supervisors() == {"first"}


def test_the_last_unregister_leaves_the_registry_as_it_was(
    harness: Harness, registry: CollectorRegistry
) -> None:
    unregister = register(harness.start(healthy_until_cancelled), registry)
    unregister()
    assert generate_latest(registry) == b""
    # No collector of ours is left either: another one may take the names.
    Gauge("threadsup_tree_ready", "someone else's", registry=registry)


def test_the_default_registry(harness: Harness) -> None:
    sup = harness.start(healthy_until_cancelled)
    unregister = register(sup, name="default_registry_test")
    try:
        scrape = Scrape(REGISTRY)
        assert "default_registry_test" in scrape.supervisors()
    finally:
        unregister()
    assert "default_registry_test" not in Scrape(REGISTRY).supervisors()


@pytest.mark.parametrize(
    ("sup", "registry_arg", "name", "error", "message"),
    [
        (None, None, None, TypeError, "takes a threadsup.Supervisor, not None"),
        ("sup", None, None, TypeError, "takes a threadsup.Supervisor, not 'sup'"),
        ("ok", object(), None, TypeError, "registry must be a prometheus_client.CollectorRe"),
        ("ok", None, 3, TypeError, "name must be a str, not 3"),
        ("ok", None, "", ValueError, "name must not be empty"),
    ],
)
def test_bad_arguments(
    harness: Harness,
    registry: CollectorRegistry,
    sup: object,
    registry_arg: object,
    name: object,
    error: type[Exception],
    message: str,
) -> None:
    if sup == "ok":
        sup = harness.start(healthy_until_cancelled)
    target = registry if registry_arg is None else registry_arg
    with pytest.raises(error, match=message):
        register(sup, target, name=name)  # type: ignore[arg-type]
    assert generate_latest(registry) == b""


def test_without_prometheus_client_the_import_error_says_what_to_install() -> None:
    script = (
        "import sys\n"
        "sys.modules['prometheus_client'] = None  # as if it were not installed\n"
        "import threadsup  # the package itself does not need it\n"
        "try:\n"
        "    import threadsup.prometheus\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = dict(os.environ)
    package_parent = str(Path(threadsup.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        "ImportError threadsup.prometheus needs the prometheus_client package: "
        "pip install 'threadsup[prometheus]'\n"
    )


# ------------------------------------------------------------------ under load, at scale


@pytest.mark.slow
def test_scrapes_during_a_restart_storm_are_consistent(
    harness: Harness, registry: CollectorRegistry
) -> None:
    """Children die as soon as they start, a middle node takes its subtree down
    again and again, and dynamic children come and go, while the test scrapes.

    Every scrape is one moment of the tree: each node in exactly one state, the
    totals equal to the sum of the parts, and the counters of nodes that are
    never re-created never going back.
    """

    def crash(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        raise RuntimeError("crash")

    def middle(token: CancelToken) -> None:
        token.run_group({"x": crash, "y": healthy_until_cancelled})
        token.signal(Signal.HEALTHY)
        token.wait(0.02)
        raise RuntimeError("middle")

    def spawner(token: CancelToken) -> None:
        token.signal(Signal.HEALTHY)
        for index in itertools.count():
            if token.wait(0.002):
                return
            token.spawn(f"job{index}", crash)

    storm = Backoff(initial=0.002, multiplier=1.0, maximum=0.002, jitter=0)
    crashers = {f"c{index}": crash for index in range(4)}
    sup = harness.start(parent(**crashers, middle=middle, spawner=spawner), backoff=storm)
    register(sup, registry, name="t")
    wait_status(sup, "root", state=State.HEALTHY)  # its children are in the tree
    stable = [f"root.{name}" for name in (*crashers, "middle", "spawner")]
    last: dict[tuple[str, str], float] = {}
    scrapes = 0
    deadline = time.monotonic() + 30
    while (
        scrapes < 20 or min(last[("threadsup_node_restarts_total", dn)] for dn in stable[:4]) < 20
    ):
        assert time.monotonic() < deadline, f"no storm after {scrapes} scrapes: {last}"
        scrape = Scrape(registry)
        scrapes += 1
        states = scrape.states("t")
        assert set(stable) <= set(states)
        assert set(states) <= {"root", *stable, "root.middle.x", "root.middle.y"}
        for state in State:
            counted = sum(found == state.name for found in states.values())
            dynamic = scrape.by_dn("threadsup_dynamic_nodes", "t", state=state.name)
            assert set(dynamic) <= {"root.spawner"}
            total = scrape.value("threadsup_nodes", supervisor="t", state=state.name)
            assert total == counted + sum(dynamic.values())
        for name, dns in (
            ("threadsup_node_restarts_total", stable),
            ("threadsup_node_deaths_total", stable),
            ("threadsup_dynamic_nodes_restarts_total", ["root.spawner"]),
            ("threadsup_dynamic_nodes_deaths_total", ["root.spawner"]),
        ):
            values = scrape.by_dn(name, "t")
            for dn in dns:
                if dn not in values:
                    continue  # no dynamic node has restarted or died yet
                assert values[dn] >= last.get((name, dn), 0), (name, dn, values[dn])
                last[(name, dn)] = values[dn]
    assert last[("threadsup_dynamic_nodes_deaths_total", "root.spawner")] > 0
    assert last[("threadsup_node_deaths_total", "root.middle")] > 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_cost_of_scraping_ten_thousand_nodes(
    harness: Harness, registry: CollectorRegistry
) -> None:
    """Measured, never asserted: the time depends on the machine. Run with ``-s``
    to see it. The nodes are DONE, their threads gone, so that the tree costs
    only its bookkeeping."""
    width = 100
    finished: list[str] = []

    def leaf(token: CancelToken) -> None:
        done_at_once(token)
        finished.append(token.dn)

    def group(token: CancelToken) -> None:
        token.run_group({f"n{index}": leaf for index in range(width)})
        token.signal(Signal.HEALTHY)
        token.signal(Signal.DONE)

    def root(token: CancelToken) -> None:
        token.run_group({f"g{index}": group for index in range(width)})
        token.signal(Signal.HEALTHY)
        token.wait()

    sup = harness.start(root)
    nodes = 1 + width + width * width
    wait_until(lambda: len(finished) == width * width, 150, f"{width * width} leaves DONE")
    assert sup.wait_settled(60)
    register(sup, registry, name="t")

    def timed(function: Callable[[], T]) -> tuple[T, float]:
        began = time.perf_counter()
        result = function()
        return result, (time.perf_counter() - began) * 1000

    census, read = timed(sup._census)
    families, collected = timed(lambda: list(registry.collect()))
    text, formatted = timed(lambda: generate_latest(registry))
    scrape = Scrape(registry)
    assert len(census.nodes) == nodes
    assert len(scrape) == TREE_SERIES + nodes * NODE_SERIES + 1  # the root is HEALTHY
    assert sum(len(family.samples) for family in families) == len(scrape)
    assert scrape.value("threadsup_nodes", supervisor="t", state="DONE") == nodes - 1
    print(
        f"\n{nodes} nodes, {len(scrape)} series, {len(text) / 1e6:.1f} MB: the walk under "
        f"the tree lock {read:.1f} ms, collect() {collected:.0f} ms, "
        f"generate_latest() {formatted:.0f} ms"
    )
