"""MNIST-1D (Greydanus & Kobak): 1-D digit signals generated on the machine, in five profiles.

The ``mnist1d`` package builds the data procedurally from ten digit templates (padding, shear,
translation, correlated and i.i.d. noise), so nothing is downloaded: this module only calls
``mnist1d.data.make_dataset`` with the package's default arguments (``get_dataset_args()``),
changing at most the seed and the number of samples. Two generations are used:

* the **standard** set, seed 42 as published: its 4,000 training and 1,000 test signals. The test
  set of every profile is these 1,000 signals.
* a **pool** of ``POOL_PER_CLASS`` signals per class from the same generator arguments with seed
  ``POOL_SEED``: the training sets of the other profiles keep its first ``n_c`` signals of
  class ``c``. (The generator standardises each generation by its own mean and standard
  deviation, so the pool's scale differs from the standard set's by sampling noise only.)

Profiles (``n_c`` per class, class 0 first):

==================== =========================================================================
``'standard'``       the published 4,000 training signals (394 to 411 per class)
``'balanced'``       ``max_count`` each (default 400: 4,000 signals)
``'linear_580_220'`` 580, 540, ..., 220: the paper's 4K CIFAR-10 sampler 6_2
``'linear_490_310'`` 490, 470, ..., 310: the paper's 4K CIFAR-10 sampler 5_3 (as intended)
``'long_tail'``      the CIFAR-LT (LDAM) profile from ``max_count`` with ``imbalance_ratio``
==================== =========================================================================

Signals are ``float32 [40, 1]`` (``image_shape == (40, 1)``: length, channels), as the package
makes them (zero mean and unit variance over the generation); there is no augmentation.

Both generations are checked against :data:`FINGERPRINTS`, the sha256 of the arrays the recorded
MNIST-1D study (``experiments/results/mnist1d``) trained on: a machine or package version that
generates other signals stops with an error instead of silently training on other data.

References:
  Greydanus & Kobak, Scaling Down Deep Learning with MNIST-1D, ICML 2024
  (https://arxiv.org/abs/2011.14439); https://github.com/greydanus/mnist1d.
"""

import contextlib
import functools
import hashlib
from importlib import metadata
import random

import numpy as np

from cfl_jax.data import base
from cfl_jax.data import long_tail

NUM_CLASSES = 10
SIGNAL_LENGTH = 40
STANDARD_SEED = 42  # the package's defaults: the published data set
STANDARD_NUM_SAMPLES = 5000
POOL_SEED = 0
POOL_PER_CLASS = 600
DEFAULT_MAX_COUNT = 400
# The paper's two 4K CIFAR-10 imbalance profiles (docs/method.md §5): head and tail class counts.
LINEAR_PROFILES = {"linear_580_220": (580, 220), "linear_490_310": (490, 310)}
PROFILES = ("standard", "balanced", *LINEAR_PROFILES, "long_tail")
# sha256 of (train_signals, train_labels, test_signals, test_labels) bytes, as generate() returns
# them, per (seed, num_samples): the standard set and the pool (mnist1d 0.0.2.post1).
FINGERPRINTS = {
    (STANDARD_SEED, STANDARD_NUM_SAMPLES):
        "b09ad3e22c854bc5a1948b85c373aab653ceb38c9170f5ed05b7d054e4160db9",
    (POOL_SEED, POOL_PER_CLASS * NUM_CLASSES):
        "b18b31231650314b2358bc5dcfab108552fb1d5de7144aace6eda777f9d00ca5",
}


@contextlib.contextmanager
def _global_rng_kept():
  """Restores numpy's and Python's global random states (``make_dataset`` reseeds both)."""
  numpy_state, python_state = np.random.get_state(), random.getstate()
  try:
    yield
  finally:
    np.random.set_state(numpy_state)
    random.setstate(python_state)


