"""Tests of cfl_jax.metrics: device-side class counts and host-side accuracy summaries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfl_jax import metrics


def test_class_counts_match_a_python_count_and_ignore_masked_rows():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(40, 5)).astype(np.float32)
  labels = rng.integers(0, 5, size=40)
  mask = rng.random(40) < 0.7
  counts = jax.jit(metrics.class_counts, static_argnums=2)(logits, labels, 5, mask)
  hit = logits.argmax(-1) == labels
  for c in range(5):
    rows = (labels == c) & mask
    assert counts["total"][c] == rows.sum()
    assert counts["correct"][c] == (hit & rows).sum()


def test_class_counts_are_additive_over_batches():
  logits, labels = jnp.eye(4) * 3.0, jnp.array([0, 1, 3, 3])
  whole = metrics.class_counts(logits, labels, 4)
  halves = [metrics.class_counts(logits[i:i + 2], labels[i:i + 2], 4) for i in (0, 2)]
  np.testing.assert_array_equal(whole["correct"], halves[0]["correct"] + halves[1]["correct"])
  np.testing.assert_array_equal(whole["total"], halves[0]["total"] + halves[1]["total"])


def test_summarize_by_hand():
  # Training counts: class 0 many-shot, 1 and 2 medium-shot, 3 few-shot.
  summary = metrics.summarize(correct=[8, 3, 5, 1], total=[10, 10, 5, 5],
                              train_class_counts=[150, 50, 21, 20])
  assert summary["top1_accuracy"] == pytest.approx(17 / 30)
  assert summary["per_class_accuracy"] == pytest.approx([0.8, 0.3, 1.0, 0.2])
  assert summary["balanced_accuracy"] == pytest.approx(np.mean([0.8, 0.3, 1.0, 0.2]))
  assert summary["many_shot_accuracy"] == pytest.approx(0.8)
  assert summary["medium_shot_accuracy"] == pytest.approx(0.65)
  assert summary["few_shot_accuracy"] == pytest.approx(0.2)


def test_shot_thresholds_are_configurable():
  counts = [124, 96, 74, 57, 44, 34, 26, 20, 16, 12]  # digits, long tail ratio 10
  default = metrics.shot_groups(counts)
  assert default["many"].sum() == 1 and default["few"].sum() == 3 and default["medium"].sum() == 6
  custom = metrics.shot_groups(counts, many_shot_min=50, few_shot_max=30)
  assert custom["many"].sum() == 4 and custom["few"].sum() == 4 and custom["medium"].sum() == 2
  for groups in (default, custom):  # a partition of the classes
    np.testing.assert_array_equal(groups["many"] + groups["medium"] + groups["few"], 1)
  with pytest.raises(ValueError, match="few_shot_max"):
    metrics.shot_groups(counts, many_shot_min=20, few_shot_max=20)


def test_summarize_keeps_every_key_when_groups_or_classes_are_empty():
  summary = metrics.summarize(correct=[2, 0], total=[4, 0], train_class_counts=[30, 40])
  assert summary["many_shot_accuracy"] is None and summary["few_shot_accuracy"] is None
  assert summary["medium_shot_accuracy"] == 0.5  # the unevaluated class is left out
  assert summary["per_class_accuracy"] == [0.5, None]
  assert summary["balanced_accuracy"] == 0.5


def test_summarize_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="same"):
    metrics.summarize([1, 2], [2, 2], [10, 10, 10])
