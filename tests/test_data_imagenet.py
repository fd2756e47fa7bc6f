"""Tests of the streamed ImageNet-2012 pipeline on a tiny ILSVRC-2012 prepared by the real builder.

The fixture writes the two archives the real ``imagenet2012`` builder reads from its manual_dir
(a train tar of per-synset tars, a val tar) with a few small uniform-colour JPEGs, and prepares
them with ``tfds.builder('imagenet2012').download_and_prepare``: the same code path as a user's.
Each image's red value identifies it, also after random crops (a crop of a uniform image is
uniform).
"""

import numpy as np
import pytest

from cfl_jax.data import get_dataset

PIL_Image = pytest.importorskip("PIL.Image")
tfds = pytest.importorskip("tensorflow_datasets")
import tfds_fakes  # pylint: disable=g-import-not-at-top,g-bad-import-order

_SYNSETS = ("n01440764", "n01443537", "n01484850")  # Classes 0, 1, 2.
_PER_CLASS = 4
_NUM_VAL = 5
_TRAIN_REDS = {40 * label + 10 * k for label in range(3) for k in range(_PER_CLASS)}
_VAL_REDS = {20 * k for k in range(_NUM_VAL)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  tfds_fakes.prepare_imagenet2012(root, tmp_path_factory.mktemp("ilsvrc2012"), synsets=_SYNSETS,
                                  per_class=_PER_CLASS, num_val=_NUM_VAL)
  return str(root)


@pytest.fixture(scope="module")
def data(data_dir):
  return get_dataset({"name": "imagenet2012", "data_dir": data_dir, "image_size": 16})


def _reds(images):
  """The red value of each (uniform) image, rounded to the multiple of 10 it was written as."""
  red = images[..., 0].mean(axis=(1, 2)) * 0.229 + 0.485
  return (np.round(red * 255 / 10) * 10).astype(int)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_sizes_and_class_counts(data):
  assert data.num_classes == 1000 and data.image_shape == (16, 16, 3)
  assert data.num_train_examples == 12 and data.num_eval_examples == _NUM_VAL
  assert data.train_class_counts.dtype == np.int64
  np.testing.assert_array_equal(data.train_class_counts[:4], [4, 4, 4, 0])
  assert data.train_class_counts.sum() == 12 and data.steps_per_epoch(4) == 3


def test_train_batches_types_and_resumption(data):
  kwargs = dict(global_batch_size=4, process_index=0, process_count=1)
  continued = _take(data.train_batches(seed=3, **kwargs), 7)
  resumed = _take(data.train_batches(seed=3, start_step=4, **kwargs), 3)
  for a, b in zip(continued[4:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  batch = continued[0]
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (4, 16, 16, 3)
  assert batch["label"].dtype == np.int32
  epoch = np.concatenate([b["image"] for b in continued[:3]])
  assert set(_reds(epoch)) == _TRAIN_REDS  # An epoch visits every example once.
  other = _take(data.train_batches(seed=4, **kwargs), 3)
  assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(continued, other))


def test_processes_share_an_epoch_without_overlap(data):
  reds = []
  for process_index in range(2):
    batches = _take(data.train_batches(global_batch_size=4, seed=0, process_index=process_index,
                                       process_count=2), 6)
    assert all(b["image"].shape == (2, 16, 16, 3) for b in batches)
    first, second = (_reds(np.concatenate([b["image"] for b in batches[e * 3:e * 3 + 3]]))
                     for e in range(2))
    assert sorted(first) == sorted(second)  # A process owns the same examples every epoch.
    reds.append(first)
  assert sorted(np.concatenate(reds)) == sorted(_TRAIN_REDS)


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_batches_cover_every_example_once(data, process_count):
  reds, lengths = [], []
  for process_index in range(process_count):
    batches = list(data.eval_batches(global_batch_size=2 * process_count,
                                     process_index=process_index, process_count=process_count))
    lengths.append(len(batches))
    for batch in batches:
      assert batch["image"].shape == (2, 16, 16, 3) and batch["mask"].dtype == bool
      reds += list(_reds(batch["image"][batch["mask"]]))
  assert len(set(lengths)) == 1
  assert sorted(reds) == sorted(_VAL_REDS)


def test_missing_data_says_how_to_prepare(tmp_path):
  message = r"not prepared.*tfds.builder\('imagenet2012'.*manual_dir"
  with pytest.raises(FileNotFoundError, match=message):
    get_dataset({"name": "imagenet2012", "data_dir": str(tmp_path)})
