"""Image-classification datasets picked by name: ``get_dataset({'name': ..., **kwargs})``.

Every dataset implements :class:`ImageClassificationData` (see ``cfl_jax/data/base.py``): host-local
numpy batches, deterministic in ``(seed, step)``, sharded over ``jax.process_count()`` processes.
Only the requested dataset's module is imported, so digits and mnist1d never import
TensorFlow.
"""

from collections.abc import Callable, Mapping
import importlib
import inspect
from typing import Any

from cfl_jax import _extras
from cfl_jax.data.base import ImageClassificationData
from cfl_jax.data.cifar_subsets import SUBSET_NAMES
from cfl_jax.data.cifar_subsets import subset_ids
from cfl_jax.data.long_tail import linear_counts
from cfl_jax.data.long_tail import long_tail_counts

# name -> (module, factory); the factory takes the dataset's keyword arguments.
_DATASETS: dict[str, tuple[str, str]] = {
    "digits": ("cfl_jax.data.digits", "digits"),
    "mnist1d": ("cfl_jax.data.mnist1d", "mnist1d"),
    "cifar10": ("cfl_jax.data.cifar", "cifar10"),
    "cifar100": ("cfl_jax.data.cifar", "cifar100"),
    "imagenet2012": ("cfl_jax.data.imagenet", "imagenet2012"),
    "imagenet_lt": ("cfl_jax.data.imagenet", "imagenet_lt"),
    "places_lt": ("cfl_jax.data.imagenet", "places_lt"),
}

#: The names :func:`get_dataset` accepts.
DATASET_NAMES = tuple(_DATASETS)


def _factory(name: str) -> Callable[..., ImageClassificationData]:
  if name not in _DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}.")
  module, function = _DATASETS[name]
  try:
    return getattr(importlib.import_module(module), function)
  except ModuleNotFoundError as error:
    raise _needs_extra(name, error) from error


def _needs_extra(name: str, error: ModuleNotFoundError) -> ModuleNotFoundError:
  """``error`` restated with the install command that brings the missing package."""
  return ModuleNotFoundError(
      f"The {name!r} dataset needs the package {error.name!r}, which the experiments extra "
      f"installs: {_extras.install_command('experiments')}.", name=error.name)


def dataset_arguments(name: str) -> tuple[str, ...]:
  """The keyword arguments the dataset ``name`` accepts besides ``name``.

  Examples:
    >>> dataset_arguments('digits')
    ('profile', 'max_count', 'imbalance_ratio')
  """
  return tuple(inspect.signature(_factory(name)).parameters)


def get_dataset(config: Mapping[str, Any]) -> ImageClassificationData:
  """Builds the dataset named by ``config['name']`` with the remaining entries as keywords.

  Args:
    config: a dict or ``ml_collections.ConfigDict`` with ``name`` (one of ``DATASET_NAMES``) and
      that dataset's keyword arguments.

  Returns:
    The dataset.

  Raises:
    ValueError: for a missing or unknown name, an unknown keyword or a bad value.

  Examples:
    >>> data = get_dataset({'name': 'digits', 'profile': 'long_tail', 'imbalance_ratio': 10.0})
    >>> data.num_classes, int(data.train_class_counts[-1])
    (10, 12)
  """
  kwargs = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  if "name" not in kwargs:
    raise ValueError(
        f"The dataset config needs a 'name'; known datasets: {', '.join(DATASET_NAMES)}.")
  name = kwargs.pop("name")
  known = dataset_arguments(name)
  unknown = sorted(set(kwargs) - set(known))
  if unknown:
    raise ValueError(
        f"Unknown keyword(s) {', '.join(unknown)} for dataset {name!r}; it accepts: "
        f"{', '.join(known) or 'none'}.")
  factory = _factory(name)
  try:
    return factory(**kwargs)
  except ModuleNotFoundError as error:  # imported when the data is first read
    raise _needs_extra(name, error) from error


__all__ = [
    "DATASET_NAMES",
    "ImageClassificationData",
    "SUBSET_NAMES",
    "dataset_arguments",
    "get_dataset",
    "linear_counts",
    "long_tail_counts",
    "subset_ids",
]
