"""Sphinx configuration of threadsup's documentation site (`make docs`)."""

from __future__ import annotations

import builtins
import enum
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Any, TypeVar, cast

from docutils import nodes
from docutils.nodes import Element
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.domains import Domain
from sphinx.domains.python import PythonDomain, PyXRefRole
from sphinx.environment import BuildEnvironment
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.nodes import get_node_source

# Document the checkout beside this file, not whichever threadsup is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import threadsup
import threadsup.service
import threadsup.support

# -- Project: from the package's metadata, never written twice. ---------------

_metadata = importlib.metadata.metadata("threadsup")
project = _metadata["Name"]
release = _metadata["Version"]
version = release
copyright = "The threadsup authors"  # as in LICENSE

# -- General ------------------------------------------------------------------

extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build", "screenshot.py"]
# Every reference must resolve, so that a renamed or removed name fails the build; but those
# to the standard library and to other packages cannot: there is no inventory to link them to
# (see `_no_page`).
nitpicky = True
# `name` in a docstring, written for readers of the source, links to the name's description
# where there is one (see `_Mention`).
default_role = "py:mention"

# -- autodoc --------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}
# An override without a docstring of its own stays out, rather than bringing in the
# docstring of a class of another package (`JsonFormatter.add_fields`).
autodoc_inherit_docstrings = False
# Type hints in signatures, with the names alone (`CancelToken`, not a dotted path), and
# defaults as written (`os.environ`, not the environment of the machine building the docs).
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_typehints_format = "short"
python_use_unqualified_type_names = True
python_maximum_signature_line_length = 88
# Keep the alias in signatures rather than its expansion, `Callable[[CancelToken], object]`.
autodoc_type_aliases = {"Runnable": "threadsup.Runnable"}
# Classes whose instances threadsup makes and hands to the user's code: their constructor
# is not for users, and its parameters are internals (a token's node).
HANDED_OUT = {"threadsup.CancelToken", "threadsup.ScopedToken", "threadsup.testing.Incarnation"}

# -- HTML -----------------------------------------------------------------------

html_theme = "furo"
html_title = f"{project} {release}"
html_static_path: list[str] = []


# -- Public paths ----------------------------------------------------------------
#
# The names of `threadsup.__all__` are documented once, as `threadsup.NAME`. Most are defined
# in private modules (`threadsup._token` and so on) and keep them as their `__module__`:
# autodoc reads a class's `#:` attribute comments from the source of that module. So the type
# hints and base classes autodoc renders point at private paths, which are rewritten to the
# public name. Some are also names of a public module (`threadsup.support.serve`,
# `threadsup.service.run`): that path is a name of the same description.

#: The public modules that define or re-export names of `threadsup.__all__`.
PUBLIC_MODULES = ("threadsup.support", "threadsup.service")


def _home(obj: object) -> str | None:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else None


def _private_paths() -> dict[str, str]:
    """Where each public name is defined, in a private module -> `threadsup.NAME`."""
    paths = {}
    for name in threadsup.__all__:
        home = _home(getattr(threadsup, name))  # `typing.Callable` for an alias: not ours
        if home and home.startswith("threadsup.") and "._" in home:
            paths[home] = f"threadsup.{name}"
    return paths


def _module_paths() -> dict[str, str]:
    """`threadsup.support.serve` -> `threadsup.serve`: public paths of one public name."""
    paths = {}
    for module_name in PUBLIC_MODULES:
        module = vars(sys.modules[module_name])
        for name in threadsup.__all__:
            if name in module and module[name] is getattr(threadsup, name):
                paths[f"{module_name}.{name}"] = f"threadsup.{name}"
    return paths


PRIVATE_PATHS = _private_paths()
HOME_PATHS = _module_paths()


def _publish(target: str) -> str:
    """`target` with its longest private prefix replaced by the public path."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        public = PRIVATE_PATHS.get(".".join(parts[:end]))
        if public is not None:
            return ".".join([public, *parts[end:]])
    return target


def _rewrite_private_targets(app: Sphinx, doctree: nodes.document) -> None:
    for ref in doctree.findall(pending_xref):
        if ref.get("refdomain") != "py":
            continue
        # A type hint autodoc could not evaluate keeps an alias's bare name: `Runnable | None`
        # (an alias as autodoc evaluates it takes no part in a union).
        target = autodoc_type_aliases.get(ref["reftarget"], ref["reftarget"])
        ref["reftarget"] = _publish(target)
        # Type hints refer to classes; an alias is documented as data.
        if ref["reftarget"] in autodoc_type_aliases.values() and ref["reftype"] == "class":
            ref["reftype"] = "obj"


def _note_home_paths(app: Sphinx, doctree: nodes.document) -> None:
    """Make `threadsup.support.serve` name the description of `threadsup.serve`.

    autodoc does so for a class (its `:canonical:` option), not for a function.
    """
    domain = cast(PythonDomain, app.env.get_domain("py"))
    for home, public in HOME_PATHS.items():
        entry = domain.objects.get(public)
        if entry and entry.docname == app.env.docname and home not in domain.objects:
            domain.note_object(home, entry.objtype, entry.node_id, aliased=True)


def _comment_of_alias(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Give `threadsup.Runnable` the `#:` comment it has in the private module defining it.

    autodoc looks for a name's comment in the module it documents the name under.
    """
    module_name, _, attr = name.rpartition(".")
    if what != "data" or lines or module_name != "threadsup":
        return
    for module in list(sys.modules.values()):
        if module.__name__.startswith("threadsup._") and vars(module).get(attr) is obj:
            comments = ModuleAnalyzer.for_module(module.__name__).find_attr_docs()
            lines.extend(comments.get(("", attr), []))
            return


