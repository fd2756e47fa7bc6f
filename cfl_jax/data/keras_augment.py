"""RandAugment and random erasing from Keras 3 preprocessing layers, as pure functions of a seed.

Keras layers draw their randomness from a stateful ``SeedGenerator``. Inside a Keras
``StatelessScope`` that maps each generator's state to a given tensor, a layer call reads the
state from the mapping and mutates nothing, so :class:`ImageAugment` is a pure function of
``(image, seed)``: safe in parallel ``tf.data`` maps and reproducible in ``(seed, step)``.
:class:`RandAugment` and :class:`RandomErasing` work on one float image in [0, 255].

RandAugment here (the papers' ``rand-m9-mstd0.5-inc1``: 2 ops per image, magnitude m = 9 of 10,
the "increasing" op set) is a policy over the Keras layers of timm's
``_RAND_INCREASING_TRANSFORMS`` ops, each with timm's range at m (see ``timm.data.auto_augment``):
rotate up to 30 m / 10 degrees, shear up to 0.3 m / 10, translate up to 0.45 m / 10 of the side,
solarize above 256 - int(256 m / 10) (26 at m9), posterize to 4 - int(4 m / 10) bits (1 at m9),
contrast / colour / sharpness up to 0.9 m / 10 either way, plus auto-contrast, equalize and
invert. Each picked op is applied with probability 1/2, as timm's. Differences from timm: the
magnitudes are drawn uniformly up to these values (Keras's solarize threshold uniformly in
[0, 26]) rather than at m with Gaussian noise of standard deviation 0.5 (``mstd0.5``) and a random
sign; brightness is Keras's additive shift (up to 0.9 m / 20 of the range) where timm scales;
SolarizeAdd is left out (no Keras layer); pixels moved in from outside are reflected rather than
grey.

Random erasing (Zhong et al. 2017) is ``keras.layers.RandomErasing`` with probability ``p``
exactly (``factor=(p, p)``), area 2-33 % of the image and Gaussian noise fill (timm's
``mode='pixel'``); Keras has no aspect-ratio range (timm: 0.3-3.3) and erases one box.

References:
  Cubuk et al., RandAugment, 2020 (https://arxiv.org/abs/1909.13719).
  Zhong et al., Random Erasing Data Augmentation, 2020 (https://arxiv.org/abs/1708.04896).
"""

import keras
from keras.src.backend.common.stateless_scope import StatelessScope
import tensorflow as tf

MAX_MAGNITUDE = 10  # timm's magnitude scale


def _timm_ops(magnitude: int) -> list[keras.layers.Layer]:
  """Keras layers with timm's increasing RandAugment ranges at ``magnitude`` (of 10), images in
  [0, 255]."""
  m = magnitude / MAX_MAGNITUDE
  pixels = {"value_range": (0, 255)}
  return [
      keras.layers.AutoContrast(**pixels),
      keras.layers.Equalization(**pixels),
      keras.layers.RandomInvert(factor=(1.0, 1.0), **pixels),
      keras.layers.RandomRotation(factor=30 * m / 360, fill_mode="reflect"),
      # timm's increasing forms (inc1): stronger with m, 1 bit and a threshold of 26 at m9.
      keras.layers.RandomPosterization(factor=max(1, 4 - int(4 * m)), **pixels),
      keras.layers.Solarization(threshold_factor=((256 - int(256 * m)) / 255,) * 2, **pixels),
      keras.layers.RandomColorDegeneration(factor=0.9 * m),
      keras.layers.RandomContrast(factor=0.9 * m),
      keras.layers.RandomBrightness(factor=0.45 * m, **pixels),
      keras.layers.RandomSharpness(factor=0.9 * m, **pixels),
      keras.layers.RandomShear(x_factor=0.3 * m, y_factor=0.0, fill_mode="reflect"),
      keras.layers.RandomShear(x_factor=0.0, y_factor=0.3 * m, fill_mode="reflect"),
      keras.layers.RandomTranslation(0.0, 0.45 * m, fill_mode="reflect"),
      keras.layers.RandomTranslation(0.45 * m, 0.0, fill_mode="reflect"),
  ]


