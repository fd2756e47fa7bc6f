"""timm's RandAugment ``rand-m{M}-mstd0.5-inc1`` of one image, a pure function of a stateless seed.

The papers' policy (timm's ``rand_augment_transform``): two ops per image, drawn with replacement
from the 15 "increasing" ops of ``_RAND_INCREASING_TRANSFORMS``, each applied with probability
1/2 at a magnitude drawn afresh for every application, ``m' = clip(N(M, 0.5), 0, 10)``
(``mstd0.5``), with a random sign for the signed ops. At level ``l = m' / 10``:

* rotate ``+-30 l`` degrees; shear x or y by ``+-0.3 l``; translate x or y by ``+-0.45 l`` of the
  side;
* colour, contrast, brightness and sharpness: PIL's ``ImageEnhance`` blend with factor
  ``1 +- 0.9 l`` ([0.19, 1.81] at ``m' = 9``) with the grey image, its mean grey level, black and
  the 3 x 3 smoothed image;
* posterize to ``4 - int(4 l)`` bits (1 at m9), solarize above ``256 - int(256 l)`` (26 at m9),
  solarize-add ``int(110 l)`` below 128;
* auto-contrast, equalize and invert (no magnitude).

Geometric ops fill with black: timm fills with the model's mean colour (``create_transform``
passes ``img_mean``), and TResNet's mean is (0, 0, 0). Differences from timm: the ops act on
float images without rounding to uint8 between ops, and resample bilinearly (timm picks bilinear
or bicubic at random per op).

References:
  Cubuk et al., RandAugment, 2020 (https://arxiv.org/abs/1909.13719).
"""

import math

import tensorflow as tf

MAX_MAGNITUDE = 10  # timm's magnitude scale
MAGNITUDE_STD = 0.5  # mstd0.5
_GREY = (0.299, 0.587, 0.114)  # PIL's convert("L")
_SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))  # PIL's ImageFilter.SMOOTH, / 13


def _blend(degenerate, image, factor):
  """PIL's ``ImageEnhance``: ``degenerate + factor (image - degenerate)`` in [0, 255]."""
  return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _grey(image):
  return tf.reduce_sum(image * _GREY, axis=-1, keepdims=True)


def _sharpness_degenerate(image):
  """The 3 x 3 smoothed image, the border pixels kept, as PIL's ``ImageEnhance.Sharpness``."""
  kernel = tf.constant(_SMOOTH)[:, :, None, None] / 13.0
  kernel = tf.tile(kernel, [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
  inner = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
  return tf.where(inner, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)


def _affine(image, a, b, c, d, e, f):
  """PIL's ``Image.transform(AFFINE, (a, b, c, d, e, f))``: output pixel (x, y) reads input
  ``(a x + b y + c, d x + e y + f)``, in PIL's coordinates (pixel centres at half-integers, TF's
  at integers); outside pixels are black."""
  c = c + (a + b - 1.0) / 2
  f = f + (d + e - 1.0) / 2
  transform = tf.cast(tf.stack([a, b, c, d, e, f, 0.0, 0.0]), tf.float32)[None]
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
      fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]


def _rotate(image, degrees):
  """PIL's ``Image.rotate(degrees)``: counter-clockwise about the image centre."""
  height, width = (tf.cast(n, tf.float32) for n in tf.unstack(tf.shape(image)[:2]))
  cx, cy = width / 2, height / 2
  cos, sin = tf.cos(degrees * math.pi / 180), tf.sin(degrees * math.pi / 180)
  return _affine(image, cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)


def _side(image, axis):
  return tf.cast(tf.shape(image)[axis], tf.float32)


def _posterize(image, bits):
  step = 2.0 ** (8.0 - bits)
  return tf.floor(image / step) * step


def _auto_contrast(image):
  low = tf.reduce_min(image, axis=(0, 1))
  high = tf.reduce_max(image, axis=(0, 1))
  scaled = (image - low) * 255.0 / tf.maximum(high - low, 1e-6)
  return tf.where(high > low, scaled, image)


def _equalize_channel(channel):
  """PIL's ``ImageOps.equalize`` of one uint8-valued channel ``[H, W]``."""
  values = tf.clip_by_value(tf.cast(channel, tf.int32), 0, 255)
  histogram = tf.math.bincount(values, minlength=256, maxlength=256)
  last = tf.gather(histogram, tf.reduce_max(tf.where(histogram > 0)))
  step = (tf.reduce_sum(histogram) - last) // 255
  lut = (tf.cumsum(histogram, exclusive=True) + step // 2) // tf.maximum(step, 1)
  equalized = tf.cast(tf.gather(tf.minimum(lut, 255), values), tf.float32)
  return tf.where(step > 0, equalized, channel)


def _equalize(image):
  return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], axis=-1)


