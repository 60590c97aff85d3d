"""Names, DNs, and the checks of `run` / `run_group` (all or nothing)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import pytest

from threadsup import CancelToken, Signal, Supervisor, ThreadsupError
from threadsup._errors import DuplicateName, InvalidName, NodeNotNew
from threadsup.testing import (
    Harness,
    Incarnation,
    RemoteRunnable,
    done_at_once,
    healthy_until_cancelled,
    wait_status,
)

INVALID_NAMES: list[object] = [
    "",
    "A",
    "aB",
    "a.b",
    "a b",
    "a" * 65,
    "a\n",
    "-",
    "caf\u00e9",
    1,
    None,
    b"abc",
]
VALID_NAMES = ["a", "0", "_", "a" * 64, "abc_123"]


class Parent(NamedTuple):
    sup: Supervisor
    inc: Incarnation


@pytest.fixture
def parent(harness: Harness) -> Parent:
    """A root that stays NEW and runs whatever the test tells it to."""
    root = RemoteRunnable()
    sup = harness.start(root)
    return Parent(sup, root.wait_incarnation(0))


def assert_only_root(p: Parent) -> None:
    assert p.sup.wait_settled(timeout=10)
    assert list(p.sup.snapshot()) == ["root"]


@pytest.mark.parametrize("name", INVALID_NAMES, ids=repr)
def test_run_rejects_an_invalid_name_with_value_error_and_starts_nothing(
    parent: Parent, name: object
) -> None:
    probe = RemoteRunnable()
    with pytest.raises(ValueError) as err:
        parent.inc.run(name, probe)
    assert isinstance(err.value, InvalidName)
    assert_only_root(parent)
    assert probe.count == 0


@pytest.mark.parametrize("name", INVALID_NAMES, ids=repr)
def test_run_group_with_one_invalid_name_starts_no_member(parent: Parent, name: object) -> None:
    probe = RemoteRunnable()
    with pytest.raises(ValueError):
        parent.inc.run_group({"good": probe, name: healthy_until_cancelled})
    assert_only_root(parent)
    assert probe.count == 0


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_name_gives_the_child_dn_root_dot_name(parent: Parent, name: str) -> None:
    child = RemoteRunnable()
    parent.inc.run(name, child)
    inc = child.wait_incarnation(0)
    assert inc.token.name == name
    assert inc.token.dn == f"root.{name}"
    assert f"root.{name}" in parent.sup.snapshot()


def test_grandchild_dn_joins_names_with_dots(harness: Harness) -> None:
    b = RemoteRunnable()
    a = RemoteRunnable(lambda t: t.run("b", b))
    root = RemoteRunnable(lambda t: t.run("a", a))
    harness.start(root)
    assert root.wait_incarnation(0).token.dn == "root"
    assert root.wait_incarnation(0).token.name == "root"
    assert a.wait_incarnation(0).token.dn == "root.a"
    inc = b.wait_incarnation(0)
    assert (inc.token.dn, inc.token.name) == ("root.a.b", "b")


def test_duplicate_name_raises_value_error_and_keeps_the_first_child(
    parent: Parent,
) -> None:
    first = RemoteRunnable()
    second = RemoteRunnable()
    parent.inc.run("a", first)
    first.wait_incarnation(0)
    with pytest.raises(ValueError) as err:
        parent.inc.run("a", second)
    assert isinstance(err.value, DuplicateName)
    assert parent.sup.wait_settled(timeout=10)
    assert second.count == 0
    assert first.count == 1 and not first.current.token.cancelled


def test_run_group_reusing_an_existing_name_starts_no_member(parent: Parent) -> None:
    parent.inc.run("a", healthy_until_cancelled)
    probe = RemoteRunnable()
    with pytest.raises(ValueError):
        parent.inc.run_group({"b": probe, "a": healthy_until_cancelled})
    assert parent.sup.wait_settled(timeout=10)
    assert probe.count == 0
    assert sorted(parent.sup.snapshot()) == ["root", "root.a"]


def test_failed_run_group_leaves_its_valid_names_free(parent: Parent) -> None:
    with pytest.raises(ValueError):
        parent.inc.run_group({"a": healthy_until_cancelled, "B": healthy_until_cancelled})
    child = RemoteRunnable()
    parent.inc.run("a", child)
    assert child.wait_incarnation(0).token.dn == "root.a"


def test_run_group_rejects_a_non_mapping_with_type_error(parent: Parent) -> None:
    probe = RemoteRunnable()
    with pytest.raises(TypeError):
        parent.inc.run_group([("a", probe)])
    assert_only_root(parent)
    assert probe.count == 0


def test_run_rejects_a_non_callable_runnable_with_type_error(parent: Parent) -> None:
    with pytest.raises(TypeError):
        parent.inc.run("a", 42)
    assert_only_root(parent)


def test_run_group_with_one_non_callable_starts_no_member(parent: Parent) -> None:
    probe = RemoteRunnable()
    with pytest.raises(TypeError):
        parent.inc.run_group({"a": probe, "b": "not callable"})
    assert_only_root(parent)
    assert probe.count == 0


def test_empty_run_group_is_a_no_op(parent: Parent) -> None:
    parent.inc.run_group({})
    assert_only_root(parent)
    child = RemoteRunnable()
    parent.inc.run("a", child)  # the node is still NEW and usable
    child.wait_incarnation(0)


@pytest.mark.parametrize(
    "advance",
    [
        pytest.param(lambda inc: inc.healthy(), id="after-healthy"),
        pytest.param(lambda inc: (inc.healthy(), inc.done()), id="after-done"),
    ],
)
def test_run_and_run_group_after_leaving_new_raise_runtime_error_and_start_nothing(
    parent: Parent, advance: Callable[[Incarnation], object]
) -> None:
    advance(parent.inc)
    probe = RemoteRunnable()
    with pytest.raises(RuntimeError) as err:
        parent.inc.run("a", probe)
    assert isinstance(err.value, NodeNotNew)
    with pytest.raises(RuntimeError):
        parent.inc.run_group({"b": probe})
    assert_only_root(parent)
    assert probe.count == 0


def test_checks_run_before_state_so_a_new_node_can_retry(parent: Parent) -> None:
    """A rejected call changes nothing: the node is still NEW and may run children."""
    with pytest.raises(ValueError):
        parent.inc.run("Bad", done_at_once)
    with pytest.raises(TypeError):
        parent.inc.run("ok", None)
    child = RemoteRunnable()
    parent.inc.run("ok", child)
    child.wait_incarnation(0)
    parent.inc.healthy()
    wait_status(parent.sup, "root.ok", running=True)


def _noop(token: CancelToken) -> None:
    token.wait()


def _run_invalid_name(t: CancelToken) -> None:
    t.run("Bad", _noop)


def _run_duplicate(t: CancelToken) -> None:
    t.run("a", _noop)


def _run_after_healthy(t: CancelToken) -> None:
    t.signal(Signal.HEALTHY)
    t.run("b", _noop)


def _signal_done_from_new(t: CancelToken) -> None:
    t.signal(Signal.DONE)


@pytest.mark.parametrize(
    "bad_call",
    [_run_invalid_name, _run_duplicate, _run_after_healthy, _signal_done_from_new],
)
def test_error_messages_name_the_dn(
    harness: Harness, bad_call: Callable[[CancelToken], None]
) -> None:
    p = RemoteRunnable(lambda t: t.run("a", _noop))
    harness.start(RemoteRunnable(lambda t: t.run("p", p)))
    with pytest.raises(ThreadsupError) as err:
        p.wait_incarnation(0).call(bad_call)
    assert "root.p" in str(err.value)
