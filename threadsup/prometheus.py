"""Prometheus metrics of supervision trees, read from the tree at scrape time.

``register(sup)`` adds a supervisor to a `prometheus_client` registry; nothing
is counted on the tree's hot paths for it. Every series has a ``supervisor``
label; the node series a ``dn`` label too. Dynamic nodes (`CancelToken.spawn`)
and their descendants have no series of their own: the ``threadsup_dynamic_*``
series count them under their nearest ancestor that has no dynamic ancestor,
so that a child per connection cannot make the series grow without bound.

Needs the ``prometheus`` extra: ``pip install 'threadsup[prometheus]'``.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise ImportError(
        "threadsup.prometheus needs the prometheus_client package: "
        "pip install 'threadsup[prometheus]'"
    ) from exc

from threadsup._node import State
from threadsup._supervisor import Census, Supervisor

__all__ = ["register"]

_TREE = ("supervisor",)
_NODE = ("supervisor", "dn")


class _Families:
    """One scrape's metric families, empty until `add` fills them."""

    def __init__(self) -> None:
        self.ready = GaugeMetricFamily(
            "threadsup_tree_ready",
            "1 while the tree is running with the root and every permanent node "
            "HEALTHY or DONE (Supervisor.ready()), else 0.",
            labels=_TREE,
        )
        self.nodes = GaugeMetricFamily(
            "threadsup_nodes",
            "Nodes in each state, dynamic ones included.",
            labels=(*_TREE, "state"),
        )
        self.abandoned = GaugeMetricFamily(
            "threadsup_abandoned_threads",
            "Threads abandoned while stuck (on_stuck='abandon') and still running.",
            labels=_TREE,
        )
        self.state = GaugeMetricFamily(
            "threadsup_node_state",
            "1 for the node's current state, 0 for the other states.",
            labels=(*_NODE, "state"),
        )
        self.restarts = CounterMetricFamily(
            "threadsup_node_restarts",
            "Times the node has been restarted; back to 0 when an ancestor's restart "
            "re-creates it.",
            labels=_NODE,
        )
        self.deaths = CounterMetricFamily(
            "threadsup_node_deaths",
            "Times the node has died (raised, returned without DONE, or a child gave "
            "up); back to 0 when an ancestor's restart re-creates it.",
            labels=_NODE,
        )
        self.gave_up = GaugeMetricFamily(
            "threadsup_node_gave_up",
            "1 once the node has exceeded its max_restarts within its window and will "
            "not restart, else 0.",
            labels=_NODE,
        )
        self.stuck = GaugeMetricFamily(
            "threadsup_node_stuck",
            "1 while the node's runnable, cancelled, outlives its shutdown timeout, else 0.",
            labels=_NODE,
        )
        self.node_abandoned = GaugeMetricFamily(
            "threadsup_node_abandoned_threads",
            "Threads of the node abandoned while stuck and still running.",
            labels=_NODE,
        )
        self.healthy = GaugeMetricFamily(
            "threadsup_node_healthy_time_seconds",
            "Unix time at which the node became HEALTHY; only while it is.",
            labels=_NODE,
        )
        self.next_restart = GaugeMetricFamily(
            "threadsup_node_next_restart_time_seconds",
            "Unix time at which the node's pending backoff restart is due; only while one is.",
            labels=_NODE,
        )
        self.dynamic = GaugeMetricFamily(
            "threadsup_dynamic_nodes",
            "Dynamic nodes (added by spawn) under the node, with their descendants, in each state.",
            labels=(*_NODE, "state"),
        )
        self.dynamic_stuck = GaugeMetricFamily(
            "threadsup_dynamic_nodes_stuck",
            "Dynamic nodes under the node, and their descendants, that are stuck.",
            labels=_NODE,
        )
        self.dynamic_restarts = CounterMetricFamily(
            "threadsup_dynamic_nodes_restarts",
            "Restarts of the dynamic nodes under the node and of their descendants, "
            "those gone from the tree included.",
            labels=_NODE,
        )
        self.dynamic_deaths = CounterMetricFamily(
            "threadsup_dynamic_nodes_deaths",
            "Deaths of the dynamic nodes under the node and of their descendants, "
            "those gone from the tree included.",
            labels=_NODE,
        )

    def all(self) -> list[Metric]:
        return [family for family in vars(self).values() if isinstance(family, Metric)]

    def add(self, label: str, census: Census) -> None:
        """Add one supervisor's samples, labelled ``supervisor=label``."""
        totals = dict.fromkeys(State, 0)
        now, wall = census.now, census.wall
        for node in census.nodes:
            labels = (label, node.dn)
            totals[node.state] += 1
            for state in State:
                self.state.add_metric((*labels, state.name), float(state is node.state))
            self.restarts.add_metric(labels, node.restarts)
            self.deaths.add_metric(labels, node.deaths)
            self.gave_up.add_metric(labels, float(node.gave_up))
            self.stuck.add_metric(labels, float(node.stuck))
            self.node_abandoned.add_metric(labels, census.abandoned[node.dn])
            if node.state is State.HEALTHY and node.healthy_since is not None:
                self.healthy.add_metric(labels, wall - (now - node.healthy_since))
            if node.restart_due is not None:
                self.next_restart.add_metric(labels, wall - (now - node.restart_due))
            spawned = node.spawned
            # Once dynamic descendants have restarted or died, the node keeps its
            # dynamic series after they leave, so that their counters never
            # vanish and come back as new series.
            if spawned is None and not (node.spawned_restarts or node.spawned_deaths):
                continue
            for state in State:
                count = spawned.states[state] if spawned is not None else 0
                totals[state] += count
                self.dynamic.add_metric((*labels, state.name), count)
            self.dynamic_stuck.add_metric(labels, spawned.stuck if spawned is not None else 0)
            self.dynamic_restarts.add_metric(labels, node.spawned_restarts)
            self.dynamic_deaths.add_metric(labels, node.spawned_deaths)
        self.ready.add_metric((label,), float(census.ready))
        for state, count in totals.items():
            self.nodes.add_metric((label, state.name), count)
        self.abandoned.add_metric((label,), sum(census.abandoned.values()))


