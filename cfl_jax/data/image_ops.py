"""TensorFlow ops of the streamed input pipelines: random-resized crops of JPEGs and arrays.

Decoding only the crop window (``tf.image.decode_and_crop_jpeg``) is what keeps a CPU host ahead
of the accelerators. All randomness is stateless: the same seed gives the same crop and flip.
Crops leave these ops as float32 ``[size, size, 3]`` in [0, 255]; :func:`standardize` maps them
to model inputs.
"""

import itertools

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def standardize(image: tf.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tf.Tensor:
  """``(image / 255 - mean) / std`` per channel, float32."""
  return (tf.cast(image, tf.float32) / 255.0 - mean) / std


def _random_window(shape: tf.Tensor, seed: tf.Tensor, area_range, aspect_ratio_range):
  """Inception-style crop window ``[top, left, height, width]`` of an image of ``shape``."""
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0,
      aspect_ratio_range=aspect_ratio_range, area_range=area_range, max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  return tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])


def random_resized_crop_flip(image: tf.Tensor, seed: tf.Tensor, size: int, *,
                             area_range: tuple[float, float] = (0.08, 1.0),
                             aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)) -> tf.Tensor:
  """Inception-style training crop resized to ``size`` x ``size`` and flipped with p=1/2.

  Args:
    image: a scalar string tensor holding a JPEG file (only the window is decoded), or a
      decoded image ``[H, W, 3]``.
    seed: int ``[2]`` stateless seed.
    size: output height and width.
    area_range: range of the crop area as a fraction of the image area.
    aspect_ratio_range: range of the crop's width / height.

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
