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


# Calibration: an independent float64 numpy implementation of Guo et al.'s binning.

def _numpy_calibration(logits, labels, num_bins, mask=None):
  logits = np.asarray(logits, np.float64)
  probabilities = np.exp(logits - logits.max(-1, keepdims=True))
  probabilities /= probabilities.sum(-1, keepdims=True)
  confidence, prediction = probabilities.max(-1), logits.argmax(-1)
  keep = np.ones(len(labels), bool) if mask is None else np.asarray(mask)
  count, confidence_sum, correct = (np.zeros(num_bins) for _ in range(3))
  for b in range(num_bins):
    lower, upper = b / num_bins, (b + 1) / num_bins
    rows = keep & (confidence > lower) & (confidence <= upper)
    count[b], confidence_sum[b] = rows.sum(), confidence[rows].sum()
    correct[b] = (rows & (prediction == labels)).sum()
  accuracy, mean_confidence = correct[count > 0] / count[count > 0], (
      confidence_sum[count > 0] / count[count > 0])
  ece = np.sum(count[count > 0] / count.sum() * np.abs(accuracy - mean_confidence))
  return count, confidence_sum, correct, ece


@pytest.mark.parametrize("num_bins", [15, 4])
def test_calibration_matches_numpy_with_masked_rows(num_bins):
  rng = np.random.default_rng(1)
  logits = (rng.normal(size=(300, 10)) * rng.uniform(0.1, 6.0, size=(300, 1))).astype(np.float32)
  labels = np.where(rng.random(300) < 0.6, logits.argmax(-1), rng.integers(0, 10, 300))
  mask = rng.random(300) < 0.8
  counts = jax.jit(metrics.calibration_counts, static_argnames="num_bins")(
      logits, labels, num_bins=num_bins, where=mask)
  count, confidence_sum, correct, ece = _numpy_calibration(logits, labels, num_bins, mask)
  np.testing.assert_array_equal(counts["bin_count"], count)
  np.testing.assert_array_equal(counts["bin_correct"], correct)
  np.testing.assert_allclose(counts["bin_confidence_sum"], confidence_sum, rtol=1e-5)
  assert counts["bin_count"].sum() == mask.sum() and (count > 0).sum() >= num_bins - 2
  assert metrics.expected_calibration_error(counts) == pytest.approx(ece, rel=1e-5)
  unmasked = metrics.calibration_counts(logits[mask], labels[mask], num_bins=num_bins)
  for key, value in unmasked.items():
    np.testing.assert_allclose(counts[key], value, rtol=1e-6)


def test_calibration_bins_are_closed_on_the_right_and_one_is_in_the_last_bin():
  # Confidences 1/2 (two equal logits), 1/4 (four equal logits) and 1.0 (float32 saturates).
  logits = jnp.array([[0.0, 0.0, -1e9, -1e9], [0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
  assert float(jax.nn.softmax(logits[2]).max()) == 1.0
  counts = metrics.calibration_counts(logits, jnp.array([0, 1, 0]), num_bins=4)
  # (0, 1/4] holds 1/4, (1/4, 1/2] holds 1/2, (3/4, 1] holds 1.0.
  np.testing.assert_array_equal(counts["bin_count"], [1, 1, 0, 1])
  np.testing.assert_array_equal(counts["bin_correct"], [0, 1, 0, 1])
  np.testing.assert_allclose(counts["bin_confidence_sum"], [0.25, 0.5, 0.0, 1.0])
  # |0 - 0.25| + |1 - 0.5| + |1 - 1| over 3 examples; the empty bin adds nothing.
  assert metrics.expected_calibration_error(counts) == pytest.approx(0.75 / 3)
  bins = metrics.reliability_bins(counts)
  assert bins["bin_lower"] == [0.0, 0.25, 0.5, 0.75] and bins["bin_upper"][-1] == 1.0
  assert bins["count"] == [1, 1, 0, 1]
  assert bins["accuracy"] == [0.0, 1.0, None, 1.0]
  assert bins["confidence"] == pytest.approx([0.25, 0.5, None, 1.0])


def test_calibration_counts_are_additive_over_batches():
  rng = np.random.default_rng(2)
  logits, labels = rng.normal(size=(64, 5)) * 3, rng.integers(0, 5, 64)
  whole = metrics.calibration_counts(logits, labels)
  parts = [metrics.calibration_counts(logits[i:i + 16], labels[i:i + 16]) for i in range(0, 64, 16)]
  summed = {key: sum(part[key] for part in parts) for key in whole}
  for key in whole:
    np.testing.assert_allclose(summed[key], whole[key], rtol=1e-6)
  assert metrics.expected_calibration_error(summed) == pytest.approx(
      _numpy_calibration(logits, labels, 15)[3], rel=1e-5)


def test_a_confident_wrong_model_has_a_large_error():
  logits = jnp.array([[9.0, 0.0], [0.0, 9.0]])
  assert metrics.expected_calibration_error(
      metrics.calibration_counts(logits, jnp.array([1, 0]))) > 0.99
  assert metrics.expected_calibration_error(
      metrics.calibration_counts(logits, jnp.array([0, 1]))) < 1e-3


@pytest.mark.parametrize("call, message", [
    (lambda: metrics.calibration_counts(jnp.zeros((2, 3)), jnp.zeros(2, int), num_bins=0),
     "num_bins must be a positive int"),
    (lambda: metrics.calibration_counts(jnp.zeros((2, 3)), jnp.zeros(2, int), num_bins=2.0),
     "num_bins must be a positive int"),
    (lambda: metrics.calibration_counts(jnp.zeros(3), jnp.zeros(3, int)),
     r"logits must be \[batch, num_classes\]"),
    (lambda: metrics.calibration_counts(jnp.zeros((2, 3)), jnp.zeros(3, int)),
     r"labels \[batch\]"),
    (lambda: metrics.calibration_counts(jnp.zeros((2, 3)), jnp.zeros(2, int),
                                        where=jnp.ones(3, bool)), r"where must be \[batch\]"),
    (lambda: metrics.expected_calibration_error(
        {"bin_count": [0, 0], "bin_confidence_sum": [0.0, 0.0], "bin_correct": [0, 0]}),
     "no example"),
    (lambda: metrics.reliability_bins(
        {"bin_count": [1, 0], "bin_confidence_sum": [0.5], "bin_correct": [0, 0]}),
     "three \\[num_bins\\] arrays"),
])
def test_calibration_rejects_bad_input(call, message):
  with pytest.raises(ValueError, match=message):
    call()