class _Registration:
    """One call of `register`: an old unregister finds its own registration
    gone, and leaves a newer one of the same supervisor and label alone."""

    __slots__ = ("sup",)

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup


class _TreesCollector(Collector):
    """The supervisors registered in one registry, by label: one collector for
    all of them, since a family may appear only once in a scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.trees: dict[str, _Registration] = {}

    def describe(self) -> list[Metric]:
        """The families, without samples: how the registry finds a name clash."""
        return _Families().all()

    def collect(self) -> list[Metric]:
        with self._lock:
            trees = list(self.trees.items())
        families = _Families()
        for label, registration in trees:
            families.add(label, registration.sup._census())
        return families.all()

    def add(self, label: str, registration: _Registration) -> None:
        with self._lock:
            if label in self.trees:
                raise ValueError(
                    f"a supervisor labelled supervisor={label!r} is already registered in "
                    "this registry: give this one another label with "
                    "register(sup, registry, name='...') (or another base logger, "
                    "Supervisor(logger=...)), or unregister the first one (call the function "
                    "its register() returned)"
                )
            self.trees[label] = registration

    def remove(self, label: str, registration: _Registration) -> bool:
        """Remove ``registration`` if it is still the one labelled ``label``;
        whether no supervisor is left."""
        with self._lock:
            if self.trees.get(label) is registration:
                del self.trees[label]
            return not self.trees


#: Guards `_collectors` and registering and unregistering them.
_lock = threading.Lock()
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, _TreesCollector] = (
    weakref.WeakKeyDictionary()
)


def register(
    sup: Supervisor, registry: CollectorRegistry | None = None, *, name: str | None = None
) -> Callable[[], None]:
    """Report ``sup``'s tree in ``registry`` (`prometheus_client.REGISTRY` by
    default); return a function that takes it out again (idempotent).

    The tree is read when the registry is collected, in one short walk under
    its lock. Its series are labelled ``supervisor=name``, by default the name
    of its base logger (``threadsup``). A second supervisor with the same label
    in the same registry raises `ValueError`; so does a registry that already
    holds other ``threadsup_*`` metrics.
    """
    if not isinstance(sup, Supervisor):
        raise TypeError(f"register() takes a threadsup.Supervisor, not {sup!r}")
    if registry is None:
        registry = REGISTRY
    elif not isinstance(registry, CollectorRegistry):
        raise TypeError(f"registry must be a prometheus_client.CollectorRegistry, not {registry!r}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str, not {name!r}")
    if name == "":
        raise ValueError("name must not be empty: it is the value of the supervisor label")
    label = sup._tree.events.base.name if name is None else name
    registration = _Registration(sup)
    with _lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _TreesCollector()
            registry.register(collector)
            _collectors[registry] = collector
        collector.add(label, registration)

    def unregister() -> None:
        with _lock:
            if collector.remove(label, registration) and _collectors.get(registry) is collector:
                registry.unregister(collector)
                del _collectors[registry]

    return unregister
