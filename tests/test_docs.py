"""The documentation site: its API reference names every public name, under its public path.

The checks of docs/api.rst's directives need nothing but threadsup. The others build the
site as ``make docs`` does (a warning is an error) and read what Sphinx wrote: its inventory,
objects.inv, holds every name the reference documents, and the pages are what a reader
sees. That needs the ``docs`` dependency group, and skips without it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
import zlib
from pathlib import Path
from types import ModuleType

import pytest

import threadsup

DOCS = Path(__file__).resolve().parent.parent / "docs"
API = DOCS / "api.rst"
#: A private module's dotted path: ``threadsup._token``, ``threadsup._node.State``.
PRIVATE_PATH = re.compile(r"threadsup\._\w+(?:\.\w+)*")
#: Bound of one build of the site, on a loaded machine.
BUILD_TIMEOUT = 150


def public_modules() -> list[str]:
    """threadsup's modules whose name has no leading underscore (`__main__` has one)."""
    found = pkgutil.iter_modules(threadsup.__path__, "threadsup.")
    return sorted(m.name for m in found if not m.name.rpartition(".")[2].startswith("_"))


def public_names(module: ModuleType) -> list[str]:
    """The module's ``__all__``, or else the functions and classes it defines."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", None) == module.__name__
    ]


def expected_names() -> list[str]:
    """Every dotted name the reference must document: each one a user can import."""
    names = [f"threadsup.{name}" for name in threadsup.__all__]
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        names.append(module_name)
        names += [f"{module_name}.{name}" for name in public_names(module)]
    return names


def test_public_modules_are_the_documented_ones() -> None:
    # Guards public_modules: a new public module must show up here, and so in the reference.
    assert {"threadsup.support", "threadsup.testing", "threadsup.status"} <= set(public_modules())
    assert "threadsup.__main__" not in public_modules()


def test_api_rst_has_a_directive_for_every_public_name_and_module() -> None:
    text = API.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. auto\w+:: (threadsup[\w.]*)", text, re.MULTILINE))
    missing = [f"threadsup.{name}" for name in threadsup.__all__]
    missing += public_modules()
    assert sorted(set(missing) - documented) == []


def test_no_page_source_names_a_private_module() -> None:
    pages = sorted(DOCS.rglob("*.rst"))
    assert API in pages
    offenders = [
        f"{page.relative_to(DOCS)}:{number}: {line.strip()}"
        for page in pages
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE_PATH.search(line)
    ]
    assert offenders == []


# -- The built site ---------------------------------------------------------------------


def build_site(out: Path) -> str:
    """Build docs/ into ``out/html`` as ``make docs`` does; what Sphinx printed."""
    command = [sys.executable, "-m", "sphinx", "-E", "-n", "-W", "--keep-going", "-q"]
    command += ["-b", "html", "-d", str(out / "doctrees"), str(DOCS), str(out / "html")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    return f"exit status {proc.returncode}\n{proc.stdout}{proc.stderr}"


def inventory(html: Path) -> set[str]:
    """The names in objects.inv: every name the site documents, and their aliases."""
    header, _, compressed = (
        html.joinpath("objects.inv").read_bytes().partition(b"compressed using zlib.\n")
    )
    assert header.startswith(b"# Sphinx inventory version 2"), header
    return {line.split(" ", 1)[0] for line in zlib.decompress(compressed).decode().splitlines()}


# One test, so that one build serves every check: a build takes some 4 s of CPU.
@pytest.mark.timeout(BUILD_TIMEOUT + 30)
def test_built_site_documents_every_public_name_under_its_public_path(tmp_path: Path) -> None:
    pytest.importorskip("sphinx", reason="the docs dependency group is not installed")
    pytest.importorskip("furo", reason="the docs dependency group is not installed")
    output = build_site(tmp_path)
    html = tmp_path / "html"
    api = html.joinpath("api.html").read_text(encoding="utf-8")
    documented = inventory(html)
    problems = {
        # make docs fails on any warning: broken reST, a reference that does not resolve.
        "build": output if output != "exit status 0\n" else None,
        "missing from the reference": [n for n in expected_names() if n not in documented],
        # Described as threadsup.NAME, and only there.
        "not described once as threadsup.NAME": [
            name for name in threadsup.__all__ if api.count(f'id="threadsup.{name}"') != 1
        ],
        # What autodoc renders from the code (type hints, base classes, docstrings) included.
        "pages naming a private module": {
            str(page.relative_to(html)): sorted(set(PRIVATE_PATH.findall(text)))
            for page in sorted(html.rglob("*.html"))
            for text in [page.read_text(encoding="utf-8")]
            if PRIVATE_PATH.search(text)
        },
    }
    assert {what: found for what, found in problems.items() if found} == {}
