"""Tests of the CIFAR loaders and the 4K subset lists.

The CIFAR tests prepare a small CIFAR-10 / CIFAR-100 with the real TFDS builders' own example
generator (``_generate_examples`` parsing CIFAR binary files) and features, under the real names
and versions, so ``tfds.builder('cifar10', data_dir=...)`` reads it exactly as it reads the real
data. Only the download is replaced by local binary files. Each fake image stores its original
training index in pixel (0, 0) (channel 0: index % 256, channel 1: index // 256) and the labels
are ``index % num_classes``, so tests can decode which examples a loader selected. The tests of
the views per image (``aug_splits``) read a textured CIFAR-10 (gradients and a colour per image,
``tfds_fakes``), where crops, flips and augmentation show.
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


# Three views per image (aug_splits), on textured images: crops, flips and augmentation show.

_SIZE = 48  # streamed at a small size: the pipeline of the 224-px recipe, quicker


@pytest.fixture(scope="module")
def textured_dir(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  root = tmp_path_factory.mktemp("tfds_textured")
  tfds_fakes.prepare_cifar(root, "cifar10", train_size=64, test_size=8, textured=True)
  return str(root)


def _batch(data, *, process_index=0, process_count=1):
  """Batch 1 (of 8 images, seed 3) of ``data``, or a process's share of it."""
  return next(data.train_batches(global_batch_size=8, seed=3, start_step=1,
                                 process_index=process_index, process_count=process_count))


def _streamed(data_dir, **options):
  return get_dataset({"name": "cifar10", "data_dir": data_dir, "image_size": _SIZE, **options})


def _views(batch, splits=3):
  return batch["image"].reshape(splits, -1, *batch["image"].shape[1:])


def test_three_views_are_the_clean_view_then_two_augmented(textured_dir):
  recipe = {"rand_augment": 9, "random_erasing": 0.6}
  three = _batch(_streamed(textured_dir, **recipe, aug_splits=3))
  crop_flip = _batch(_streamed(textured_dir))  # image_size alone: crop and flip, nothing else
  single = _batch(_streamed(textured_dir, **recipe))
  assert three["image"].shape == (24, _SIZE, _SIZE, 3) and three["image"].dtype == np.float32
  np.testing.assert_array_equal(three["label"], np.tile(crop_flip["label"], 3))
  clean, first, second = _views(three)
  np.testing.assert_array_equal(clean, crop_flip["image"])
  np.testing.assert_array_equal(first, single["image"])  # aug_splits=1's view, draw for draw
  assert len({row.tobytes() for row in clean}) == 8  # eight different crops of eight images
  # About 1 in 8 augmented views draws no op that changes the image and no erasing (12.5 % of
  # the 128 augmented views of a 64-image batch here): most of these 16 differ, not every one.
  changed = [not np.array_equal(a, c) for view in (first, second) for a, c in zip(view, clean)]
  assert sum(changed) >= 10
  assert sum(not np.array_equal(a, b) for a, b in zip(first, second)) >= 6  # their own draws


def test_views_share_the_crop_and_flip(textured_dir):
  """Augmentation switched off, every view is the clean one; erasing alone (probability 1)
  changes one box of each augmented view and leaves the rest of the crop as it is."""
  from cfl_jax.data.array_stream import StreamedArrayDataset  # pylint: disable=g-import-not-at-top

  loaded = get_dataset({"name": "cifar10", "data_dir": textured_dir})
  identity = StreamedArrayDataset(
      name="cifar10", num_classes=10, train_images=loaded.train_images,
      train_labels=loaded.train_labels, eval_images=loaded.eval_images,
      eval_labels=loaded.eval_labels, image_size=_SIZE, mean=(0.5,) * 3, std=(0.25,) * 3,
      aug_splits=3)
  clean, first, second = _views(_batch(identity))
  np.testing.assert_array_equal(first, clean)
  np.testing.assert_array_equal(second, clean)
  clean, *erased = _views(_batch(_streamed(textured_dir, random_erasing=1.0, aug_splits=3)))
  for view in erased:
    changed = np.any(view != clean, axis=-1)  # [8, size, size]
    assert (changed.mean(axis=(1, 2)) > 0.01).all() and (changed.mean(axis=(1, 2)) < 0.34).all()
  assert not np.array_equal(erased[0], erased[1])


def test_process_shares_hold_their_images_views(textured_dir):
  data = _streamed(textured_dir, rand_augment=9, random_erasing=0.6, aug_splits=3)
  whole = _batch(data)
  shares = [_batch(data, process_index=p, process_count=2) for p in range(2)]
  assert shares[0]["image"].shape == (12, _SIZE, _SIZE, 3)
  for key in ("image", "label"):  # [view 0 | view 1 | view 2] of each process's 4 images
    stitched = np.concatenate([s[key].reshape(3, 4, *s[key].shape[1:]) for s in shares], axis=1)
    np.testing.assert_array_equal(stitched.reshape(whole[key].shape), whole[key])


def test_eval_batches_hold_one_view(textured_dir):
  batch = next(_streamed(textured_dir, random_erasing=0.6, aug_splits=3).eval_batches(
      global_batch_size=8))
  plain = next(_streamed(textured_dir).eval_batches(global_batch_size=8))
  for key in ("image", "label", "mask"):
    np.testing.assert_array_equal(batch[key], plain[key])


@pytest.mark.parametrize("config, error, message", [
    ({"name": "cifar10", "aug_splits": 0, "random_erasing": 0.6}, ValueError,
     "aug_splits must be an integer >= 1"),
    ({"name": "cifar10", "aug_splits": 2.5, "random_erasing": 0.6}, ValueError,
     r"aug_splits must be an integer >= 1 \(views of each training image\), got 2.5"),
    ({"name": "cifar10", "aug_splits": True, "random_erasing": 0.6}, ValueError,
     "aug_splits must be an integer >= 1"),
    ({"name": "cifar10", "aug_splits": 3, "image_size": 224}, ValueError,
     "aug_splits=3 needs rand_augment or random_erasing"),
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
