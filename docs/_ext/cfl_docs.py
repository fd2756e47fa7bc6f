"""Sphinx extension of the cfl-jax docs.

* ``.. cfl-config-reference::`` renders every key of the training config (key, default, meaning)
  from :mod:`config_reference`; each key is a ``confval`` target, so ``:confval:`loss.gamma_hc```
  (reST) or ``{confval}`loss.gamma_hc``` (MyST) links to it.
* ``.. module-summary:: cfl_jax.metrics`` is an autosummary table of the names the module's
  ``automodule :members:`` documents (its ``__all__``, else its public functions, classes and
  commented data), so a page's table cannot miss a name.
* A reference to one of our objects under another of its names (``recipe.build_optimizer`` inside
  ``cfl_jax.training.train``, ``cfl_jax.losses.softmax.focal_loss`` for ``cfl_jax.focal_loss``)
  resolves to where the object is documented. Names that do not import stay unresolved.
* A reference to a private path of jax, optax or flax (``optax._src.base.GradientTransformation``,
  ``jax.jaxlib._jax.Array``: what type hints name) goes to the public name of the same object,
  which the inventories of docs/_ext/inventories.py link to those projects' docs.
* "docs/method.md §N" in a docstring becomes a link to that section of the method page.
* Members that a third-party base or decorator adds to our classes (``TrainState.replace`` from
  ``flax.struct``) are left out.
* Signatures show what a caller writes: a Flax module without the ``parent`` and ``name`` fields
  that Flax adds, ``jax.numpy.float32`` rather than ``<class 'jax.numpy.float32'>``, and a constant
  without its value when that prints longer than :data:`LONG_VALUE` characters (its doc comment
  says what it holds).
"""

import importlib
import inspect
import re
import sys
import types
import typing
from typing import Any

from docutils import nodes
from sphinx import addnodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.ext.autosummary import Autosummary
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

import config_reference
import inventories

# The method page's section labels, by section number (docs/method.md).
METHOD_SECTIONS = {
    "1": "method-losses",
    "2": "method-schedule",
    "3": "method-reference-code",
    "4": "method-cyclical-training",
    "5": "method-studies",
    "6": "method-pitfalls",
}
_METHOD_CITATION = re.compile(r"docs/method\.md ((?:§\d(?:, )?)+)")


def method_links(text: str) -> str:
  """``text`` with each "docs/method.md §N[, §M]" turned into reST links to those sections."""

  def link(match: re.Match) -> str:
    numbers = re.findall(r"§(\d)", match.group(1))
    links = ", ".join(f":ref:`§{n} <{METHOD_SECTIONS[n]}>`" for n in numbers)
    trailing = match.group(1)[len(match.group(1).rstrip(", ")):]
    return f":doc:`method </method>` {links}{trailing}"

  return _METHOD_CITATION.sub(link, text)


def _process_docstring(app, what, name, obj, options, lines: list[str]) -> None:
  """Links the method-page citations; a module documented with its members gets its summary."""
  del app, obj
  lines[:] = [method_links(line) for line in lines]
  if what == "module" and options.get("members"):
    lines += ["", f".. module-summary:: {name}", ""]


def _skip_foreign_members(app, what, name, obj, skip, options) -> bool | None:
  """Leaves out class members that third-party code defines (``flax.struct``'s ``replace``)."""
  del app, options
  if what == "class" and callable(obj) and not skip:
    module = getattr(inspect.unwrap(obj), "__module__", None) or ""
    if module and not module.startswith("cfl_jax") and not name.startswith("__"):
      return True
  return None


# Signatures.

LONG_VALUE = 200  # characters: a longer value is a dump (a dict of sources), not a signature

_FLAX_FIELDS = re.compile(r",\s*parent=<[^>]*>|,\s*name=None(?=\)?$)")
_CLASS_REPR = re.compile(r"<class '([\w.]+)'>")


