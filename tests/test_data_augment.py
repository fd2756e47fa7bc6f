"""Tests of timm's RandAugment and random erasing (cfl_jax.data.rand_augment, image_ops), the
streamed 224-px CIFAR pipeline (cfl_jax.data.array_stream), augmentation in the ImageNet stream,
and the draws of two processes' shares in every kind of stream."""

import numpy as np
import pytest

from cfl_jax.data import augment as augment_lib
from cfl_jax.data import base
from cfl_jax.data import get_dataset

tf = pytest.importorskip("tensorflow")
# pylint: disable=g-import-not-at-top,wrong-import-position
from cfl_jax.data.array_stream import StreamedArrayDataset
from cfl_jax.data.image_ops import RandomErasing
from cfl_jax.data.rand_augment import RandAugment
import tfds_fakes
# pylint: enable=g-import-not-at-top,wrong-import-position

_RNG = np.random.default_rng(0)
_IMAGE = tf.constant(_RNG.integers(0, 256, (32, 32, 3)), tf.float32)


def _over_seeds(augment, count):
  """``augment`` of ``_IMAGE`` for seeds (0, 0) ... (count - 1, 0), in a tf.data map."""
  seeds = tf.stack([tf.range(count, dtype=tf.int64), tf.zeros(count, tf.int64)], axis=1)
  outputs = tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: augment(_IMAGE, s),
                                                          num_parallel_calls=4)
  return np.stack(list(outputs.as_numpy_iterator()))


def test_rand_augment_is_a_function_of_its_seed():
  augment = RandAugment(magnitude=9)
  first, again = _over_seeds(augment, 16), _over_seeds(augment, 16)
  np.testing.assert_array_equal(first, again)  # parallel map, same seeds: same images
  assert first.shape == (16, 32, 32, 3) and first.dtype == np.float32
  assert first.min() >= 0 and first.max() <= 255
  changed = [not np.array_equal(image, _IMAGE.numpy()) for image in first]
  # Each of the 2 ops is skipped with probability 1/2: some images stay, most change.
  assert 8 <= sum(changed) < 16
  assert not np.array_equal(first, _over_seeds(augment, 17)[1:])  # another seed, another image


