"""threadsup's pytest plugin: the ``supervise`` fixture.

Installing threadsup registers it (a ``pytest11`` entry point named
``threadsup``), so every test can ask for ``supervise``. It defines no hook:
tests that do not use the fixture run exactly as without it.

With ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, load it with ``-p threadsup``
(the entry point's name); ``-p threadsup.pytest_plugin`` or
``pytest_plugins = ["threadsup.pytest_plugin"]`` would register the module a
second time when the entry point is loaded too, which pytest refuses.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from threadsup.testing import CheckedHarness

__all__ = ["supervise"]


@pytest.fixture
def supervise() -> Iterator[CheckedHarness]:
    """A pytest fixture (ask for it by name): starts supervisors for one test,
    and checks at its end that they left nothing behind.

    ``supervise(root, **options)`` starts a `threadsup.Supervisor` and returns
    it, with test-friendly defaults: `threadsup.testing.FAST_BACKOFF` (10 ms,
    at most 200 ms), ``shutdown_timeout=2.0`` and a base logger of its own
    whose records ``supervise.logs`` keeps; any `threadsup.Supervisor` keyword
    overrides them. ``supervise.expect_death("root.flaky")`` declares an
    expected death. The fixture is a `threadsup.testing.CheckedHarness`.

    At teardown it stops every supervisor it started (10 s in all), then fails
    the test if a node died unexpectedly (naming its DN, with the traceback),
    if a supervisor did not stop, or if a thread started during the test is
    still alive 5 s later.
    """
    harness = CheckedHarness()
    yield harness
    try:
        harness.close()
    except AssertionError as exc:
        problems = str(exc)
    else:
        return
    # Outside the except block, so that the report is not chained to the
    # AssertionError: the message says it all, and the fixture's traceback
    # would only hide it.
    pytest.fail(problems, pytrace=False)