def _is_linen_module(obj: Any) -> bool:
  linen = sys.modules.get("flax.linen")
  return linen is not None and inspect.isclass(obj) and issubclass(obj, linen.Module)


def clean_signature(signature: str, linen_module: bool = False) -> str:
  """``signature`` without Flax's ``parent``/``name`` fields (if ``linen_module``) or class reprs.

  >>> clean_signature("(n, dtype=<class 'jax.numpy.float32'>, parent=<flax...>, name=None)", True)
  '(n, dtype=jax.numpy.float32)'
  """
  if linen_module:
    signature = _FLAX_FIELDS.sub("", signature.removesuffix(")")) + ")"
  return _CLASS_REPR.sub(r"\1", signature)


def _process_signature(app, what, name, obj, options, signature, return_annotation):
  """sphinx-autodoc-typehints' signature (the first answer wins, so it runs here), cleaned."""
  import sphinx_autodoc_typehints

  typed = sphinx_autodoc_typehints.process_signature(app, what, name, obj, options, signature,
                                                     return_annotation)
  if typed is not None:
    signature, return_annotation = typed
  if signature is None:
    return None
  return clean_signature(signature, what == "class" and _is_linen_module(obj)), return_annotation


def _hide_long_values(app: Sphinx, doctree: nodes.document) -> None:
  """Drops the `` = value`` of module data and attributes whose value prints too long."""
  del app
  for desc in doctree.findall(addnodes.desc):
    if desc.get("domain") != "py" or desc.get("objtype") not in ("data", "attribute"):
      continue
    for signature in desc.findall(addnodes.desc_signature):
      for annotation in list(signature.findall(addnodes.desc_annotation)):
        text = annotation.astext().strip()
        if text.startswith("=") and len(text) > LONG_VALUE:
          annotation.parent.remove(annotation)


# The configuration reference.

_ESCAPE = str.maketrans({c: "\\" + c for c in "\\*`_|[]<>"})


def _meaning_rst(text: str) -> str:
  return method_links(text.translate(_ESCAPE))


def _key_role(name, rawtext, text, lineno, inliner, options=None, content=None):
  """``:cfl-config-key:`loss.gamma_hc```: the key in code font, registered as a confval target."""
  del name, rawtext, options, content
  env = inliner.document.settings.env
  node_id = "config-" + text.replace(".", "-").replace("_", "-")
  target = nodes.target("", "", ids=[node_id])
  inliner.document.note_explicit_target(target)
  env.get_domain("std").note_object("confval", text, node_id, location=(env.docname, lineno))
  return [target, nodes.literal(text, text)], []


class ConfigReference(SphinxDirective):
  """Every key of ``default_config()``: one table for the top-level keys, one per group."""

  def run(self) -> list[nodes.Node]:
    self.env.note_dependency(inspect.getsourcefile(config_reference.config_module))
    lines = config_reference.reference_rst(_meaning_rst, key_role="cfl-config-key")
    container = nodes.section()
    container.document = self.state.document
    nested_parse_with_titles(self.state, StringList(lines, "<cfl-config-reference>"), container)
    return list(container.children)


# Module summaries.


def documented_names(modname: str) -> list[str]:
  """The names ``automodule:: modname`` with ``:members:`` documents, in its order."""
  module = importlib.import_module(modname)
  if hasattr(module, "__all__"):
    return [n for n in module.__all__ if not inspect.ismodule(getattr(module, n, None))]
  attr_docs = {name for (_, name) in ModuleAnalyzer.for_module(modname).find_attr_docs()}
  names = []
  for name, value in vars(module).items():
    if name.startswith("_"):
      continue
    defined_here = (inspect.isfunction(value) or inspect.isclass(value)) and (
        value.__module__ == modname)
    if (defined_here and value.__doc__) or name in attr_docs:
      names.append(name)
  return names


