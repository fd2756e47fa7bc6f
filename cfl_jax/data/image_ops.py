"""TensorFlow ops of the streamed input pipelines: random-resized crops of JPEGs and arrays.

Decoding only the crop window (``tf.image.decode_and_crop_jpeg``) is what keeps a CPU host ahead
of the accelerators. All randomness is stateless: the same seed gives the same crop and flip.
Crops leave these ops as float32 ``[size, size, 3]`` in [0, 255]; :func:`standardize` maps them
to model inputs, which :class:`RandomErasing` then erases (timm's order).
"""

import dataclasses
import itertools
import math

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def standardize(image: tf.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tf.Tensor:
  """``(image / 255 - mean) / std`` per channel, float32."""
  return (tf.cast(image, tf.float32) / 255.0 - mean) / std


def _box_attempts(height, width, seed, area_range, aspect_ratio_range, attempts=10):
  """timm's box proposals: ``attempts`` boxes of area ``U(area_range) * height * width`` and
  width / height log-uniform in ``aspect_ratio_range``, as int32 ``(heights, widths)``."""
  area_seed, ratio_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  area = tf.cast(height * width, tf.float32) * tf.random.stateless_uniform(
      [attempts], area_seed, *area_range)
  log_low, log_high = (math.log(ratio) for ratio in aspect_ratio_range)
  ratio = tf.exp(tf.random.stateless_uniform([attempts], ratio_seed, log_low, log_high))
  return (tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32),
          tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32))


def _first(valid, values):
  """The entry of ``values`` at the first True of ``valid`` (any entry when there is none)."""
  return tf.gather(values, tf.argmax(tf.cast(valid, tf.int32)))


def _offset(seed, room):
  """A uniform integer in ``[0, room]``."""
  return tf.random.stateless_uniform([], seed, 0, room + 1, dtype=tf.int32)


