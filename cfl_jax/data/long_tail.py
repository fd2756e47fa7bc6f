"""Per-class training-set sizes of imbalanced benchmarks, head class first.

Two families, both parametrised by the imbalance ratio ``rho = n_max / n_min``:

* :func:`long_tail_counts`: the LDAM protocol of CIFAR-10/100-LT (exponential or step profile).
* :func:`linear_counts`: the linear profile of the paper's 4,000-sample CIFAR subsets (e.g.
  580, 540, ..., 220 per class is ``linear_counts(10, 580, 580 / 220)``).

Datasets built from these counts keep the first ``n_c`` training images of class ``c`` in the
stored order (:func:`first_per_class`).
"""

import numpy as np

LONG_TAIL_PROFILES = ("exponential", "step")


def _check(num_classes: int, max_count: int, imbalance_ratio: float) -> None:
  if num_classes < 2:
    raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
  if max_count < 1:
    raise ValueError(f"max_count must be positive, got {max_count}.")
  if not imbalance_ratio >= 1:
    raise ValueError(f"imbalance_ratio (n_max / n_min) must be >= 1, got {imbalance_ratio}.")


def long_tail_counts(num_classes: int, max_count: int, imbalance_ratio: float,
                     profile: str = "exponential") -> np.ndarray:
  r"""Class sizes of the LDAM long-tailed benchmarks (CIFAR-10/100-LT).

  .. math::
    n_i = \lfloor n_{max} \, \rho^{-i / (C - 1)} \rfloor \quad \text{(exponential)}

  The step profile gives the first ``C // 2`` classes ``n_max`` images and the rest
  ``floor(n_max / rho)``.

  Args:
    num_classes: ``C``, at least 2.
    max_count: ``n_max``, the size of the head class (5,000 for CIFAR-10, 500 for CIFAR-100).
    imbalance_ratio: ``rho = n_max / n_min`` (10, 50 or 100 in the papers).
    profile: ``'exponential'`` or ``'step'``.

  Returns:
    ``[C]`` int64 counts, class 0 (head) first.

  Examples:
    >>> long_tail_counts(10, 5000, 100).tolist()
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    >>> int(long_tail_counts(100, 500, 100).sum())
    10847

  References:
    Cao et al., Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss, NeurIPS
    2019 (https://arxiv.org/abs/1906.07413), ``IMBALANCECIFAR10.get_img_num_per_cls``.
  """
  _check(num_classes, max_count, imbalance_ratio)
  factor = 1.0 / imbalance_ratio
  if profile == "exponential":
    counts = [int(max_count * factor**(i / (num_classes - 1.0))) for i in range(num_classes)]
  elif profile == "step":
    head = num_classes // 2
    counts = [max_count] * head + [int(max_count * factor)] * (num_classes - head)
  else:
    raise ValueError(
        f"Unknown long-tail profile {profile!r}; known: {', '.join(LONG_TAIL_PROFILES)}.")
  return np.asarray(counts, dtype=np.int64)


def linear_counts(num_classes: int, max_count: int, imbalance_ratio: float) -> np.ndarray:
  """Class sizes falling linearly from ``max_count`` to ``max_count / imbalance_ratio``.

  Each count is rounded to the nearest integer.

  Args:
    num_classes: ``C``, at least 2.
    max_count: size of the head class.
    imbalance_ratio: ``n_max / n_min`` (about 2.6 and 1.6 for the paper's samplers 6_2 and 5_3).

  Returns:
    ``[C]`` int64 counts, class 0 (head) first.

  Examples:
    >>> linear_counts(10, 580, 580 / 220).tolist()
    [580, 540, 500, 460, 420, 380, 340, 300, 260, 220]
  """
  _check(num_classes, max_count, imbalance_ratio)
  counts = np.linspace(max_count, max_count / imbalance_ratio, num_classes)
  return np.round(counts).astype(np.int64)


def first_per_class(labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """Positions of the first ``counts[c]`` examples of each class ``c`` in ``labels`` order.

  Args:
    labels: ``[N]`` integer labels in stored order.
    counts: ``[C]`` wanted examples per class.

  Returns:
    Sorted ``[sum(counts)]`` int64 positions into ``labels``.

  Raises:
    ValueError: if some class has fewer than ``counts[c]`` examples.

  Examples:
    >>> first_per_class(np.array([0, 1, 0, 1, 0]), np.array([2, 1])).tolist()
    [0, 1, 2]
  """
  labels = np.asarray(labels)
  keep = np.zeros(len(labels), dtype=bool)
  for label, count in enumerate(counts):
    positions = np.flatnonzero(labels == label)
    if len(positions) < count:
      raise ValueError(
          f"Class {label} has {len(positions)} examples, fewer than the {count} requested.")
    keep[positions[:count]] = True
  return np.flatnonzero(keep)
