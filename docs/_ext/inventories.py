"""The names of jax, optax and flax that our docs cite, with their pages in those projects' docs.

The build is offline, so intersphinx reads these from ``docs/_inventories/<project>.inv`` (the
format of a Sphinx site's ``objects.inv``), written from the table below with sphobjinv::

  python docs/_ext/inventories.py          # rewrites docs/_inventories/*.inv

A name cited in a docstring or page that is missing here fails the nitpicky build (conf.py
leaves jax, optax and flax out of ``nitpick_ignore``); tests/test_docs_site.py checks that the
files match this table and that every name imports. Private paths (``optax._src.base....``) are
mapped to these public names by docs/_ext/cfl_docs.py.
"""

import importlib
import pathlib
import sys
from typing import Any

FOLDER = pathlib.Path(__file__).resolve().parents[1] / "_inventories"

MISSING = object()  # what :func:`resolve` answers for a name that does not import

# project -> (base URL of its docs, {name: (role, page#anchor relative to the base)})
INVENTORIES = {
    "jax": ("https://docs.jax.dev/en/latest/", {
        "jax.Array": ("class", "_autosummary/jax.Array.html#jax.Array"),
        "jax.typing.ArrayLike": ("data", "_autosummary/jax.typing.ArrayLike.html"),
        "jax.typing.DTypeLike": ("data", "_autosummary/jax.typing.DTypeLike.html"),
        "jax.sharding.Mesh": ("class", "jax.sharding.html#jax.sharding.Mesh"),
        "jax.sharding.NamedSharding": ("class", "jax.sharding.html#jax.sharding.NamedSharding"),
        "jax.NamedSharding": ("class", "jax.sharding.html#jax.sharding.NamedSharding"),
    }),
    "optax": ("https://optax.readthedocs.io/en/latest/", {
        "optax.GradientTransformation": (
            "class", "api/transformations.html#optax.GradientTransformation"),
        "optax.softmax_cross_entropy": (
            "function", "api/losses.html#optax.losses.softmax_cross_entropy"),
        "optax.softmax_cross_entropy_with_integer_labels": (
            "function", "api/losses.html#optax.losses.softmax_cross_entropy_with_integer_labels"),
        "optax.sigmoid_focal_loss": ("function", "api/losses.html#optax.losses.sigmoid_focal_loss"),
        "optax.Schedule": ("class", "api/optimizer_schedules.html#optax.schedules.Schedule"),
        "optax.join_schedules": (
            "function", "api/optimizer_schedules.html#optax.schedules.join_schedules"),
        "optax.inject_hyperparams": (
            "function", "api/optimizer_schedules.html#optax.schedules.inject_hyperparams"),
        "optax.InjectStatefulHyperparamsState": (
            "class", "api/optimizer_schedules.html#optax.schedules.InjectStatefulHyperparamsState"),
    }),
    "flax": ("https://flax.readthedocs.io/en/latest/", {
        "flax.linen.Module": ("class", "api_reference/flax.linen/module.html#flax.linen.Module"),
        "flax.training.train_state.TrainState": (
            "class", "api_reference/flax.training.html#flax.training.train_state.TrainState"),
    }),
}


def resolve(name: str) -> Any:
  """The object a dotted ``name`` stands for (its longest importable module, then attributes),
  or :data:`MISSING`."""
  parts = name.split(".")
  for split in range(len(parts), 0, -1):
    try:
      value = importlib.import_module(".".join(parts[:split]))
    except ImportError:
      continue
    try:
      for attribute in parts[split:]:
        value = getattr(value, attribute)
    except AttributeError:
      return MISSING
    return value
  return MISSING


def path(project: str) -> pathlib.Path:
  return FOLDER / f"{project}.inv"


def write(folder: pathlib.Path = FOLDER) -> list[pathlib.Path]:
  """Writes ``<project>.inv`` for every project of :data:`INVENTORIES`; returns the paths."""
  import sphobjinv as soi

  folder.mkdir(parents=True, exist_ok=True)
  written = []
  for project, (_, names) in INVENTORIES.items():
    inventory = soi.Inventory()
    inventory.project, inventory.version = project, "latest"
    for name, (role, uri) in sorted(names.items()):
      inventory.objects.append(soi.DataObjStr(name=name, domain="py", role=role, priority="1",
                                              uri=uri, dispname="-"))
    target = folder / f"{project}.inv"
    soi.writebytes(target, soi.compress(inventory.data_file(contract=True)))
    written.append(target)
  return written


if __name__ == "__main__":
  for written in write(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER):
    print(written)
