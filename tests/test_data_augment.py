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


def _over_seeds(augment, count, image=_IMAGE):
  """``augment`` of ``image`` for seeds (0, 0) ... (count - 1, 0), in a tf.data map."""
  image = tf.constant(image, tf.float32)
  seeds = tf.stack([tf.range(count, dtype=tf.int64), tf.zeros(count, tf.int64)], axis=1)
  outputs = tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: augment(image, s),
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


def _sharp_centre():
  image = np.full((5, 5, 3), 100.0, np.float32)
  image[2, 2] = 160.0
  return image


# (op, image, pixel read, the op's degenerate image there): PIL's ImageEnhance blends.
_ENHANCE = {
    "BrightnessIncreasing": (np.full((4, 4, 3), 100.0, np.float32), (0, 0, 0), 0.0),
    "ColorIncreasing": (np.broadcast_to(np.float32([150, 100, 50]), (4, 4, 3)), (0, 0, 0),
                        0.299 * 150 + 0.587 * 100 + 0.114 * 50),  # the grey level
    "SharpnessIncreasing": (_sharp_centre(), (2, 2, 0), (5 * 160 + 8 * 100) / 13),  # smoothed
}


@pytest.mark.parametrize("op", sorted(_ENHANCE))
def test_rand_augment_enhance_factors_are_timms(op):
  """timm's rand-m9-mstd0.5: factor 1 +- 0.9 m' / 10 with m' ~ N(9, 0.5) clipped to [0, 10] per
  application and a random sign, so over [0.1, 1.9] and near 1 +- 0.81 ([0.19, 1.81] at m9)."""
  image, at, degenerate = _ENHANCE[op]
  outputs = _over_seeds(RandAugment(magnitude=9, num_ops=1, ops=(op,)), 400, image)
  factors = (outputs[(slice(None), *at)] - degenerate) / (image[at] - degenerate)
  applied = factors[np.abs(factors - 1) > 1e-3]
  magnitudes = np.abs(applied - 1) / 0.09
  # 400 seeds, each op applied with probability 1/2: about 200 draws. Bounds at 4 or more
  # standard errors: the applied fraction 0.5 +- 0.025, the mean magnitude 9 +- 0.035, its
  # standard deviation 0.5 +- 0.025, the fraction above 1 0.5 +- 0.035.
  assert 0.4 < len(applied) / len(factors) < 0.6
  assert 8.85 < magnitudes.mean() < 9.15 and 0.4 < magnitudes.std() < 0.6
  assert magnitudes.max() <= 10 + 1e-3 and 0.1 - 1e-4 <= applied.min()
  assert 0.35 < np.mean(applied > 1) < 0.65  # both ways: colour saturates as well as fades
  assert applied.min() < 0.3 and applied.max() > 1.7


@pytest.mark.parametrize("op", ["Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"])
def test_rand_augment_fills_with_black(op):
  """timm fills with the model's mean colour, (0, 0, 0) for TResNet."""
  outputs = _over_seeds(RandAugment(magnitude=9, num_ops=1, ops=(op,)), 16,
                        np.full((8, 8, 3), 200.0, np.float32))
  changed = [image for image in outputs if not np.all(image == 200)]
  assert len(changed) >= 3 and all(np.any(image < 1) for image in changed)
  assert all(image.max() <= 200 + 1e-3 for image in changed)


def test_rand_augment_ops_are_pils():
  """Each op at level 0.9 (m' = 9), positive sign, against PIL on a smooth image: equal up to
  PIL's rounding to uint8 (enhance ops) and its resampling at the borders (geometric ops; mean
  absolute difference measured 0.5 to 3.6 grey levels on this image)."""
  pil = pytest.importorskip("PIL.Image")
  from PIL import ImageEnhance, ImageOps  # pylint: disable=g-import-not-at-top
  from cfl_jax.data import rand_augment  # pylint: disable=g-import-not-at-top
  rows, cols = np.mgrid[0:20, 0:24]
  image = np.stack([10 * cols, 12 * rows, 5 * (rows + cols)], -1).astype(np.uint8)
  source = pil.fromarray(image)

  def affine(*coefficients):
    return source.transform(source.size, pil.AFFINE, coefficients, pil.BILINEAR, fillcolor=0)

  expected = {
      "AutoContrast": ImageOps.autocontrast(source), "Equalize": ImageOps.equalize(source),
      "Invert": ImageOps.invert(source), "PosterizeIncreasing": ImageOps.posterize(source, 1),
      "SolarizeIncreasing": ImageOps.solarize(source, 26),
      "SolarizeAdd": pil.fromarray(np.where(image < 128, np.minimum(image + 99, 255), image)),
      "ColorIncreasing": ImageEnhance.Color(source).enhance(1.81),
      "ContrastIncreasing": ImageEnhance.Contrast(source).enhance(1.81),
      "BrightnessIncreasing": ImageEnhance.Brightness(source).enhance(1.81),
      "SharpnessIncreasing": ImageEnhance.Sharpness(source).enhance(1.81),
      "Rotate": source.rotate(27, resample=pil.BILINEAR, fillcolor=0),
      "ShearX": affine(1, 0.27, 0, 0, 1, 0), "ShearY": affine(1, 0, 0, 0.27, 1, 0),
      "TranslateXRel": affine(1, 0, 0.405 * 24, 0, 1, 0),
      "TranslateYRel": affine(1, 0, 0, 0, 1, 0.405 * 20),
  }
  assert set(expected) == set(rand_augment.OP_NAMES)
  geometric = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
  for name, op in rand_augment.OPS:
    ours = op(tf.constant(image, tf.float32), 0.9, 1.0).numpy()
    difference = np.abs(ours - np.asarray(expected[name], np.float32))
    if name in geometric:
      assert difference.mean() < 4, name
    else:
      assert difference.max() <= 1.5, name


