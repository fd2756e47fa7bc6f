"""Tests of the imbalanced class-count profiles."""

import numpy as np
import pytest

from cfl_jax.data import linear_counts
from cfl_jax.data import long_tail
from cfl_jax.data import long_tail_counts


@pytest.mark.parametrize("num_classes, max_count, ratio, total", [
    (10, 5000, 100, 12406), (100, 500, 100, 10847),
    (10, 5000, 10, 20431), (100, 500, 10, 19573),
])
def test_ldam_totals(num_classes, max_count, ratio, total):
  counts = long_tail_counts(num_classes, max_count, ratio)
  assert counts.dtype == np.int64 and counts.shape == (num_classes,)
  assert counts.sum() == total
  assert counts[0] == max_count and counts[-1] == max_count // ratio
  assert (np.diff(counts) <= 0).all()


def test_step_profile():
  np.testing.assert_array_equal(long_tail_counts(4, 100, 10, profile="step"), [100, 100, 10, 10])


def test_linear_counts_reproduce_the_4k_samplers():
  np.testing.assert_array_equal(linear_counts(10, 580, 580 / 220), np.arange(580, 219, -40))
  np.testing.assert_array_equal(linear_counts(10, 490, 490 / 310), np.arange(490, 309, -20))
  assert linear_counts(10, 580, 580 / 220).sum() == 4000


def test_ratio_one_is_balanced():
  np.testing.assert_array_equal(long_tail_counts(5, 7, 1.0), [7] * 5)
  np.testing.assert_array_equal(linear_counts(5, 7, 1.0), [7] * 5)


@pytest.mark.parametrize("args, message", [
    ((1, 10, 2.0), "num_classes"), ((3, 0, 2.0), "max_count"), ((3, 10, 0.5), "imbalance_ratio"),
])
def test_bad_arguments(args, message):
  with pytest.raises(ValueError, match=message):
    long_tail_counts(*args)
  with pytest.raises(ValueError, match=message):
    linear_counts(*args)


def test_unknown_profile():
  with pytest.raises(ValueError, match="exponential, step"):
    long_tail_counts(3, 10, 2.0, profile="linear")


def test_first_per_class_keeps_stored_order():
  labels = np.array([2, 0, 1, 0, 2, 0, 1])
  kept = long_tail.first_per_class(labels, np.array([2, 1, 1]))
  np.testing.assert_array_equal(kept, [0, 1, 2, 3])
  with pytest.raises(ValueError, match="Class 1 has 2 examples"):
    long_tail.first_per_class(labels, np.array([1, 3, 1]))
