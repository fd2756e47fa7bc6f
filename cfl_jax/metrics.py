"""Classification metrics: top-1, per-class, balanced and shot-group accuracy; calibration.

Evaluation runs in two halves. On device, :func:`class_counts` reduces a batch of logits to
per-class counts of correct predictions and of examples (additive, so batches, devices and hosts
are summed). On the host, :func:`summarize` turns the summed counts into accuracies, splitting the
classes into shot groups by their number of *training* examples (the OLTR protocol: many-shot
``>= 100``, few-shot ``<= 20``, medium-shot in between; the thresholds are arguments because small
data sets such as digits need lower ones).

Calibration follows the same pattern: :func:`calibration_counts` (device, additive) bins the
examples by top-1 confidence; :func:`expected_calibration_error` and :func:`reliability_bins`
(host) read the summed bins.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike


def class_counts(
    logits: jax.Array,
    labels: jax.Array,
    num_classes: int,
    where: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """Per-class counts of correct top-1 predictions and of examples.

  Args:
    logits: ``[batch, num_classes]`` scores.
    labels: ``[batch]`` integer class ids.
    num_classes: length of the returned count vectors.
    where: optional ``[batch]`` bool mask; ``False`` entries (padding) are not counted.

  Returns:
    ``{'correct': int32 [num_classes], 'total': int32 [num_classes]}``.

  Examples:
    >>> import jax.numpy as jnp
    >>> counts = class_counts(jnp.array([[2., 0.], [3., 1.]]), jnp.array([0, 1]), 2)
    >>> counts['correct'].tolist(), counts['total'].tolist()
    ([1, 0], [1, 1])
  """
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
  if where is not None:
    one_hot = one_hot * where[:, None].astype(jnp.int32)
  hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.int32)
  return {"correct": jnp.sum(one_hot * hit[:, None], axis=0), "total": jnp.sum(one_hot, axis=0)}


def shot_groups(
    train_class_counts: ArrayLike, *, many_shot_min: int = 100, few_shot_max: int = 20
) -> dict[str, np.ndarray]:
  """Boolean class masks ``{'many', 'medium', 'few'}`` from training-set class counts.

  Many-shot classes have ``>= many_shot_min`` training examples, few-shot ones ``<= few_shot_max``,
  medium-shot ones lie strictly between.
  """
  if few_shot_max >= many_shot_min:
    raise ValueError(
        f"few_shot_max ({few_shot_max}) must be below many_shot_min ({many_shot_min})."
    )
  counts = np.asarray(train_class_counts)
  many = counts >= many_shot_min
  few = counts <= few_shot_max
  return {"many": many, "medium": ~many & ~few, "few": few}


def _mean_or_none(values: np.ndarray) -> float | None:
  return float(np.mean(values)) if values.size else None


def summarize(
    correct: ArrayLike,
    total: ArrayLike,
    train_class_counts: ArrayLike,
    *,
    many_shot_min: int = 100,
    few_shot_max: int = 20,
) -> dict[str, float | list[float | None] | None]:
  """Accuracies from summed per-class counts (host side, JSON-ready).

  Classes without evaluation examples have per-class accuracy ``None`` and are left out of the
  balanced and shot-group means; a shot group with no evaluated class has accuracy ``None``.

  Args:
    correct: ``[num_classes]`` correct predictions per class.
    total: ``[num_classes]`` evaluation examples per class.
    train_class_counts: ``[num_classes]`` training examples per class (defines the shot groups).
    many_shot_min: fewest training examples of a many-shot class.
    few_shot_max: most training examples of a few-shot class.

  Returns:
    ``top1_accuracy`` (fraction of all examples), ``balanced_accuracy`` (mean per-class accuracy),
    ``per_class_accuracy`` (list), ``many_shot_accuracy``, ``medium_shot_accuracy`` and
    ``few_shot_accuracy`` (mean per-class accuracy within each group).

  Examples:
    >>> s = summarize([9, 1], [10, 10], [200, 5])
    >>> s['top1_accuracy'], s['balanced_accuracy'], s['many_shot_accuracy'], s['few_shot_accuracy']
    (0.5, 0.5, 0.9, 0.1)
  """
  hits = np.asarray(correct, dtype=np.float64)
  counts = np.asarray(total, dtype=np.float64)
  if hits.shape != counts.shape or counts.shape != np.shape(train_class_counts):
    raise ValueError(
        f"correct {hits.shape}, total {counts.shape} and train_class_counts "
        f"{np.shape(train_class_counts)} must have the same [num_classes] shape."
    )
  seen = counts > 0
  accuracy = np.divide(hits, counts, out=np.zeros_like(hits), where=seen)
  groups = shot_groups(
      train_class_counts, many_shot_min=many_shot_min, few_shot_max=few_shot_max
  )
  summary: dict[str, Any] = {
      "top1_accuracy": float(hits.sum() / counts.sum()) if counts.sum() else None,
      "balanced_accuracy": _mean_or_none(accuracy[seen]),
      "per_class_accuracy": [float(a) if s else None for a, s in zip(accuracy, seen)],
  }
  for group, members in groups.items():
    summary[f"{group}_shot_accuracy"] = _mean_or_none(accuracy[members & seen])
  return summary


def _check_classification_batch(logits: jax.Array, labels: jax.Array,
                                where: jax.Array | None) -> None:
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f"logits must be [batch, num_classes] and labels [batch], got "
                     f"{logits.shape} and {labels.shape}.")
  if where is not None and where.shape != labels.shape:
    raise ValueError(f"where must be [batch] like labels {labels.shape}, got {where.shape}.")


def calibration_counts(
    logits: jax.Array,
    labels: jax.Array,
    *,
    num_bins: int = 15,
    where: jax.Array | None = None,
) -> dict[str, jax.Array]:
  r"""Per-bin counts of examples, summed confidence and correct predictions (device side).

  Example :math:`i` has top-1 confidence :math:`c_i = \max_j \mathrm{softmax}(z_i)_j` and falls
  in the equal-width bin :math:`b` with

  .. math::
    \frac{b}{M} < c_i \le \frac{b + 1}{M}, \qquad b = 0, \dots, M - 1,

  so a confidence of exactly 1 is in the last bin. The counts are additive: sum them over
  batches, devices and hosts, then call :func:`expected_calibration_error`.

  Args:
    logits: ``[batch, num_classes]`` scores (any float dtype; softmax in float32).
    labels: ``[batch]`` integer class ids.
    num_bins: :math:`M`, the number of bins (15, as Guo et al.).
    where: optional ``[batch]`` bool mask; ``False`` entries (padding) are not counted.

  Returns:
    ``{'bin_count': int32 [M], 'bin_confidence_sum': float32 [M], 'bin_correct': int32 [M]}``:
    per bin, the examples, the sum of their confidences and how many the top-1 class got right.

  Raises:
    ValueError: for ``num_bins < 1`` or inconsistent shapes.

  Examples:
    >>> import jax.numpy as jnp
    >>> logits = jnp.log(jnp.array([[0.85, 0.15], [0.35, 0.65]]))
    >>> counts = calibration_counts(logits, jnp.array([0, 0]), num_bins=10)
    >>> counts['bin_count'].tolist(), counts['bin_correct'].tolist()
    ([0, 0, 0, 0, 0, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0, 0, 0, 1, 0])

  References:
    Guo et al., On Calibration of Modern Neural Networks, ICML 2017
    (https://arxiv.org/abs/1706.04599).
  """
  if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
    raise ValueError(f"num_bins must be a positive int, got {num_bins!r}.")
  _check_classification_batch(logits, labels, where)
  confidence = jnp.max(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
  bins = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
  weight = jnp.ones_like(confidence) if where is None else where.astype(jnp.float32)
  in_bin = jax.nn.one_hot(bins, num_bins, dtype=jnp.float32) * weight[:, None]
  hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return {
      "bin_count": jnp.sum(in_bin, axis=0).astype(jnp.int32),
      "bin_confidence_sum": jnp.sum(in_bin * confidence[:, None], axis=0),
      "bin_correct": jnp.sum(in_bin * hit[:, None], axis=0).astype(jnp.int32),
  }


def _calibration_arrays(counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``counts`` from :func:`calibration_counts` as float64 host arrays, checked."""
  count, confidence_sum, correct = (np.asarray(counts[key], dtype=np.float64)
                                    for key in ("bin_count", "bin_confidence_sum", "bin_correct"))
  arrays = (count, confidence_sum, correct)
  if arrays[0].ndim != 1 or any(a.shape != arrays[0].shape for a in arrays):
    raise ValueError(f"Calibration counts must be three [num_bins] arrays, got shapes "
                     f"{[a.shape for a in arrays]}.")
  return arrays


def expected_calibration_error(counts) -> float:
  r"""Expected calibration error from summed :func:`calibration_counts` (host side).

  .. math::
    \mathrm{ECE} = \sum_{b} \frac{n_b}{N} \left| \mathrm{acc}_b - \mathrm{conf}_b \right|
    = \frac{1}{N} \sum_b \Big| \sum_{i \in b} [\hat y_i = y_i] - \sum_{i \in b} c_i \Big|

  with :math:`n_b` examples in bin :math:`b`, :math:`N = \sum_b n_b`, :math:`\mathrm{acc}_b` and
  :math:`\mathrm{conf}_b` their accuracy and mean confidence; empty bins add nothing.

  Args:
    counts: a mapping with ``bin_count``, ``bin_confidence_sum`` and ``bin_correct``, each
      ``[num_bins]`` (device or numpy arrays).

  Returns:
    The ECE in ``[0, 1]`` as a Python float.

  Raises:
    ValueError: if no example was counted or the shapes disagree.

  Examples:
    >>> ece = expected_calibration_error({'bin_count': [0, 2], 'bin_confidence_sum': [0.0, 1.6],
    ...                                   'bin_correct': [0, 1]})
    >>> round(ece, 6)   # |1 - 1.6| / 2
    0.3
  """
  count, confidence_sum, correct = _calibration_arrays(counts)
  if not count.sum():
    raise ValueError("The calibration counts hold no example; the ECE is undefined.")
  return float(np.abs(correct - confidence_sum).sum() / count.sum())


def reliability_bins(counts) -> dict[str, list[float | None]]:
  """Per-bin data of a reliability diagram from summed :func:`calibration_counts` (JSON-ready).

  Args:
    counts: as for :func:`expected_calibration_error`.

  Returns:
    ``bin_lower`` and ``bin_upper`` (the bin edges), ``count``, ``accuracy`` and ``confidence``
    (mean top-1 confidence), one entry per bin; accuracy and confidence are ``None`` on empty bins.

  Examples:
    >>> bins = reliability_bins({'bin_count': [0, 2], 'bin_confidence_sum': [0.0, 1.6],
    ...                          'bin_correct': [0, 1]})
    >>> bins['bin_upper'], bins['accuracy'], bins['confidence']
    ([0.5, 1.0], [None, 0.5], [None, 0.8])
  """
  count, confidence_sum, correct = _calibration_arrays(counts)
  edges = np.linspace(0.0, 1.0, len(count) + 1)
  mean = lambda total: [float(t / n) if n else None for t, n in zip(total, count)]
  return {"bin_lower": edges[:-1].tolist(), "bin_upper": edges[1:].tolist(),
          "count": count.astype(int).tolist(), "accuracy": mean(correct),
          "confidence": mean(confidence_sum)}