def _random_window(shape: tf.Tensor, seed: tf.Tensor, area_range, aspect_ratio_range):
  """timm's ``RandomResizedCrop`` window ``[top, left, height, width]`` of an image of ``shape``:
  the first of 10 proposals (:func:`_box_attempts`) that fits, else the central crop of the
  whole image clamped to the aspect-ratio range."""
  box_seed, top_seed, left_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  height, width = tf.cast(shape[0], tf.int32), tf.cast(shape[1], tf.int32)
  heights, widths = _box_attempts(height, width, box_seed, area_range, aspect_ratio_range)
  fits = (heights > 0) & (heights <= height) & (widths > 0) & (widths <= width)
  low, high = aspect_ratio_range
  ratio = tf.cast(width, tf.float32) / tf.cast(height, tf.float32)
  fallback_height = tf.where(ratio < low, tf.cast(tf.round(tf.cast(width, tf.float32) / low),
                                                  tf.int32), height)
  fallback_width = tf.where(ratio > high, tf.cast(tf.round(tf.cast(height, tf.float32) * high),
                                                  tf.int32), width)
  found = tf.reduce_any(fits)
  crop_height = tf.where(found, _first(fits, heights), fallback_height)
  crop_width = tf.where(found, _first(fits, widths), fallback_width)
  top = tf.where(found, _offset(top_seed, height - crop_height), (height - crop_height) // 2)
  left = tf.where(found, _offset(left_seed, width - crop_width), (width - crop_width) // 2)
  return tf.stack([top, left, crop_height, crop_width])


def random_resized_crop_flip(image: tf.Tensor, seed: tf.Tensor, size: int, *,
                             area_range: tuple[float, float] = (0.08, 1.0),
                             aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)) -> tf.Tensor:
  """Inception-style training crop resized to ``size`` x ``size`` and flipped with p=1/2.

  The window is timm's ``RandomResizedCrop``'s (area uniform, aspect ratio log-uniform, 10
  attempts, then a central crop).

  Args:
    image: a scalar string tensor holding a JPEG file (only the window is decoded), or a
      decoded image ``[H, W, 3]``.
    seed: int ``[2]`` stateless seed.
    size: output height and width.
    area_range: range of the crop area as a fraction of the image area.
    aspect_ratio_range: range of the crop's width / height (log-uniform).

  Returns:
    float32 ``[size, size, 3]`` in [0, 255] (bilinear).

  References:
    Szegedy et al., Going Deeper with Convolutions, 2015 (https://arxiv.org/abs/1409.4842).
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  encoded = image.dtype == tf.string
  shape = tf.image.extract_jpeg_shape(image) if encoded else tf.shape(image)
  window = _random_window(shape, crop_seed, area_range, aspect_ratio_range)
  if encoded:
    crop = tf.image.decode_and_crop_jpeg(image, window, channels=3)
  else:
    crop = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], -1])
  resized = tf.image.resize(crop, (size, size), method="bilinear")
  return tf.image.stateless_random_flip_left_right(resized, flip_seed)


@dataclasses.dataclass(frozen=True)
class RandomErasing:
  """timm's ``RandomErasing(probability, mode='pixel')`` of one standardised image.

  With probability ``probability``, the first of 10 proposed boxes (area 2-33 % of the image,
  aspect ratio log-uniform in [0.3, 1 / 0.3]) that fits strictly inside the image is filled with
  N(0, 1) noise, per pixel and channel. Like timm (which erases the normalised batch), it acts on
  model inputs: the noise is in standardised units, not clipped.

  Call: ``erase(image [H, W, C] float32, seed int [2]) -> float32 [H, W, C]``.

  Examples:
    >>> erase = RandomErasing(probability=1.0)
    >>> image = tf.zeros((16, 16, 3))
    >>> bool(tf.reduce_any(erase(image, tf.constant([0, 1], tf.int64)) != image))
    True

  References:
    Zhong et al., Random Erasing Data Augmentation, 2020 (https://arxiv.org/abs/1708.04896).
  """

  probability: float  # 0: off

  AREA_RANGE = (0.02, 1 / 3)
  ASPECT_RATIO_RANGE = (0.3, 1 / 0.3)

  def __post_init__(self):
    if not 0 <= self.probability <= 1:
      raise ValueError(f"random erasing probability must be in [0, 1], got {self.probability}.")

  def __call__(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    if not self.probability:
      return image
    coin_seed, box_seed, top_seed, left_seed, noise_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5))
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    heights, widths = _box_attempts(height, width, box_seed, self.AREA_RANGE,
                                    self.ASPECT_RATIO_RANGE)
    fits = (heights < height) & (widths < width)
    erase = (tf.random.stateless_uniform([], coin_seed) < self.probability) & tf.reduce_any(fits)
    box_height = tf.where(erase, _first(fits, heights), 0)
    box_width = tf.where(erase, _first(fits, widths), 0)
    top, left = _offset(top_seed, height - box_height), _offset(left_seed, width - box_width)
    noise = tf.random.stateless_normal([box_height, box_width, shape[2]], noise_seed)
    noise = tf.pad(noise, [[top, height - top - box_height], [left, width - left - box_width],
                           [0, 0]])
    rows, cols = tf.range(height), tf.range(width)
    inside = (((rows >= top) & (rows < top + box_height))[:, None, None]
              & ((cols >= left) & (cols < left + box_width))[None, :, None])
    return tf.where(inside, noise, tf.cast(image, tf.float32))


def center_crop(image: tf.Tensor, size: int, *, crop_fraction: float = 0.875) -> tf.Tensor:
  """Evaluation crop: the central square of ``crop_fraction`` of the shorter side, resized.

  The usual "resize to size / 0.875, centre crop size" of ResNet evaluation, done as one crop.

  Args:
    image: a JPEG file (scalar string tensor) or a decoded image ``[H, W, 3]``.

  Returns:
    float32 ``[size, size, 3]`` in [0, 255].
  """
  encoded = image.dtype == tf.string
  shape = tf.image.extract_jpeg_shape(image) if encoded else tf.shape(image)
  height, width = shape[0], shape[1]
  side = tf.cast(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  side = tf.maximum(side, 1)
  window = tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])
  if encoded:
    crop = tf.image.decode_and_crop_jpeg(image, window, channels=3)
  else:
    crop = tf.slice(image, [window[0], window[1], 0], [side, side, -1])
  return tf.image.resize(crop, (size, size), method="bilinear")


def color_jitter(image: tf.Tensor, seed: tf.Tensor, strength: float) -> tf.Tensor:
  """torchvision's ``ColorJitter(strength, strength, strength, hue=0)``, OLTR's training jitter.

  Brightness, contrast and saturation factors are drawn uniformly from ``[1 - strength, 1 +
  strength]`` and the three adjustments applied in a random order, each clipped to the pixel
  range, as torchvision does. Brightness scales the pixels (torchvision's blend with black);
  contrast and saturation are ``tf.image``'s: contrast blends each channel with its own mean
  (torchvision: with the mean grey level), saturation scales the HSV saturation (torchvision:
  blends with the grey image).

  Args:
    image: float ``[H, W, 3]`` in [0, 255].
    seed: int ``[2]`` stateless seed.
    strength: the jitter, in [0, 1) (OLTR: 0.4).

  Returns:
    float32 ``[H, W, 3]`` in [0, 255], the same for the same seed.

  Examples:
    >>> image = tf.fill((4, 4, 3), 100.0)
    >>> jittered = color_jitter(image, tf.constant([0, 1], tf.int64), 0.4)
    >>> bool(tf.reduce_all(jittered == color_jitter(image, tf.constant([0, 1], tf.int64), 0.4)))
    True
  """
  if not 0 <= strength < 1:
    raise ValueError(f"color jitter strength must be in [0, 1), got {strength}.")
  if not strength:
    return tf.cast(image, tf.float32)
  lower, upper = 1.0 - strength, 1.0 + strength
  order_seed, *seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  adjustments = (
      lambda x, s: x * tf.random.stateless_uniform([], s, lower, upper),
      lambda x, s: tf.image.stateless_random_contrast(x, lower, upper, s),
      lambda x, s: tf.image.stateless_random_saturation(x, lower, upper, s),
  )

  def in_order(order):
    x = tf.cast(image, tf.float32) / 255.0
    for index in order:
      x = tf.clip_by_value(adjustments[index](x, seeds[index]), 0.0, 1.0)
    return x * 255.0

  orders = list(itertools.permutations(range(len(adjustments))))
  choice = tf.random.stateless_uniform([], order_seed, maxval=len(orders), dtype=tf.int32)
  return tf.switch_case(choice, [lambda order=order: in_order(order) for order in orders])