def _hide_signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str] | None:
    """No constructor signature for an enum (its members are listed) or a HANDED_OUT class."""
    if what in ("class", "exception") and (
        name in HANDED_OUT or (isinstance(obj, type) and issubclass(obj, enum.Enum))
    ):
        return ("", "")
    return None


# -- References ------------------------------------------------------------------


class _Mention(PyXRefRole):
    """The default role, for the docstrings' `name`: a link, or code when nothing matches.

    The docstrings, written for readers of the source, name public objects, methods of their
    own class and private helpers alike in backquotes. A mention links to the object of that
    name in the scopes of its docstring or in the `threadsup` package (`_resolve_mention`),
    and stays code when there is none; a page's explicit role (`:func:`, `:class:`...) must
    resolve.
    """

    def process_link(
        self, env: BuildEnvironment, refnode: Element, explicit: bool, title: str, target: str
    ) -> tuple[str, str]:
        title, target = super().process_link(env, refnode, explicit, title, target)
        refnode["reftype"] = "obj"  # whatever kind of object it is
        refnode["mention"] = True
        return title, target.removesuffix("()")


def _scopes(node: pending_xref) -> list[str]:
    """Where a mention's name may be defined: around its docstring's object, then the package.

    A docstring's object is documented under its public name (`threadsup.serve`), while its
    source's own scopes (`threadsup.support`) hold the names it mentions.
    """
    try:
        source = get_node_source(node)
    except ValueError:  # a node of no file
        source = ""
    _, _, home = source.partition(":docstring of ")
    parts = home.split(".") if home else []
    return [".".join(parts[:end]) for end in range(len(parts), 1, -1)] + ["threadsup"]


def _resolve_mention(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: Element
) -> Element | None:
    """Look for a mention's name in the scopes of the docstring it comes from."""
    if not node.get("mention"):
        return None
    domain = env.get_domain("py")
    for scope in _scopes(node):
        target = _publish(f"{scope}.{node['reftarget']}")
        found = domain.resolve_xref(env, node["refdoc"], app.builder, "obj", target, node, contnode)
        if found is not None:
            return found
    return None


def _object_at(path: str) -> object:
    """The object at a dotted path among the imported modules, or None."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        obj = sys.modules.get(".".join(parts[:end]))
        if obj is not None:
            for part in parts[end:]:
                obj = getattr(obj, part, None)
            return obj
    return None


def _no_page(app: Sphinx, domain: Domain, node: pending_xref) -> bool | None:
    """Keep quiet about a mention, and about a reference that no page can resolve.

    That is one to a builtin or to an object of another package, or to a type variable
    (`CancelToken.get` returns the queue's `_T`). A type hint that Python 3.9 cannot
    evaluate (`CollectorRegistry | None`) keeps the names as written in the docstring's
    module, so a name is looked up there too.
    """
    if node.get("refdomain") != "py":
        return None
    if node.get("mention"):
        return True
    target = node["reftarget"]
    top = target.split(".")[0]
    if top != "threadsup" and (hasattr(builtins, top) or importlib.util.find_spec(top)):
        return True
    for path in [target] + [f"{scope}.{target}" for scope in _scopes(node)]:
        obj = _object_at(path)
        if obj is None:
            continue
        module = getattr(obj, "__module__", None) or "threadsup"
        if isinstance(obj, TypeVar) or module.split(".")[0] != "threadsup":
            return True
    return None


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_role_to_domain("py", "mention", _Mention())
    app.connect("doctree-read", _rewrite_private_targets)
    app.connect("doctree-read", _note_home_paths)
    app.connect("autodoc-process-docstring", _comment_of_alias)
    app.connect("autodoc-process-signature", _hide_signature)
    app.connect("missing-reference", _resolve_mention)
    app.connect("warn-missing-reference", _no_page)
    return {"parallel_read_safe": True}
