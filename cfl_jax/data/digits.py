"""scikit-learn's 8x8 handwritten digits: the offline default dataset, in three training profiles.

The 1,797 images are split once into a balanced test set of ``TEST_PER_CLASS`` images per class
(drawn with a fixed seed, independent of the run seed, never used for training) and a training
pool of 124 to 133 images per class. A profile then keeps the first ``n_c`` pool images of class
``c``:

* ``'balanced'``: ``n_c = max_count`` for every class.
* ``'linear'``: linear fall from ``max_count`` to ``max_count / imbalance_ratio`` (the paper's
  4K-style imbalance; ratios 2.6 and 1.6 mimic samplers 6_2 and 5_3).
* ``'long_tail'``: the LDAM exponential profile with ``imbalance_ratio = n_max / n_min``.

Images are ``float32 [8, 8, 1]`` in ``[0, 1]``; there is no augmentation.
"""

import functools

import numpy as np

from cfl_jax.data import base
from cfl_jax.data import long_tail

NUM_CLASSES = 10
TEST_PER_CLASS = 50
_TEST_SPLIT_SEED = 20220406
PROFILES = ("balanced", "linear", "long_tail")


@functools.cache
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(pool images, pool labels, test images, test labels), images uint8 [N, 8, 8, 1] in 0..16."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  digits = load_digits()
  images = digits.images.astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  rng = np.random.default_rng(_TEST_SPLIT_SEED)
  test = np.zeros(len(labels), dtype=bool)
  for label in range(NUM_CLASSES):
    test[rng.choice(np.flatnonzero(labels == label), TEST_PER_CLASS, replace=False)] = True
  return images[~test], labels[~test], images[test], labels[test]


def _normalize(images: np.ndarray) -> np.ndarray:
  return images.astype(np.float32) / 16.0


def max_balanced_count() -> int:
  """The largest per-class count every class of the training pool can supply (124)."""
  return int(np.bincount(_split()[1]).min())


def profile_counts(profile: str, max_count: int | None = None,
                   imbalance_ratio: float | None = None) -> np.ndarray:
  """Per-class training counts ``[10]`` of a digits profile (see the module docstring).

  Raises:
    ValueError: for an unknown profile, a missing or superfluous ``imbalance_ratio`` or a
      ``max_count`` the pool cannot supply.
  """
  limit = max_balanced_count()
  max_count = limit if max_count is None else max_count
  if not 1 <= max_count <= limit:
    raise ValueError(f"digits max_count must be in [1, {limit}], got {max_count}.")
  if profile not in PROFILES:
    raise ValueError(f"Unknown digits profile {profile!r}; known: {', '.join(PROFILES)}.")
  if profile == "balanced":
    # A ratio of 1 is balanced by definition; it lets a command line switch a config whose
    # imbalance_ratio is set (a flag cannot unset it) to the balanced profile.
    if imbalance_ratio not in (None, 1, 1.0):
      raise ValueError(
          "imbalance_ratio applies to the 'linear' and 'long_tail' profiles only; the "
          f"'balanced' profile takes none (or 1), got {imbalance_ratio}.")
    return np.full(NUM_CLASSES, max_count, dtype=np.int64)
  if imbalance_ratio is None:
    raise ValueError(f"The {profile!r} digits profile needs imbalance_ratio (n_max / n_min).")
  if profile == "linear":
    return long_tail.linear_counts(NUM_CLASSES, max_count, imbalance_ratio)
  return long_tail.long_tail_counts(NUM_CLASSES, max_count, imbalance_ratio)


def digits(*, profile: str = "balanced", max_count: int | None = None,
           imbalance_ratio: float | None = None) -> base.ArrayDataset:
  """The digits dataset with the given training profile.

  Args:
    profile: ``'balanced'``, ``'linear'`` or ``'long_tail'``.
    max_count: images of the head class, default (and at most) :func:`max_balanced_count`.
    imbalance_ratio: ``n_max / n_min`` for ``'linear'`` and ``'long_tail'``; unset (or 1)
      for ``'balanced'``.

  Returns:
    An :class:`~cfl_jax.data.base.ArrayDataset` with 500 balanced test images.

  Examples:
    >>> data = digits(profile='long_tail', imbalance_ratio=10.0)
    >>> data.train_class_counts.tolist()
    [124, 96, 74, 57, 44, 34, 26, 20, 16, 12]
    >>> data.image_shape, data.num_eval_examples
    ((8, 8, 1), 500)
  """
  counts = profile_counts(profile, max_count, imbalance_ratio)
  pool_images, pool_labels, test_images, test_labels = _split()
  keep = long_tail.first_per_class(pool_labels, counts)
  return base.ArrayDataset(
      name="digits", num_classes=NUM_CLASSES, train_images=pool_images[keep],
      train_labels=pool_labels[keep], eval_images=test_images, eval_labels=test_labels,
      normalize=_normalize)
