"""Tests of the digits dataset and the get_dataset registry."""

import subprocess
import sys

import numpy as np
import pytest

from cfl_jax.data import digits
from cfl_jax.data import get_dataset


def test_balanced_profile_and_test_split():
  data = get_dataset({"name": "digits"})
  assert data.name == "digits" and data.num_classes == 10 and data.image_shape == (8, 8, 1)
  np.testing.assert_array_equal(data.train_class_counts, [124] * 10)
  assert data.num_train_examples == 1240 and data.num_eval_examples == 500
  np.testing.assert_array_equal(np.bincount(data.eval_labels), [50] * 10)
  assert data.train_images.shape[0] + data.num_eval_examples <= 1797


@pytest.mark.parametrize("config, counts", [
    ({"profile": "linear", "imbalance_ratio": 2.0, "max_count": 100},
     np.round(np.linspace(100, 50, 10))),
    ({"profile": "long_tail", "imbalance_ratio": 10.0},
     [124, 96, 74, 57, 44, 34, 26, 20, 16, 12]),
    ({"profile": "balanced", "max_count": 30}, [30] * 10),
])
def test_profiles(config, counts):
  data = get_dataset({"name": "digits", **config})
  np.testing.assert_array_equal(data.train_class_counts, counts)


def test_profiles_share_the_test_split_and_take_the_first_images_per_class():
  balanced = digits.digits()
  long_tailed = digits.digits(profile="long_tail", imbalance_ratio=10.0)
  np.testing.assert_array_equal(balanced.eval_images, long_tailed.eval_images)
  for label, count in enumerate(long_tailed.train_class_counts):
    np.testing.assert_array_equal(long_tailed.train_images[long_tailed.train_labels == label],
                                  balanced.train_images[balanced.train_labels == label][:count])


def test_test_split_is_disjoint_from_the_training_pool():
  # The 1,797 digits images are pairwise distinct, so comparing contents compares examples.
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  pool_images, _, test_images, _ = digits._split()  # pylint: disable=protected-access
  rows = lambda images: {row.tobytes() for row in images.reshape(len(images), -1)}
  everything = rows(load_digits().images.astype(np.uint8))
  assert rows(pool_images).isdisjoint(rows(test_images))
  assert rows(pool_images) | rows(test_images) == everything


def test_batches_are_normalised_and_deterministic():
  data = digits.digits()
  first = next(data.train_batches(global_batch_size=32, seed=0, start_step=40))
  again = next(data.train_batches(global_batch_size=32, seed=0, start_step=40))
  np.testing.assert_array_equal(first["image"], again["image"])
  assert first["image"].dtype == np.float32 and first["image"].shape == (32, 8, 8, 1)
  assert 0.0 <= first["image"].min() and first["image"].max() <= 1.0


@pytest.mark.parametrize("config, message", [
    ({"name": "mnist"}, "Unknown dataset 'mnist'; known datasets: digits"),
    ({"profile": "balanced"}, "needs a 'name'"),
    ({"name": "digits", "ratio": 2}, "Unknown keyword.*ratio.*accepts: profile"),
    ({"name": "digits", "profile": "zipf"}, "Unknown digits profile 'zipf'"),
    ({"name": "digits", "profile": "linear"}, "needs imbalance_ratio"),
    ({"name": "digits", "imbalance_ratio": 3.0}, "applies to the 'linear' and 'long_tail'"),
    ({"name": "digits", "max_count": 500}, r"max_count must be in \[1, 124\]"),
])
def test_get_dataset_errors(config, message):
  with pytest.raises(ValueError, match=message):
    get_dataset(config)


def test_get_dataset_accepts_a_config_dict():
  ml_collections = pytest.importorskip("ml_collections")
  config = ml_collections.ConfigDict({"name": "digits", "profile": "linear",
                                      "imbalance_ratio": 2.6})
  assert get_dataset(config).train_class_counts[0] == 124


def test_digits_does_not_import_tensorflow():
  # cfl_jax.data is reachable as an attribute after a plain `import cfl_jax`.
  code = ("import sys, cfl_jax; d = cfl_jax.data; data = d.get_dataset({'name': 'digits'}); "
          "next(data.train_batches(global_batch_size=8, seed=0)); "
          "assert not {'tensorflow', 'tensorflow_datasets'} & set(sys.modules), 'tf imported'")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_balanced_profile_accepts_a_ratio_of_one():
  """A command line can only override imbalance_ratio, not unset it: 1 means balanced."""
  plain = get_dataset({"name": "digits", "profile": "balanced"})
  with_ratio = get_dataset({"name": "digits", "profile": "balanced", "imbalance_ratio": 1.0})
  np.testing.assert_array_equal(plain.train_class_counts, with_ratio.train_class_counts)
  first = next(plain.train_batches(global_batch_size=32, seed=3))
  again = next(with_ratio.train_batches(global_batch_size=32, seed=3))
  np.testing.assert_array_equal(first["image"], again["image"])


def test_a_missing_optional_package_names_the_extra(monkeypatch):
  digits._split.cache_clear()
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # as if scikit-learn were absent
  with pytest.raises(ModuleNotFoundError, match=r"'digits' dataset needs the package "
                     r"'sklearn.datasets'.*pip install -e '\.\[experiments\]'"):
    get_dataset({"name": "digits"})
  digits._split.cache_clear()
