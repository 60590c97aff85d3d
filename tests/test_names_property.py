"""Property test: every non-matching name is rejected, and nothing starts."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threadsup.testing import Harness, RemoteRunnable

VALID = re.compile(r"[a-z0-9_]{1,64}")


def test_any_name_that_does_not_fully_match_is_rejected(harness: Harness) -> None:
    root = RemoteRunnable()
    sup = harness.start(root)
    inc = root.wait_incarnation(0)
    probe = RemoteRunnable()

    @settings(max_examples=60, deadline=None, database=None)
    @given(
        st.one_of(
            st.text(max_size=70).filter(lambda s: not VALID.fullmatch(s)),
            st.from_regex(r"[a-z0-9_]{1,64}[.A-Z \n-][a-z]{0,3}", fullmatch=True),
            st.integers(),
            st.binary(max_size=5),
            st.none(),
        )
    )
    def check(name: object) -> None:
        with pytest.raises(ValueError):
            inc.run(name, probe)

    check()
    assert sup.wait_settled(timeout=10)
    assert list(sup.snapshot()) == ["root"]
    assert probe.count == 0