class RandAugment:
  """timm-style RandAugment of one image, a pure function of a stateless seed.

  Args:
    magnitude: timm magnitude in [0, 10] (9 for ``rand-m9``).
    num_ops: ops picked per image (2).

  Call: ``augment(image [H, W, 3] in [0, 255], seed int64 [2]) -> float32 [H, W, 3]`` in
  [0, 255], the same for the same seed.

  Examples:
    >>> augment = RandAugment(magnitude=9)
    >>> image, seed = tf.fill((8, 8, 3), 100.0), tf.constant([1, 2], tf.int64)
    >>> bool(tf.reduce_all(augment(image, seed) == augment(image, seed)))
    True
  """

  def __init__(self, *, magnitude: int, num_ops: int = 2):
    if not 0 <= magnitude <= MAX_MAGNITUDE:
      raise ValueError(f"RandAugment magnitude must be in [0, {MAX_MAGNITUDE}], got {magnitude}.")
    self._ops = _timm_ops(magnitude)
    self._num_ops = num_ops

  def __call__(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    image = tf.cast(image, tf.float32)
    for op_seed in tf.unstack(tf.random.experimental.stateless_split(seed, self._num_ops)):
      choice_seed, layer_seed = tf.unstack(tf.random.experimental.stateless_split(op_seed, 2))
      # 2 * len(ops) choices: an op, or (with probability 1/2) nothing.
      index = tf.random.stateless_uniform([], choice_seed, maxval=2 * len(self._ops),
                                          dtype=tf.int32)
      branches = [lambda layer=layer, x=image, s=layer_seed: _apply(layer, x, s)
                  for layer in self._ops]
      image = tf.switch_case(index, branches, default=lambda x=image: x)
    return image


class RandomErasing:
  """Random erasing of one image with probability ``probability``, a pure function of a seed.

  Call: ``erase(image [H, W, 3] in [0, 255], seed int64 [2]) -> float32 [H, W, 3]``.

  Examples:
    >>> erase = RandomErasing(probability=1.0)
    >>> image = tf.fill((16, 16, 3), 100.0)
    >>> bool(tf.reduce_any(erase(image, tf.constant([0, 1], tf.int64)) != image))
    True
  """

  def __init__(self, *, probability: float):
    if not 0 < probability <= 1:
      raise ValueError(f"random erasing probability must be in (0, 1], got {probability}.")
    self._layer = keras.layers.RandomErasing(factor=(probability, probability),
                                             value_range=(0, 255))

  def __call__(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return _apply(self._layer, tf.cast(image, tf.float32), seed)


def train_augmentation(rand_augment: int | None, random_erasing: float):
  """``augment(image, seed)``: RandAugment of magnitude ``rand_augment`` (None: off), then random
  erasing with probability ``random_erasing`` (0: off), each with its own part of ``seed``.

  Examples:
    >>> image = tf.fill((4, 4, 3), 7.0)
    >>> bool(tf.reduce_all(train_augmentation(None, 0.0)(image, tf.constant([0, 1])) == image))
    True
  """
  steps = ([RandAugment(magnitude=rand_augment)] if rand_augment is not None else []) + (
      [RandomErasing(probability=random_erasing)] if random_erasing else [])

  def augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    if not steps:
      return image
    seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64),
                                                              len(steps)))
    for step, step_seed in zip(steps, seeds):
      image = step(image, step_seed)
    return image

  return augment


def _apply(layer: keras.layers.Layer, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """``layer`` on one image with its random state read from ``seed`` (nothing mutated)."""
  generator = getattr(layer, "generator", None)
  mapping = [] if generator is None else [(generator.state, tf.cast(seed, generator.state.dtype))]
  with StatelessScope(state_mapping=mapping):
    return tf.cast(layer(image[None], training=True)[0], tf.float32)