@functools.cache
def generate(seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """One generation of the ``mnist1d`` package with its default arguments but these two.

  Cached per process (a generation takes about a second per 5,000 signals). The caller's global
  random states are left as they were. A generation listed in :data:`FINGERPRINTS` must match
  its fingerprint.

  Args:
    seed: the generator's seed (42 gives the published data set).
    num_samples: signals generated, ``num_samples // 10`` per class, split 80 / 20 in the
      package's shuffled order.

  Returns:
    ``(train_signals, train_labels, test_signals, test_labels)``: float32 ``[N, 40, 1]`` and
    int64 ``[N]``, read-only.

  Raises:
    RuntimeError: if the arrays' sha256 differs from the one in :data:`FINGERPRINTS`.

  Examples:
    >>> x, y, x_test, y_test = generate(STANDARD_SEED, STANDARD_NUM_SAMPLES)
    >>> x.shape, x_test.shape, np.bincount(y).tolist()[:3]
    ((4000, 40, 1), (1000, 40, 1), [398, 396, 411])
  """
  from mnist1d import data  # pylint: disable=g-import-not-at-top

  args = data.get_dataset_args()
  args.seed, args.num_samples = seed, num_samples
  with _global_rng_kept():
    generated = data.make_dataset(args)
  arrays = (generated["x"].astype(np.float32)[..., None], generated["y"].astype(np.int64),
            generated["x_test"].astype(np.float32)[..., None],
            generated["y_test"].astype(np.int64))
  for array in arrays:
    array.flags.writeable = False
  _check_fingerprint(seed, num_samples, arrays)
  return arrays


def fingerprint(arrays: tuple[np.ndarray, ...]) -> str:
  """sha256 (hex) of the arrays' bytes in order.

  Examples:
    >>> fingerprint((np.zeros(2, np.float32),))[:12]
    'af5570f5a181'
  """
  digest = hashlib.sha256()
  for array in arrays:
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def _check_fingerprint(seed: int, num_samples: int, arrays: tuple[np.ndarray, ...]) -> None:
  expected = FINGERPRINTS.get((seed, num_samples))
  got = fingerprint(arrays)
  if expected is not None and got != expected:
    versions = ", ".join(f"{name} {metadata.version(name)}"
                         for name in ("mnist1d", "numpy", "scipy"))
    raise RuntimeError(
        f"MNIST-1D generated with seed={seed}, num_samples={num_samples} has sha256 {got}, not "
        f"the recorded {expected}: this machine's packages ({versions}) generate other signals "
        "than those the recorded study trained on, so its runs would not reproduce. Install the "
        "mnist1d version named in FINGERPRINTS' comment (cfl_jax/data/mnist1d.py).")


def _pool() -> tuple[np.ndarray, np.ndarray]:
  """The training pool: all ``POOL_PER_CLASS * 10`` signals of seed ``POOL_SEED``, in order."""
  x, y, x_test, y_test = generate(POOL_SEED, POOL_PER_CLASS * NUM_CLASSES)
  return np.concatenate([x, x_test]), np.concatenate([y, y_test])


def profile_counts(profile: str, max_count: int | None = None,
                   imbalance_ratio: float | None = None) -> np.ndarray | None:
  """Per-class training counts of a pool profile (see the module docstring).

  Args:
    profile: one of ``PROFILES``.
    max_count: head-class count for ``'balanced'`` and ``'long_tail'`` (default 400).
    imbalance_ratio: ``n_max / n_min`` for ``'long_tail'``; unset (or 1) otherwise.

  Returns:
    ``[10]`` int64 counts, class 0 first; None for ``'standard'`` (the published split).

  Raises:
    ValueError: for an unknown profile, an argument the profile does not take, a missing
      ``imbalance_ratio`` or a ``max_count`` outside ``[1, POOL_PER_CLASS]``.

  Examples:
    >>> profile_counts('long_tail', imbalance_ratio=100).tolist()
    [400, 239, 143, 86, 51, 30, 18, 11, 6, 4]
  """
  if profile not in PROFILES:
    raise ValueError(f"Unknown mnist1d profile {profile!r}; known: {', '.join(PROFILES)}.")
  takes_ratio = profile == "long_tail"
  takes_max_count = profile in ("balanced", "long_tail")
  # A ratio of 1 means balanced; it lets a command line switch a config whose imbalance_ratio is
  # set (a flag cannot unset it) to a profile without one.
  if not takes_ratio and imbalance_ratio not in (None, 1, 1.0):
    raise ValueError(f"imbalance_ratio applies to the 'long_tail' mnist1d profile only, not "
                     f"{profile!r}; got {imbalance_ratio}.")
  if not takes_max_count and max_count is not None:
    raise ValueError(f"max_count applies to the 'balanced' and 'long_tail' mnist1d profiles "
                     f"only, not {profile!r}; got {max_count}.")
  if profile == "standard":
    return None
  if profile in LINEAR_PROFILES:
    head, tail = LINEAR_PROFILES[profile]
    return long_tail.linear_counts(NUM_CLASSES, head, head / tail)
  max_count = DEFAULT_MAX_COUNT if max_count is None else max_count
  if int(max_count) != max_count or not 1 <= max_count <= POOL_PER_CLASS:
    raise ValueError(f"mnist1d max_count must be an integer in [1, {POOL_PER_CLASS}] (the pool's "
                     f"signals per class), got {max_count}.")
  if profile == "balanced":
    return np.full(NUM_CLASSES, max_count, dtype=np.int64)
  if imbalance_ratio is None:
    raise ValueError("The 'long_tail' mnist1d profile needs imbalance_ratio (n_max / n_min).")
  return long_tail.long_tail_counts(NUM_CLASSES, int(max_count), imbalance_ratio)


def mnist1d(*, profile: str = "standard", max_count: int | None = None,
            imbalance_ratio: float | None = None) -> base.ArrayDataset:
  """MNIST-1D with the given training profile and the standard 1,000 test signals.

  Args:
    profile: one of ``PROFILES`` (see the module docstring).
    max_count: signals of the head class for ``'balanced'`` and ``'long_tail'`` (default 400).
    imbalance_ratio: ``n_max / n_min`` for ``'long_tail'`` (10, 50 or 100 in the papers); unset
      (or 1) for the other profiles.

  Returns:
    An :class:`~cfl_jax.data.base.ArrayDataset` of float32 signals, ``image_shape == (40, 1)``.

  Raises:
    ValueError: see :func:`profile_counts`.

  Examples:
    >>> data = mnist1d(profile='linear_580_220')
    >>> data.train_class_counts.tolist()
    [580, 540, 500, 460, 420, 380, 340, 300, 260, 220]
    >>> data.image_shape, data.num_eval_examples
    ((40, 1), 1000)
  """
  counts = profile_counts(profile, max_count, imbalance_ratio)
  train_signals, train_labels, test_signals, test_labels = generate(STANDARD_SEED,
                                                                   STANDARD_NUM_SAMPLES)
  if counts is not None:
    pool_signals, pool_labels = _pool()
    keep = long_tail.first_per_class(pool_labels, counts)
    train_signals, train_labels = pool_signals[keep], pool_labels[keep]
  return base.ArrayDataset(
      name="mnist1d", num_classes=NUM_CLASSES, train_images=train_signals,
      train_labels=train_labels, eval_images=test_signals, eval_labels=test_labels,
      normalize=functools.partial(np.asarray, dtype=np.float32))