def defining_module(modname: str, name: str) -> str:
  """The module whose source defines ``modname.name`` (a re-export's origin), else modname."""
  value = getattr(importlib.import_module(modname), name)
  home = getattr(value, "__module__", None)
  if (inspect.isfunction(value) or inspect.isclass(value)) and home:
    return home
  for candidate in sorted(m for m in sys.modules if m.startswith(modname + ".")):
    module = sys.modules[candidate]
    if getattr(module, name, None) is value and (
        ("", name) in ModuleAnalyzer.for_module(candidate).find_attr_docs()):
      return candidate
  return modname


class ModuleSummary(Autosummary):
  """An autosummary table of a module's documented names: ``.. module-summary:: module``."""

  required_arguments = 1
  has_content = False
  option_spec = {**Autosummary.option_spec, "exclude": directives.unchanged}

  def run(self) -> list[nodes.Node]:
    modname = self.arguments[0]
    exclude = set((self.options.pop("exclude", "") or "").replace(",", " ").split())
    names = [n for n in documented_names(modname) if n not in exclude]
    # Relative to the current module (autosummary's prefix), which automodule sets to modname;
    # a re-exported name as ~ its defining module's (where its doc comment is), shown short.
    current = self.env.ref_context.get("py:module")
    prefix = "" if current == modname else f"{modname}."
    items = []
    for name in names:
      home = defining_module(modname, name)
      if home == modname:
        items.append(prefix + name)
      else:  # autosummary wants names below the current module relative to it
        relative = home[len(current) + 1:] if current and home.startswith(f"{current}.") else home
        items.append(f"~{relative}.{name}")
    self.content = StringList(items, "<module-summary>")
    self.arguments = []
    return super().run()


# References to re-exported names.

_DOCUMENTED: dict[str, Any] = {}  # this process's map, rebuilt when the objects change


def _documented_objects(env) -> dict[tuple[int, str], tuple[str, Any]]:
  """(id of object, last name part) -> (documented full name, the object) for our objects."""
  objects = env.get_domain("py").objects
  if _DOCUMENTED.get("count") == len(objects):
    return _DOCUMENTED["found"]
  found = {}
  for name, entry in objects.items():
    if name.startswith("cfl_jax") and not entry.aliased:
      value = inventories.resolve(name)
      if value is not inventories.MISSING:
        found.setdefault((id(value), name.rsplit(".", 1)[-1]), (name, value))
  _DOCUMENTED.update(count=len(objects), found=found)
  return found


# Where jax, optax and flax document their public names, most specific first.
_PUBLIC_MODULES = ("jax.sharding", "jax.typing", "jax", "optax", "flax.linen",
                   "flax.training.train_state")


def public_name(name: str) -> str | None:
  """The public name of the jax/optax/flax object at the private path ``name``, if it has one.

  >>> public_name("optax._src.base.GradientTransformation")
  'optax.GradientTransformation'
  """
  value, last = inventories.resolve(name), name.rsplit(".", 1)[-1]
  # jax.Array's qualified name is jaxlib._jax.Array.
  if value is inventories.MISSING and name.startswith("jax.jaxlib."):
    value = inventories.resolve(name.removeprefix("jax."))
  if value is inventories.MISSING:
    return None
  for module in _PUBLIC_MODULES:
    if module.split(".")[0] == name.split(".")[0] and name != f"{module}.{last}":
      if getattr(inventories.resolve(module), last, inventories.MISSING) is value:
        return f"{module}.{last}"
  return None


def _resolve_public(app: Sphinx, env, node, contnode):
  """Resolves a private jax/optax/flax path through the inventories, by its public name."""
  from sphinx.ext import intersphinx

  public = public_name(node["reftarget"].lstrip(".~"))
  if public is None:
    return None
  public_node = node.deepcopy()
  public_node["reftarget"] = public
  return intersphinx.missing_reference(app, env, public_node, contnode)


