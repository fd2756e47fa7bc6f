"""Tests of the CIFAR loaders and the 4K subset lists.

The CIFAR tests prepare a small CIFAR-10 / CIFAR-100 with the real TFDS builders' own example
generator (``_generate_examples`` parsing CIFAR binary files) and features, under the real names
and versions, so ``tfds.builder('cifar10', data_dir=...)`` reads it exactly as it reads the real
data. Only the download is replaced by local binary files. Each fake image stores its original
training index in pixel (0, 0) (channel 0: index % 256, channel 1: index // 256) and the labels
are ``index % num_classes``, so tests can decode which examples a loader selected.
"""

import numpy as np
import pytest

from cfl_jax.data import SUBSET_NAMES
from cfl_jax.data import get_dataset
from cfl_jax.data import long_tail_counts
from cfl_jax.data import subset_ids
import tfds_fakes

_TRAIN_SIZE = {"cifar10": 6000, "cifar100": 7700}  # Covers the largest index of every subset.
_TEST_SIZE = 120


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  root = tmp_path_factory.mktemp("tfds")
  for name, train_size in _TRAIN_SIZE.items():
    tfds_fakes.prepare_cifar(root, name, train_size=train_size, test_size=_TEST_SIZE)
  return str(root)


def _indices(images):
  pixels = images[:, 0, 0].astype(np.int64)
  return pixels[:, 0] + 256 * pixels[:, 1]


# subset_ids: no TensorFlow involved.

@pytest.mark.parametrize("name", SUBSET_NAMES)
def test_subset_ids_are_sorted_unique_training_indices(name):
  ids = subset_ids(name)
  assert ids.shape == (4000,) and ids.dtype == np.int64
  assert (np.diff(ids) > 0).all()
  assert 0 <= ids[0] and ids[-1] < 50000


def test_subset_id_readings():
  np.testing.assert_array_equal(subset_ids("first_4000"), np.arange(4000))
  np.testing.assert_array_equal(subset_ids("c10_sampler5_3_intended"),
                                subset_ids("c10_sampler5_3") - 1)
  assert subset_ids("c10_sampler5_3")[0] == 1 and subset_ids("c10_sampler5_3_intended")[0] == 0
  lists = [tuple(subset_ids(name)) for name in SUBSET_NAMES]
  assert len(set(lists)) == len(lists)


def test_unknown_subset_lists_the_names():
  with pytest.raises(ValueError, match="c10_sampler6_2, c10_sampler5_3, c10_sampler5_3_intended"):
    subset_ids("c10_sampler4_4")


# Loaders over the fake TFDS data.

@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_full_training_set_in_original_order(data_dir, name):
  data = get_dataset({"name": name, "data_dir": data_dir})
  num_classes = int(name[5:])
  assert data.num_classes == num_classes and data.image_shape == (32, 32, 3)
  np.testing.assert_array_equal(_indices(data.train_images), np.arange(_TRAIN_SIZE[name]))
  np.testing.assert_array_equal(data.train_labels, np.arange(_TRAIN_SIZE[name]) % num_classes)
  np.testing.assert_array_equal(_indices(data.eval_images), np.arange(_TEST_SIZE))
  assert data.num_eval_examples == _TEST_SIZE


@pytest.mark.parametrize("name", SUBSET_NAMES)
def test_subset_selects_exactly_the_listed_ids(data_dir, name):
  dataset = "cifar100" if name.startswith("c100") else "cifar10"
  data = get_dataset({"name": dataset, "data_dir": data_dir, "subset": name})
  selected = _indices(data.train_images)
  np.testing.assert_array_equal(selected, subset_ids(name))
  np.testing.assert_array_equal(data.train_labels, selected % data.num_classes)
  np.testing.assert_array_equal(
      data.train_class_counts, np.bincount(subset_ids(name) % data.num_classes,
                                           minlength=data.num_classes))


def test_long_tail_keeps_the_first_images_of_each_class(data_dir):
  data = get_dataset({"name": "cifar10", "data_dir": data_dir, "imbalance_ratio": 10})
  counts = long_tail_counts(10, 600, 10)
  np.testing.assert_array_equal(data.train_class_counts, counts)
  selected = _indices(data.train_images)
  for label, count in enumerate(counts):
    np.testing.assert_array_equal(selected[data.train_labels == label],
                                  label + 10 * np.arange(count))
  assert data.num_eval_examples == _TEST_SIZE  # The test set stays balanced and complete.


def test_batches_are_standardised_augmented_and_deterministic(data_dir):
  data = get_dataset({"name": "cifar10", "data_dir": data_dir, "subset": "first_4000"})
  first = next(data.train_batches(global_batch_size=16, seed=0, start_step=300))
  again = next(data.train_batches(global_batch_size=16, seed=0, start_step=300))
  np.testing.assert_array_equal(first["image"], again["image"])
  assert first["image"].shape == (16, 32, 32, 3) and first["image"].dtype == np.float32
  zero = (0.0 - np.float32([0.4914, 0.4822, 0.4465])) / np.float32([0.2470, 0.2435, 0.2616])
  # Background pixels and padding are black, so most pixels equal the standardised zero.
  assert np.isclose(first["image"], zero).all(axis=-1).mean() > 0.99
  unaugmented = get_dataset({"name": "cifar10", "data_dir": data_dir, "augment": False})
  batch = next(unaugmented.eval_batches(global_batch_size=8))
  np.testing.assert_allclose(batch["image"][1, 1:, 1:], np.broadcast_to(zero, (31, 31, 3)))


@pytest.mark.parametrize("config, error, message", [
    ({"name": "cifar10", "subset": "c100_sampler6_2"}, ValueError, "indexes cifar100, not"),
    ({"name": "cifar10", "subset": "first_4000", "imbalance_ratio": 10}, ValueError, "not both"),
    ({"name": "cifar100", "imbalance_ratio": 0.5}, ValueError, "imbalance_ratio"),
    ({"name": "cifar10", "long_tail_profile": "zipf", "imbalance_ratio": 10}, ValueError, "zipf"),
    ({"name": "cifar10", "long_tail_profile": "step"}, ValueError, "set imbalance_ratio"),
    ({"name": "cifar10", "sampler": "x"}, ValueError, "Unknown keyword.*sampler"),
])
def test_bad_configs(data_dir, config, error, message):
  with pytest.raises(error, match=message):
    get_dataset({"data_dir": data_dir, **config})


def test_missing_data_names_data_dir_and_how_to_prepare(tmp_path):
  message = f"data_dir='{tmp_path}'.*tfds.builder\\('cifar100'"
  with pytest.raises(FileNotFoundError, match=message):
    get_dataset({"name": "cifar100", "data_dir": str(tmp_path)})