def test_random_erasing_fills_standardised_noise():
  """timm's mode='pixel' on a normalised image: N(0, 1) per value, not clipped, in one box of
  2-33 % of the area with its aspect ratio log-uniform in [0.3, 3.3]."""
  erased = _over_seeds(RandomErasing(probability=1.0), 300, np.zeros((32, 32, 3), np.float32))
  boxes = np.any(erased != 0, axis=-1)
  noise = erased[boxes]
  # About 300 x 180 pixels x 3 channels = 1.6e5 values: standard errors 0.0025 (mean), 0.002 (sd).
  assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02
  assert noise.min() < -3.5 and noise.max() > 3.5  # no clipping
  heights = boxes.any(2).sum(1)
  widths = boxes.any(1).sum(1)
  np.testing.assert_array_equal(heights * widths, boxes.sum((1, 2)))  # rectangles
  area = heights * widths / 32**2
  assert area.min() > 0.015 and area.max() < 0.36  # 2-33 %, rounded to whole pixels
  log_ratio = np.log(heights / widths)
  assert log_ratio.min() > np.log(0.3) - 0.2 and log_ratio.max() < np.log(1 / 0.3) + 0.2
  assert abs(log_ratio.mean()) < 0.15  # symmetric; standard error about 0.04


def test_random_resized_crop_window_is_timms():
  """Area uniform in the range, width / height log-uniform (tf.image's sampler: uniform); when
  no proposal fits, the central crop clamped to the ratio range."""
  from cfl_jax.data import image_ops  # pylint: disable=g-import-not-at-top
  seeds = tf.stack([tf.range(2000, dtype=tf.int64), tf.ones(2000, tf.int64)], axis=1)
  windows = tf.data.Dataset.from_tensor_slices(seeds).map(
      lambda seed: image_ops._random_window(tf.constant([400, 400, 3]), seed, (0.08, 0.5),
                                            (3 / 4, 4 / 3)))  # pylint: disable=protected-access
  windows = np.stack(list(windows.as_numpy_iterator()))
  top, left, height, width = windows.T
  assert top.min() >= 0 and (top + height).max() <= 400 and (left + width).max() <= 400
  np.testing.assert_allclose((height * width / 400**2).mean(), 0.29, atol=0.01)  # se 0.0025
  # log(w / h) uniform on [-0.288, 0.288]: the outer quarters hold the same share (difference
  # 0 +- 0.016; over three seed sets it measured 0.000, -0.048, -0.027). A uniform w / h puts
  # 0.199 and 0.306 there (difference 0.107).
  quarters = np.histogram(np.log(width / height), bins=4, range=(np.log(3 / 4), np.log(4 / 3)))[0]
  assert abs(quarters[3] - quarters[0]) / len(windows) < 0.06
  fallback = image_ops._random_window(tf.constant([10, 1000, 3]), tf.constant([0, 1]),
                                      (0.08, 1.0), (3 / 4, 4 / 3))  # pylint: disable=protected-access
  np.testing.assert_array_equal(fallback, [0, 493, 10, 13])


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


def test_stream_erases_after_standardising():
  """The erasing noise is N(0, 1) in model-input units whatever the dataset's statistics (timm
  erases the normalised batch); the rest of the image is the standardised image."""
  data = _stream(train_images=np.full((24, 32, 32, 3), 51, np.uint8), rand_augment=None,
                 random_erasing=1.0, image_size=32)
  images = next(data.train_batches(global_batch_size=16, seed=0))["image"]
  clean = (51 / 255 - np.float32([0.5, 0.4, 0.3])) / np.float32([0.2, 0.25, 0.5])
  erased = np.any(np.abs(images - clean) > 1e-5, axis=-1)
  assert erased.any(axis=(1, 2)).all()  # probability 1: every image has its box
  noise = images[erased]
  # About 16 x 180 pixels x 3 = 8,600 values: standard errors 0.011 (mean), 0.008 (sd).
  assert abs(noise.mean()) < 0.06 and abs(noise.std() - 1) < 0.05
  np.testing.assert_allclose(images[~erased], np.broadcast_to(clean, images[~erased].shape),
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