def _resolve_alias(app: Sphinx, env, node, contnode):
  if node.get("refdomain") != "py":
    return None
  target = node["reftarget"].lstrip(".~")
  if target.split(".")[0] in ("jax", "optax", "flax"):
    return _resolve_public(app, env, node, contnode)
  module, cls = node.get("py:module"), node.get("py:class")
  candidates = [target]
  if module:
    candidates.insert(0, f"{module}.{target}")
    if cls:
      candidates.insert(0, f"{module}.{cls}.{target}")
  documented = _documented_objects(env)
  for name in candidates:
    if not name.startswith("cfl_jax"):
      continue
    value = inventories.resolve(name)
    if value is inventories.MISSING:
      continue
    match = documented.get((id(value), name.rsplit(".", 1)[-1]))
    if match:
      return env.get_domain("py").resolve_xref(
          env, node["refdoc"], app.builder, "obj", match[0], node, contnode)
  return None


# Readable type hints (sphinx-autodoc-typehints' typehints_formatter).


def _aliases() -> list[tuple[Any, str]]:
  import jax
  import numpy.typing as npt

  return [(jax.typing.ArrayLike, ":py:data:`~jax.typing.ArrayLike`"),
          (npt.ArrayLike, ":py:data:`numpy.typing.ArrayLike`"),
          (npt.DTypeLike, ":py:data:`numpy.typing.DTypeLike`"),
          (jax.typing.DTypeLike, ":py:data:`~jax.typing.DTypeLike`")]


def _public_jax_name(annotation: Any) -> str | None:
  """``jax.Array`` for jaxlib's ``Array`` class, ``jax.sharding.Mesh`` for ``jax._src`` ..."""
  name = getattr(annotation, "__name__", None)
  module = getattr(annotation, "__module__", "") or ""
  if not name or not (module.startswith(("jax", "jaxlib"))):
    return None
  for public in ("jax", "jax.sharding", "jax.random", "jax.typing"):
    if getattr(inventories.resolve(public), name, None) is annotation:
      return f"{public}.{name}"
  return None


def format_annotation(annotation: Any, config=None) -> str | None:
  """Short forms of the long unions (``ArrayLike``) and jaxlib's private class paths."""
  from sphinx_autodoc_typehints import format_annotation as default_format

  if annotation is Ellipsis:  # tuple[int, ...]
    return "..."
  for alias, text in _aliases():
    if annotation is alias or annotation == alias:
      return text
  if typing.get_origin(annotation) in (typing.Union, types.UnionType):
    args = list(typing.get_args(annotation))
    for alias, text in _aliases():
      alias_args = typing.get_args(alias)
      if alias_args and all(a in args for a in alias_args) and config is not None:
        rest = [a for a in args if a not in alias_args]
        return " | ".join([text] + [format_annotation(a, config) or default_format(a, config)
                                    for a in rest])
    return None
  public = _public_jax_name(annotation)
  if public:
    role = "class" if inspect.isclass(annotation) else "obj"
    return f":py:{role}:`{public}`"
  return None


class AnnotationFormatter:
  """:func:`format_annotation` as a picklable config value (Sphinx caches the config)."""

  def __call__(self, annotation: Any, config=None) -> str | None:
    return format_annotation(annotation, config)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, AnnotationFormatter)

  def __hash__(self) -> int:
    return hash(AnnotationFormatter)


def setup(app: Sphinx) -> dict[str, Any]:
  app.add_role("cfl-config-key", _key_role)
  app.add_directive("cfl-config-reference", ConfigReference)
  app.add_directive("module-summary", ModuleSummary)
  app.connect("autodoc-process-docstring", _process_docstring)
  app.connect("autodoc-skip-member", _skip_foreign_members)
  app.connect("autodoc-process-signature", _process_signature, priority=400)  # before typehints'
  app.connect("doctree-read", _hide_long_values)
  app.connect("missing-reference", _resolve_alias)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
