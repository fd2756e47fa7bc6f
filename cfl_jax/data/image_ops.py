"""TensorFlow ops of the ImageNet-scale input pipelines: JPEG decoding fused with cropping.

Decoding only the crop window (``tf.image.decode_and_crop_jpeg``) is what keeps a CPU host ahead
of the accelerators. All randomness is stateless: the same seed gives the same crop and flip.
Images leave these ops as float32 ``[size, size, 3]``, standardised with the ImageNet statistics.
"""

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _standardize(image: tf.Tensor) -> tf.Tensor:
  return (tf.cast(image, tf.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def _decode_crop_resize(encoded: tf.Tensor, window: tf.Tensor, size: int) -> tf.Tensor:
  image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
  return tf.image.resize(image, (size, size), method="bilinear")


def random_resized_crop_flip(encoded: tf.Tensor, seed: tf.Tensor, size: int, *,
                             area_range: tuple[float, float] = (0.08, 1.0),
                             aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)) -> tf.Tensor:
  """Inception-style training crop of a JPEG, resized to ``size`` x ``size``, flipped with p=1/2.

  Args:
    encoded: scalar string tensor, a JPEG file.
    seed: int ``[2]`` stateless seed.
    size: output height and width.
    area_range: range of the crop area as a fraction of the image area.
    aspect_ratio_range: range of the crop's width / height.

  Returns:
    float32 ``[size, size, 3]``, standardised.

  References:
    Szegedy et al., Going Deeper with Convolutions, 2015 (https://arxiv.org/abs/1409.4842).
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.image.extract_jpeg_shape(encoded), bounding_boxes=tf.zeros([1, 0, 4]), seed=crop_seed,
      min_object_covered=0.0, aspect_ratio_range=aspect_ratio_range, area_range=area_range,
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
  image = _decode_crop_resize(encoded, window, size)
  return _standardize(tf.image.stateless_random_flip_left_right(image, flip_seed))


def center_crop(encoded: tf.Tensor, size: int, *, crop_fraction: float = 0.875) -> tf.Tensor:
  """Evaluation crop: the central square of ``crop_fraction`` of the shorter side, resized.

  The usual "resize to size / 0.875, centre crop size" of ResNet evaluation, done as one crop.

  Returns:
    float32 ``[size, size, 3]``, standardised.
  """
  shape = tf.image.extract_jpeg_shape(encoded)
  height, width = shape[0], shape[1]
  side = tf.cast(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  side = tf.maximum(side, 1)
  window = tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])
  return _standardize(_decode_crop_resize(encoded, window, size))
