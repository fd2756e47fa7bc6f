"""The paper's 4,000-image CIFAR training subsets, as indices into the original training order.

An index ``i`` is the ``i``-th image of the original training set (``data_batch_1`` .. ``5`` order),
which TFDS exposes as the ``id`` feature ``'train_%05d' % i``. Each list keeps the first ``n_c``
images of each class ``c`` (docs/method.md §5):

=========================== ======== =====================================================
name                        dataset  per-class counts
=========================== ======== =====================================================
``c10_sampler6_2``          cifar10  580, 540, ..., 220 (linear, step -40)
``c10_sampler5_3``          cifar10  the file as the reference loader read it: near balanced
``c10_sampler5_3_intended`` cifar10  the file minus 1 (it was written 1-based): 490, ..., 310
``c100_sampler6_2``         cifar100 about 60 -> 20 (linear)
``c100_sampler5_3``         cifar100 about 50 -> 30 (linear)
``first_4000``              both     the first 4,000 training images ("balanced 4K")
=========================== ======== =====================================================
"""

import importlib.resources

import numpy as np

# name -> (CSV file in cfl_jax/data/subsets/ or None, offset added to its indices, TFDS datasets).
_SUBSETS: dict[str, tuple[str | None, int, tuple[str, ...]]] = {
    "c10_sampler6_2": ("c10_sampler6_2", 0, ("cifar10",)),
    "c10_sampler5_3": ("c10_sampler5_3", 0, ("cifar10",)),
    "c10_sampler5_3_intended": ("c10_sampler5_3", -1, ("cifar10",)),
    "c100_sampler6_2": ("c100_sampler6_2", 0, ("cifar100",)),
    "c100_sampler5_3": ("c100_sampler5_3", 0, ("cifar100",)),
    "first_4000": (None, 0, ("cifar10", "cifar100")),
}

#: The names :func:`subset_ids` accepts.
SUBSET_NAMES = tuple(_SUBSETS)
SUBSET_SIZE = 4000


def _check_name(name: str) -> None:
  if name not in _SUBSETS:
    raise ValueError(f"Unknown CIFAR subset {name!r}; known subsets: {', '.join(SUBSET_NAMES)}.")


def subset_ids(name: str) -> np.ndarray:
  """Original CIFAR training indices of a 4,000-image subset.

  Args:
    name: one of ``SUBSET_NAMES`` (see the module docstring).

  Returns:
    Sorted, unique ``[4000]`` int64 indices in ``[0, 50000)``.

  Raises:
    ValueError: for an unknown name.

  Examples:
    >>> subset_ids('c10_sampler6_2')[:3].tolist()
    [0, 1, 2]
    >>> bool((subset_ids('c10_sampler5_3_intended') == subset_ids('c10_sampler5_3') - 1).all())
    True
  """
  _check_name(name)
  file, offset, _ = _SUBSETS[name]
  if file is None:
    return np.arange(SUBSET_SIZE, dtype=np.int64)
  text = importlib.resources.files("cfl_jax.data").joinpath("subsets", f"{file}.csv").read_text()
  return np.sort(np.asarray(text.split(","), dtype=np.int64)) + offset


def check_subset_dataset(name: str, dataset: str) -> None:
  """Raises ValueError unless subset ``name`` indexes TFDS dataset ``dataset``."""
  _check_name(name)
  datasets = _SUBSETS[name][2]
  if dataset not in datasets:
    raise ValueError(f"CIFAR subset {name!r} indexes {' / '.join(datasets)}, not {dataset!r}.")