def test_random_erasing_probability_and_box():
  erased = _over_seeds(RandomErasing(probability=0.6), 200)
  hit = [not np.array_equal(image, _IMAGE.numpy()) for image in erased]
  assert 0.5 < np.mean(hit) < 0.7  # 0.6 +- 3.5 standard deviations of a 200-draw mean
  diff = np.any(erased[hit.index(True)] != _IMAGE.numpy(), axis=-1)
  rows, cols = np.flatnonzero(diff.any(1)), np.flatnonzero(diff.any(0))
  box = diff[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  assert box.mean() > 0.9 and diff.sum() < 0.4 * diff.size  # one box of at most a third


@pytest.mark.parametrize("make, message", [
    (lambda: RandAugment(magnitude=11), r"magnitude must be in \[0, 10\]"),
    (lambda: RandomErasing(probability=1.5), r"probability must be in \[0, 1\]"),
    (lambda: RandAugment(magnitude=9, ops=("Rotate", "Blur")),
     r"Unknown RandAugment ops \['Blur'\]"),
])
def test_bad_magnitudes(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def _stream(**overrides):
  arguments = dict(name="tiny", num_classes=4, train_images=_RNG.integers(0, 256, (24, 32, 32, 3),
                                                                          dtype=np.uint8),
                   train_labels=np.arange(24) % 4,
                   eval_images=np.full((5, 32, 32, 3), 51, np.uint8), eval_labels=np.arange(5) % 4,
                   image_size=64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), rand_augment=9,
                   random_erasing=0.6)
  return StreamedArrayDataset(**{**arguments, **overrides})


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


@pytest.fixture(scope="module")
def stream():
  return _stream()


def test_stream_batches_follow_the_shared_order_and_resume(stream):
  batches = _take(stream.train_batches(global_batch_size=8, seed=5), 4)
  assert batches[0]["image"].shape == (8, 64, 64, 3) and batches[0]["image"].dtype == np.float32
  order = base.train_index_batches(24, 8, seed=5)
  for batch, (_, indices) in zip(batches, order):
    np.testing.assert_array_equal(batch["label"], indices % 4)
  resumed = _take(stream.train_batches(global_batch_size=8, seed=5, start_step=3), 1)[0]
  np.testing.assert_array_equal(resumed["image"], batches[3]["image"])
  other = _take(stream.train_batches(global_batch_size=8, seed=6), 1)[0]
  assert not np.array_equal(other["image"], batches[0]["image"])


def test_stream_process_shares_make_the_global_batch(stream):
  whole = _take(stream.train_batches(global_batch_size=8, seed=1, start_step=2), 1)[0]
  shares = [_take(stream.train_batches(global_batch_size=8, seed=1, start_step=2,
                                       process_index=p, process_count=2), 1)[0]
            for p in range(2)]
  for key in ("image", "label"):
    np.testing.assert_array_equal(np.concatenate([s[key] for s in shares]), whole[key])


def test_stream_eval_is_the_standardised_centre_crop(stream):
  batches = list(stream.eval_batches(global_batch_size=4))
  assert [b["mask"].tolist() for b in batches] == [[True] * 4, [True] + [False] * 3]
  expected = (51 / 255 - np.float32([0.5, 0.4, 0.3])) / np.float32([0.2, 0.25, 0.5])
  np.testing.assert_allclose(batches[0]["image"], np.broadcast_to(expected, (4, 64, 64, 3)),
                             rtol=1e-5)


def test_streamed_cifar_refuses_augment_false(tmp_path):
  with pytest.raises(ValueError, match="augment=False applies to 32-px batches"):
    get_dataset({"name": "cifar10", "data_dir": str(tmp_path), "augment": False,
                 "image_size": 224})


@pytest.fixture(scope="module")
def imagenet_config(tmp_path_factory):
  """A prepared 8-image ImageNet-2012 of uniform-colour JPEGs, served at 32 px."""
  root = tmp_path_factory.mktemp("tfds")
  tfds_fakes.prepare_imagenet2012(root, tmp_path_factory.mktemp("ilsvrc2012"),
                                  synsets=("n01440764", "n01443537"), per_class=4, num_val=2)
  return {"name": "imagenet2012", "data_dir": str(root), "image_size": 32}


def test_imagenet_stream_augments_deterministically(imagenet_config):
  plain = get_dataset(imagenet_config)
  augmented = get_dataset({**imagenet_config, "rand_augment": 9, "random_erasing": 1.0})
  kwargs = dict(global_batch_size=4, seed=0, process_index=0, process_count=1)
  first, again = (next(augmented.train_batches(**kwargs)) for _ in range(2))
  reference = next(plain.train_batches(**kwargs))
  np.testing.assert_array_equal(first["image"], again["image"])
  np.testing.assert_array_equal(first["label"], reference["label"])
  assert all(not np.array_equal(a, b) for a, b in zip(first["image"], reference["image"]))


def _erased(images):
  """Where random erasing drew its box in uniform-colour images: ``bool [B, H, W]``."""
  return np.any(np.abs(images - np.median(images, axis=(1, 2), keepdims=True)) > 0.05, axis=-1)


def _same_image_everywhere(make, **overrides):
  """A dataset of ``make`` whose 24 training images are all one image: a batch shows the draws."""
  images = np.repeat(_RNG.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), 24, axis=0)
  return make(**{**dict(name="same", num_classes=4, train_images=images,
                        train_labels=np.arange(24) % 4, eval_images=images[:4],
                        eval_labels=np.arange(4)), **overrides})


@pytest.mark.parametrize("dataset", ["array", "streamed_array", "tfds"])
def test_processes_draw_different_augmentations(dataset, imagenet_config):
  """The i-th examples of two processes get different draws, the same again on a rerun."""
  if dataset == "tfds":  # Different images per process: compare where each was erased.
    data, observe = get_dataset({**imagenet_config, "random_erasing": 1.0}), _erased
  elif dataset == "array":
    data, observe = _same_image_everywhere(
        base.ArrayDataset, normalize=np.asarray,
        augment=augment_lib.RandomCropFlip(padding=4)), np.asarray
  else:
    data, observe = _same_image_everywhere(
        StreamedArrayDataset, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
        random_erasing=0.6), np.asarray

  def draws(process_index):
    batches = data.train_batches(global_batch_size=4, seed=7, start_step=1,
                                 process_index=process_index, process_count=2)
    return observe(np.concatenate([next(batches)["image"] for _ in range(2)]))

  first, second = draws(0), draws(1)
  assert all(not np.array_equal(a, b) for a, b in zip(first, second))
  np.testing.assert_array_equal(draws(0), first)
  np.testing.assert_array_equal(draws(1), second)
