"""The configuration reference, read from ``cfl_jax/training/config.py`` so that it cannot drift.

The schema is :func:`cfl_jax.training.config.default_config`: its keys and defaults come from
calling it, and each key's meaning from the comments written beside it in its source (the comment
block directly above a key and the comment that ends its line). A key without a comment of its own
takes the meaning of the nearest enclosing key that has one (``model.dtype`` is explained by the
comment above ``config.model``). No Sphinx here: the docs extension and the tests both use it.
"""

import ast
from collections.abc import Callable, Iterator
import dataclasses
import inspect
import io
import tokenize
from typing import Any

from cfl_jax.training import config as config_module


@dataclasses.dataclass(frozen=True)
class Entry:
  """One leaf of the schema.

  Attributes:
    key: the dotted key, e.g. ``optimizer.learning_rate``.
    default: its value in ``default_config()``.
    meaning: the comment that explains it (its own or its nearest documented parent's).
    source: the dotted key whose comment ``meaning`` is, ``key`` itself when it has its own.
  """
  key: str
  default: Any
  meaning: str
  source: str


def _comments(source: str) -> dict[int, tuple[str, bool]]:
  """Line number -> (comment text, whether the line holds nothing but the comment)."""
  comments = {}
  lines = source.splitlines()
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      line = token.start[0]
      text = token.string.lstrip("#").strip()
      comments[line] = (text, not lines[line - 1][:token.start[1]].strip())
  return comments


def _dict_node(value: ast.expr) -> ast.Dict | None:
  """The dict literal of ``{...}`` or ``ConfigDict({...})``, else None."""
  if isinstance(value, ast.Call) and value.args:
    value = value.args[0]
  return value if isinstance(value, ast.Dict) else None


def _keyed_nodes(function: ast.FunctionDef) -> Iterator[tuple[str, ast.AST, ast.expr]]:
  """(dotted key, the node that starts it, its value) for every key the function assigns."""

  def walk(prefix: str, node: ast.Dict) -> Iterator[tuple[str, ast.AST, ast.expr]]:
    for key, value in zip(node.keys, node.values):
      if isinstance(key, ast.Constant) and isinstance(key.value, str):
        yield f"{prefix}{key.value}", key, value
        inner = _dict_node(value)
        if inner is not None:
          yield from walk(f"{prefix}{key.value}.", inner)

  for statement in function.body:
    if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Attribute)):
      name = statement.targets[0].attr
      yield name, statement, statement.value
      inner = _dict_node(statement.value)
      if inner is not None:
        yield from walk(f"{name}.", inner)


def own_meanings() -> dict[str, str]:
  """Dotted key -> the comment written for it in ``default_config``'s source ('' if none).

  A block of comment-only lines belongs to the outermost key that starts on the line below it; a
  comment that ends a line belongs to the outermost key whose value ends on that line (the one at
  the end of ``"grad_clip": {"enabled": ..., "min": ..., "max": ...},`` is ``grad_clip``'s).
  """
  source = inspect.getsource(config_module.default_config)
  function = ast.parse(source).body[0]
  assert isinstance(function, ast.FunctionDef)
  comments = _comments(source)
  starting: dict[int, str] = {}
  ending: dict[int, str] = {}
  order = []
  for key, node, value in _keyed_nodes(function):
    order.append(key)
    starting.setdefault(node.lineno, key)
    ending.setdefault(value.end_lineno or node.lineno, key)
  parts: dict[str, list[str]] = {key: [] for key in order}
  for line in sorted(comments):
    text, alone = comments[line]
    if not alone:
      if line in ending:
        parts[ending[line]].append(text)
      continue
    below = line + 1
    while below in comments and comments[below][1]:
      below += 1
    if below in starting:
      parts[starting[below]].append(text)
  # Lines in order: a block above a key comes before the comment ending the key's line.
  return {key: " ".join(parts[key]).strip() for key in order}


def _leaves(tree: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def entries() -> list[Entry]:
  """Every leaf key of the schema with its default and meaning, in the order of the source."""
  meanings = own_meanings()
  order = {key: i for i, key in enumerate(meanings)}
  result = []
  for key, default in _leaves(config_module.default_config().to_dict()):
    source = key
    while not meanings.get(source) and "." in source:
      source = source.rsplit(".", 1)[0]
    result.append(Entry(key, default, meanings.get(source, ""), source))
  return sorted(result, key=lambda entry: order.get(entry.key, len(order)))

def reference_rst(meaning_rst: Callable[[str], str], key_role: str = "code") -> list[str]:
  """The reference as reST: a section and a table (key, default, meaning) per group of keys.

  Args:
    meaning_rst: turns a comment into reST (escaping, links).
    key_role: the role each key is written with (the docs make it a link target).

  Returns:
    The lines: first the top-level keys, then one section per group (``dataset``, ``model``,
    ...) in schema order. Consecutive keys that share an inherited meaning share a row.
  """
  own = own_meanings()
  groups: dict[str, list[Entry]] = {"": []}
  for entry in entries():
    groups.setdefault(entry.key.split(".")[0] if "." in entry.key else "", []).append(entry)
  lines = []
  for group, members in groups.items():
    title = "Top-level keys" if not group else f"``{group}``"
    lines += [title, "-" * len(title), ""]
    if group and own.get(group) and any(e.source != group for e in members):
      lines += [meaning_rst(own[group]), ""]
    lines += [".. list-table::", "   :header-rows: 1", "   :widths: 25 15 60", "",
              "   * - Key", "     - Default", "     - Meaning"]
    rows: list[list[Entry]] = []
    for entry in members:
      if rows and rows[-1][0].source == entry.source and entry.source != entry.key:
        rows[-1].append(entry)
      else:
        rows.append([entry])
    for row in rows:
      keys = [f":{key_role}:`{e.key}`" for e in row]
      defaults = [f"``{e.default!r}``" for e in row]
      if len(row) == 1:
        lines += [f"   * - {keys[0]}", f"     - {defaults[0]}"]
      else:  # line blocks: one key (and default) per line
        lines += [f"   * - | {keys[0]}"] + [f"       | {k}" for k in keys[1:]]
        lines += [f"     - | {defaults[0]}"] + [f"       | {d}" for d in defaults[1:]]
      lines += [f"     - {meaning_rst(row[0].meaning)}"]
    lines.append("")
  return lines