# (name, op(image, level in [0, 1], sign +-1)): timm's _RAND_INCREASING_TRANSFORMS.
OPS = (
    ("AutoContrast", lambda x, level, sign: _auto_contrast(x)),
    ("Equalize", lambda x, level, sign: _equalize(x)),
    ("Invert", lambda x, level, sign: 255.0 - x),
    ("Rotate", lambda x, level, sign: _rotate(x, sign * 30.0 * level)),
    ("PosterizeIncreasing",
     lambda x, level, sign: _posterize(x, 4.0 - tf.floor(4.0 * level))),
    ("SolarizeIncreasing", lambda x, level, sign: tf.where(
        x < 256.0 - tf.floor(256.0 * level), x, 255.0 - x)),
    ("SolarizeAdd", lambda x, level, sign: tf.where(
        x < 128.0, tf.minimum(x + tf.floor(110.0 * level), 255.0), x)),
    ("ColorIncreasing", lambda x, level, sign: _blend(_grey(x), x, 1.0 + sign * 0.9 * level)),
    ("ContrastIncreasing", lambda x, level, sign: _blend(
        tf.reduce_mean(_grey(x)), x, 1.0 + sign * 0.9 * level)),
    ("BrightnessIncreasing", lambda x, level, sign: _blend(0.0, x, 1.0 + sign * 0.9 * level)),
    ("SharpnessIncreasing", lambda x, level, sign: _blend(
        _sharpness_degenerate(x), x, 1.0 + sign * 0.9 * level)),
    ("ShearX", lambda x, level, sign: _affine(x, 1.0, sign * 0.3 * level, 0.0, 0.0, 1.0, 0.0)),
    ("ShearY", lambda x, level, sign: _affine(x, 1.0, 0.0, 0.0, sign * 0.3 * level, 1.0, 0.0)),
    ("TranslateXRel", lambda x, level, sign: _affine(
        x, 1.0, 0.0, sign * 0.45 * level * _side(x, 1), 0.0, 1.0, 0.0)),
    ("TranslateYRel", lambda x, level, sign: _affine(
        x, 1.0, 0.0, 0.0, 0.0, 1.0, sign * 0.45 * level * _side(x, 0))),
)
OP_NAMES = tuple(name for name, _ in OPS)


class RandAugment:
  """timm's RandAugment (module docstring) of one image, a pure function of a stateless seed.

  Args:
    magnitude: timm magnitude M in [0, 10] (9 for ``rand-m9``).
    num_ops: ops picked per image (2).
    ops: names of the ops to pick from (:data:`OP_NAMES`, all of them by default).

  Call: ``augment(image [H, W, 3] in [0, 255], seed int64 [2]) -> float32 [H, W, 3]`` in
  [0, 255], the same for the same seed.

  Examples:
    >>> augment = RandAugment(magnitude=9)
    >>> image, seed = tf.fill((8, 8, 3), 100.0), tf.constant([1, 2], tf.int64)
    >>> bool(tf.reduce_all(augment(image, seed) == augment(image, seed)))
    True
  """

  def __init__(self, *, magnitude: int, num_ops: int = 2, ops: tuple[str, ...] = OP_NAMES):
    if not 0 <= magnitude <= MAX_MAGNITUDE:
      raise ValueError(f"RandAugment magnitude must be in [0, {MAX_MAGNITUDE}], got {magnitude}.")
    unknown = sorted(set(ops) - set(OP_NAMES))
    if unknown or not ops:
      raise ValueError(f"Unknown RandAugment ops {unknown or ops}; known: {', '.join(OP_NAMES)}.")
    self._ops = [op for name, op in OPS if name in ops]
    self._magnitude = float(magnitude)
    self._num_ops = num_ops

  def __call__(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    image = tf.cast(image, tf.float32)
    for op_seed in tf.unstack(tf.random.experimental.stateless_split(seed, self._num_ops)):
      choice_seed, level_seed, sign_seed = tf.unstack(
          tf.random.experimental.stateless_split(op_seed, 3))
      # 2 * len(ops) choices: an op, or (with probability 1/2) nothing.
      index = tf.random.stateless_uniform([], choice_seed, maxval=2 * len(self._ops),
                                          dtype=tf.int32)
      magnitude = self._magnitude + MAGNITUDE_STD * tf.random.stateless_normal([], level_seed)
      level = tf.clip_by_value(magnitude, 0.0, MAX_MAGNITUDE) / MAX_MAGNITUDE
      sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0)
      branches = [lambda op=op, x=image, level=level, sign=sign: op(x, level, sign)
                  for op in self._ops]
      image = tf.switch_case(index, branches, default=lambda x=image: x)
    return image
