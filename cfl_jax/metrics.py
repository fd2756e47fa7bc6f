"""Classification metrics for imbalanced data: top-1, per-class, balanced and many/medium/few-shot.

Evaluation runs in two halves. On device, :func:`class_counts` reduces a batch of logits to
per-class counts of correct predictions and of examples (additive, so batches, devices and hosts
are summed). On the host, :func:`summarize` turns the summed counts into accuracies, splitting the
classes into shot groups by their number of *training* examples (the OLTR protocol: many-shot
``>= 100``, few-shot ``<= 20``, medium-shot in between; the thresholds are arguments because small
data sets such as digits need lower ones).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


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
    train_class_counts: Sequence[int], *, many_shot_min: int = 100, few_shot_max: int = 20
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
    correct: Sequence[int],
    total: Sequence[int],
    train_class_counts: Sequence[int],
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
  correct = np.asarray(correct, dtype=np.float64)
  total = np.asarray(total, dtype=np.float64)
  if correct.shape != total.shape or total.shape != np.shape(train_class_counts):
    raise ValueError(
        f"correct {correct.shape}, total {total.shape} and train_class_counts "
        f"{np.shape(train_class_counts)} must have the same [num_classes] shape."
    )
  seen = total > 0
  accuracy = np.divide(correct, total, out=np.zeros_like(correct), where=seen)
  groups = shot_groups(
      train_class_counts, many_shot_min=many_shot_min, few_shot_max=few_shot_max
  )
  summary = {
      "top1_accuracy": float(correct.sum() / total.sum()) if total.sum() else None,
      "balanced_accuracy": _mean_or_none(accuracy[seen]),
      "per_class_accuracy": [float(a) if s else None for a, s in zip(accuracy, seen)],
  }
  for group, members in groups.items():
    summary[f"{group}_shot_accuracy"] = _mean_or_none(accuracy[members & seen])
  return summary
