"""Every ``.. code-block:: python`` of README.rst and docs/**/*.rst runs, each in a
fresh interpreter; a service example (one calling ``threadsup.run``) is sent
SIGTERM once its tree runs, and must then exit 0. README.rst, the package's long
description, stays short, plain reST and shaped for a newcomer."""

from __future__ import annotations

import importlib
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import threadsup

README = Path(__file__).resolve().parent.parent / "README.rst"
DOCS = [README, *sorted((README.parent / "docs").rglob("*.rst"))]
#: An example must finish on its own well within this (most take < 1 s).
EXAMPLE_TIMEOUT = 30.0
#: README.rst opens the package's page on the index: an introduction that links to the
#: docs, as short as the long descriptions of trio, urllib3 or attrs.
README_MAX_BYTES = 10_240
#: A cross-reference role whose target is a private path (``threadsup._token.CancelToken``).
_PRIVATE_TARGET = re.compile(r":[\w:]+:`(?:[^`]*<)?~?threadsup\._\w*[^`]*`")

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


#: ``(where, code)`` of every Python example, README's and the docs'.
EXAMPLES = [
    (f"{doc.relative_to(README.parent)}:{line}", code)
    for doc in DOCS
    for line, lang, code in code_blocks(doc.read_text(encoding="utf-8"))
    if lang == "python"
]


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


def _section(text: str, title: str) -> str:
    """The body of the top-level section ``title`` of ``text``, up to the next one."""
    match = re.search(
        rf"^{re.escape(title)}\n=+\n(?P<body>.*?)(?=^[^\n]+\n=+\n|\Z)",
        text,
        re.MULTILINE | re.DOTALL,
    )
    assert match, f"README.rst has no section {title!r}"
    return match.group("body")


def test_readme_has_the_sections_a_newcomer_needs() -> None:
    text = _readme()
    for title in (
        "What it is, and why",
        "Installing",
        "Quick start",
        "Features",
        "Documentation",
        "Development",
    ):
        assert re.search(rf"^{re.escape(title)}\n=+$", text, re.MULTILINE), title
    installing = _section(text, "Installing")
    assert "$ pip install threadsup\n" in installing
    assert "threadsup[prometheus]" in installing
    quick_start = _section(text, "Quick start")
    assert "with Supervisor(root) as sup:\n        sup.wait()" in quick_start
    assert [lang for _, lang, _ in code_blocks(quick_start)].count("python") >= 1
    documentation = _section(text, "Documentation")
    assert "make docs" in documentation
    for page in ("tutorial", "concepts", "performance", "reliability", "differences"):
        assert f"<docs/{page}.rst>`__" in documentation, page
    for guide in ("blocking", "stuck", "policies", "service", "observing", "testing", "reuse"):
        assert f"<docs/guides/{guide}.rst>`__" in documentation, guide


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.rst is {size} bytes: move detail to docs/"


def test_readme_is_valid_restructuredtext() -> None:
    # setup.cfg makes README.rst the long description: it must render on the package
    # index, which knows plain docutils only (the Sphinx pages are checked by make docs).
    pytest.importorskip("docutils")
    docutils_core = importlib.import_module("docutils.core")
    warnings = io.StringIO()
    docutils_core.publish_doctree(
        _readme(),
        settings_overrides={"warning_stream": warnings, "report_level": 1, "halt_level": 5},
    )
    assert warnings.getvalue() == ""


def test_private_target_pattern() -> None:
    assert _PRIVATE_TARGET.search(":class:`threadsup._token.CancelToken`")
    assert _PRIVATE_TARGET.search(":meth:`wait <threadsup._token.CancelToken.wait>`")
    assert _PRIVATE_TARGET.search(":py:func:`~threadsup._logs.configure_logging`")
    assert not _PRIVATE_TARGET.search(":class:`threadsup.CancelToken`")
    assert not _PRIVATE_TARGET.search("``threadsup._token`` is private")


@pytest.mark.parametrize("doc", DOCS, ids=[str(doc.relative_to(README.parent)) for doc in DOCS])
def test_docs_refer_to_public_paths_only(doc: Path) -> None:
    # The API reference documents each name at its public path: a private one is a broken
    # link, and teaches an import that may break.
    assert _PRIVATE_TARGET.findall(doc.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(("where", "code"), EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_doc_example_runs(where: str, code: str, tmp_path: Path) -> None:
    # The same threadsup the tests import, whether a checkout or an installed wheel.
    package_parent = str(Path(threadsup.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if "threadsup.run(" in code and "os.kill" not in code:  # runs until SIGTERM
            _wait_for_line(proc, "running the tree", EXAMPLE_TIMEOUT, where)
            proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=EXAMPLE_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{where}: example still running after {exc.timeout} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, (
        f"{where}: exit {proc.returncode}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    )
    position = 0
    for match in filter(None, map(_PRINT.match, code.splitlines())):
        expected = match.group("expected")
        found = stdout.find(expected, position)
        assert found >= 0, f"{where}: {expected!r} not printed:\n{stdout}"
        position = found + len(expected)


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float, where: str) -> None:
    """Read ``proc``'s stderr until a line holds ``needle``; fail after ``timeout`` s."""
    assert proc.stderr is not None
    timer = threading.Timer(timeout, proc.kill)  # unblocks the readline below
    timer.start()
    try:
        for line in proc.stderr:
            if needle in line:
                return
    finally:
        timer.cancel()
    pytest.fail(f"{where}: no line with {needle!r} within {timeout} s")
