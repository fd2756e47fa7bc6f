"""A small convolutional network for the 8x8 greyscale digits of scikit-learn, and its strided
twin for large images (``tiny_cnn``)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cfl_jax.models import layers


class DigitsCNN(nn.Module):
  """Three 3x3 conv-BatchNorm-ReLU layers (32, 64 stride 2, 64 channels), mean pool, dense head.

  About 57k parameters for 10 classes: a few dozen epochs on a thousand 8x8 images take seconds
  on a CPU.

  Attributes:
    num_classes: number of output logits.
    dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``); parameters stay float32.
    feature_dim: width of a dense + ReLU feature layer between the pooled features and the
      classifier (OLTR's ``use_fc``, see ``cfl_jax.models.layers.classify``); 0 for none.
    stem_strides: strides of the first layer, whose kernel is then as wide (at least 3).
      ``get_model('tiny_cnn')`` is this network with 4 (a 4x4 stem at stride 4): a
      tiny model for 224-px images (the study configs' smoke mode), where stride 1 costs about 16
      times the compute in every layer.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = DigitsCNN(num_classes=10)
    >>> x = jnp.zeros((2, 8, 8, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
    >>> logits.shape
    (2, 10)
  """

  num_classes: int
  dtype: Any = jnp.float32
  feature_dim: int = 0
  stem_strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps images ``[batch, height, width, channels]`` (``[batch, 8, 8, 1]`` for the digits) to
    float32 logits ``[batch, num_classes]``."""
    conv = layers.conv_factory(self.dtype)
    norm = layers.norm_factory(self.dtype, train=train)
    stem = (32, max(3, self.stem_strides), self.stem_strides)
    for i, (features, kernel, strides) in enumerate((stem, (64, 3, 2), (64, 3, 1))):
      x = conv(features, kernel, strides, name=f"conv{i + 1}")(x)
      x = nn.relu(norm(name=f"bn{i + 1}")(x))
    return layers.classify(x, num_classes=self.num_classes, dtype=self.dtype,
                           feature_dim=self.feature_dim)
