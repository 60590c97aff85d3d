"""Every ``.. code-block:: python`` of README.rst runs, each in a fresh interpreter."""

from __future__ import annotations

import importlib
import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import threadsup

README = Path(__file__).resolve().parent.parent / "README.rst"
#: A README example must finish on its own well within this (they take < 1 s each).
EXAMPLE_TIMEOUT = 30.0

_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. code-block::[ \t]*(?P<language>\S*)[ \t]*$")
_OPTION = re.compile(r"^[ \t]+:[\w-]+:")
#: ``print(...)  # text``: the example must print ``text`` (in the order of the prints).
_PRINT = re.compile(r"^\s*print\(.*\)\s+# (?P<expected>.+)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def code_blocks(text: str) -> list[tuple[int, str, str]]:
    """``(line number, language, code)`` of every ``code-block`` directive in ``text``.

    The body is every line after the directive (and its ``:option:`` lines) that is
    blank or indented deeper than the directive, dedented.
    """
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        i += 1
        if match is None:
            continue
        base = len(match.group("indent"))
        while i < len(lines) and _OPTION.match(lines[i]):
            i += 1
        start = i
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            i += 1
        code = textwrap.dedent("\n".join(lines[start:i])).strip("\n")
        blocks.append((start + 1, match.group("language"), code))
    return blocks


def _readme() -> str:
    return README.read_text(encoding="utf-8")


PYTHON_BLOCKS = [(line, code) for line, lang, code in code_blocks(_readme()) if lang == "python"]


def test_code_block_parser() -> None:
    text = textwrap.dedent(
        """\
        Title
        =====

        .. code-block:: python
           :caption: an option line

            x = 1

            if x:
                print(x)
        back to prose

        * a list item:

          .. code-block:: console

              $ make demo
        """
    )
    assert code_blocks(text) == [
        (6, "python", "x = 1\n\nif x:\n    print(x)"),
        (16, "console", "$ make demo"),
    ]


def test_readme_starts_with_make_demo_and_make_test() -> None:
    text = _readme()
    lines = text.splitlines()
    assert lines[1] == "threadsup"
    first_line, language, code = code_blocks(text)[0]
    assert language == "console"
    assert code.splitlines()[0].startswith("$ make demo")
    assert code.splitlines()[1].startswith("$ make test")
    # Nothing but the title and a one-sentence pitch comes before them.
    before = [line for line in lines[: first_line - 1] if line.strip()]
    assert len(before) <= 6, before
    assert "Quick start" in text[text.index("make test") :]


def test_readme_has_the_sections_a_newcomer_needs() -> None:
    text = _readme()
    for title in (
        "Quick start",
        "States",
        "Groups",
        "Restarts",
        "Backoff",
        "Cancelling blocking code",
        "Stopping",
        "Logging",
        "Errors",
        "Testing",
        "Differences from the Go supervisor",
        "Development",
    ):
        assert re.search(rf"^{re.escape(title)}\n[=-]+$", text, re.MULTILINE), title
    assert "with Supervisor(root) as sup:\n        sup.wait()" in text
    assert len(PYTHON_BLOCKS) >= 8


def test_readme_is_valid_restructuredtext() -> None:
    # setup.cfg makes README.rst the long description: it must render on the package index.
    pytest.importorskip("docutils")
    docutils_core = importlib.import_module("docutils.core")
    warnings = io.StringIO()
    docutils_core.publish_doctree(
        _readme(),
        settings_overrides={"warning_stream": warnings, "report_level": 1, "halt_level": 5},
    )
    assert warnings.getvalue() == ""


@pytest.mark.parametrize(
    ("line", "code"), PYTHON_BLOCKS, ids=[f"README.rst:{line}" for line, _ in PYTHON_BLOCKS]
)
def test_readme_example_runs(line: int, code: str, tmp_path: Path) -> None:
    # The same threadsup the tests import, whether a checkout or an installed wheel.
    package_parent = str(Path(threadsup.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    try:
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"README.rst:{line}: example still running after {exc.timeout} s")
    assert result.returncode == 0, (
        f"README.rst:{line}: exit {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    position = 0
    for match in filter(None, map(_PRINT.match, code.splitlines())):
        expected = match.group("expected")
        found = result.stdout.find(expected, position)
        assert found >= 0, f"README.rst:{line}: {expected!r} not printed:\n{result.stdout}"
        position = found + len(expected)
