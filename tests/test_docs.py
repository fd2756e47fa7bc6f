"""The documentation's generated parts: the configuration reference covers every key of the
schema with a meaning, and the method-page citations in docstrings point at real sections."""

import os
import re
import sys

import pytest

from training_helpers import REPO

sys.path.insert(0, os.path.join(REPO, "docs", "_ext"))

import config_reference  # noqa: E402  (docs/_ext)

from cfl_jax.training import config as config_module  # noqa: E402


def _leaf_keys(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaf_keys(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"


def test_every_config_key_has_a_default_and_a_meaning():
  keys = list(_leaf_keys(config_module.default_config().to_dict()))
  entries = {entry.key: entry for entry in config_reference.entries()}
  assert sorted(entries) == sorted(keys)
  unexplained = [key for key, entry in entries.items() if not entry.meaning.strip()]
  assert not unexplained, (
      f"config keys without a comment in cfl_jax/training/config.py: {unexplained}; write one "
      "beside the key (the configuration reference is generated from these comments)")


def test_the_reference_lists_every_key_with_its_default_and_meaning():
  lines = config_reference.reference_rst(lambda text: text)
  text = "\n".join(lines)
  for entry in config_reference.entries():
    assert f":code:`{entry.key}`" in text
    assert f"``{entry.default!r}``" in text
    assert entry.meaning in text
  assert "``optimizer``" in text and "Top-level keys" in text


def test_meanings_come_from_the_comments_beside_each_key():
  entries = {entry.key: entry for entry in config_reference.entries()}
  assert entries["seed"].meaning == "fixes init, data order, augmentation and dropout"
  assert entries["optimizer.head_learning_rate"].meaning.startswith("classifier ('head' module)")
  assert entries["cyclical.grad_clip.max"].source == "cyclical.grad_clip"
  assert entries["model.dtype"].source == "model"
  assert entries["optimizer.learning_rate"].default == 0.1


def test_method_citations_in_the_code_name_sections_the_docs_link():
  cfl_docs = pytest.importorskip("cfl_docs", reason="needs the docs extra (sphinx)")
  with open(os.path.join(REPO, "docs", "method.md"), encoding="utf-8") as f:
    method = f.read()
  for number, label in cfl_docs.METHOD_SECTIONS.items():
    assert re.search(rf"^\({label}\)=\n## {number}\. ", method, re.M), label
  cited = set()
  for root, _, names in os.walk(os.path.join(REPO, "cfl_jax")):
    for name in names:
      if name.endswith(".py"):
        with open(os.path.join(root, name), encoding="utf-8") as f:
          cited |= set(re.findall(r"docs/method\.md §(\d)", f.read()))
  assert cited and cited <= set(cfl_docs.METHOD_SECTIONS)
  linked = cfl_docs.method_links("as in docs/method.md §1, §3 and docs/method.md §6.")
  assert linked == ("as in :doc:`method </method>` :ref:`§1 <method-losses>`, "
                    ":ref:`§3 <method-reference-code>` and :doc:`method </method>` "
                    ":ref:`§6 <method-pitfalls>`.")
