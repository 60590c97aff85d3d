"""The public names, the exception hierarchy, the enums and the value types."""

from __future__ import annotations

import dataclasses

import pytest

import threadsup
from threadsup import (
    Backoff,
    Cancelled,
    CancelToken,
    NodeStatus,
    Signal,
    State,
    Supervisor,
    ThreadsupError,
)
from threadsup._errors import (
    AlreadyStarted,
    DuplicateName,
    InvalidName,
    InvalidSignal,
    NodeNotNew,
)


def test_contract_names_are_importable_from_the_package() -> None:
    for name in (
        "Supervisor",
        "CancelToken",
        "Cancelled",
        "Signal",
        "State",
        "Backoff",
        "NodeStatus",
        "ThreadsupError",
        "configure_json_logging",
        "JsonFormatter",
    ):
        assert hasattr(threadsup, name), name
    assert isinstance(Supervisor, type)
    assert isinstance(CancelToken, type)


def test_cancelled_is_a_base_exception_not_an_exception() -> None:
    assert issubclass(Cancelled, BaseException)
    assert not issubclass(Cancelled, Exception)
    assert Cancelled("root.a").dn == "root.a"


def test_threadsup_errors_derive_from_the_builtin_types_the_contract_names() -> None:
    assert issubclass(ThreadsupError, Exception)
    assert issubclass(InvalidName, ThreadsupError) and issubclass(InvalidName, ValueError)
    assert issubclass(DuplicateName, ThreadsupError) and issubclass(DuplicateName, ValueError)
    assert issubclass(NodeNotNew, ThreadsupError) and issubclass(NodeNotNew, RuntimeError)
    assert issubclass(InvalidSignal, ThreadsupError) and issubclass(InvalidSignal, RuntimeError)
    assert issubclass(AlreadyStarted, ThreadsupError) and issubclass(AlreadyStarted, RuntimeError)


def test_state_and_signal_members() -> None:
    assert {s.name for s in State} == {"NEW", "HEALTHY", "DONE", "DEAD", "CANCELLED"}
    for s in State:
        assert s.value == s.name
    assert {s.name for s in Signal} == {"HEALTHY", "DONE"}


def test_node_status_is_a_dataclass_with_the_contract_fields() -> None:
    names = {f.name for f in dataclasses.fields(NodeStatus)}
    assert {"dn", "state", "running", "restarts", "last_error"} <= names


def test_backoff_defaults_match_the_contract() -> None:
    b = Backoff()
    assert (b.initial, b.multiplier, b.maximum, b.jitter) == (0.5, 1.5, 60.0, 0.5)


def test_backoff_is_frozen() -> None:
    b = Backoff(initial=0.01, jitter=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.initial = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": -0.1},
        {"maximum": -1.0},
        {"multiplier": 0.5},
        {"jitter": -0.1},
        {"jitter": 1.5},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_backoff_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


@pytest.mark.parametrize("jitter", [0.0, 1.0])
def test_backoff_accepts_jitter_bounds(jitter: float) -> None:
    assert Backoff(jitter=jitter).jitter == jitter
