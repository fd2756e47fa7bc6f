"""The published MNIST-1D baselines: a small 1-D CNN, a residual MLP and logistic regression.

Architectures of ``ConvBase``, ``MLPBase`` and ``LinearBase`` in ``notebooks/models.py`` of
github.com/greydanus/mnist1d, with PyTorch's default initialisation (weights and biases uniform
in ``+-1 / sqrt(fan_in)``). For 10 classes they have the published parameter counts:

=================== ============================================================== ==========
model               layers (ReLU after every hidden layer)                         parameters
=================== ============================================================== ==========
``MNIST1DCNN``      conv 5 stride 2 pad 1, conv 3 s 2 p 1, conv 3 s 2 p 1, 25           5,210
                    channels each (length 40 -> 19 -> 10 -> 5); flatten 125, dense
``MNIST1DMLP``      dense 100; ``h + relu(dense 100 (h))``; dense                      15,210
``MNIST1DLogistic`` dense (logistic regression on the 40 raw values)                      410
=================== ============================================================== ==========

The CNN flattens its ``[5, 25]`` features in (position, channel) order, PyTorch's in (channel,
position) order: a fixed permutation of the dense weights, the same model.

Published training recipe (``notebooks/train.py`` and ``notebooks/mnist1d-classification.ipynb``
of that repository): cross-entropy, Adam (learning rate 1e-2, PyTorch's betas and epsilon, no
weight decay), constant learning rate, batch 100 taken in the stored order of the 4,000
training signals without reshuffling, 6,000 steps (``train.py``'s default is 8,000), test
accuracy of the final model. Published test accuracy (the repository's README): logistic
regression 32 %, MLP 68 %, CNN 94 %; the benchmark notebook's own run ends at 31.5 %, 65.1 % and
92.3 %.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> x = jnp.zeros((2, 40, 1))   # two signals of MNIST-1D's image_shape (40, 1)
  >>> model = MNIST1DCNN(num_classes=10)
  >>> variables = model.init(jax.random.key(0), x, train=False)
  >>> model.apply(variables, x, train=True).shape
  (2, 10)

References:
  Greydanus & Kobak, Scaling Down Deep Learning with MNIST-1D, ICML 2024
  (https://arxiv.org/abs/2011.14439).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cfl_jax.models import layers

def _flatten(x: jax.Array) -> jax.Array:
  """``[batch, ...]`` to ``[batch, features]``."""
  return x.reshape(x.shape[0], -1)


class _Baseline(nn.Module):
  """What the three baselines share; ``train`` is accepted for the common call convention only.

  Attributes:
    num_classes: number of output logits.
    dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``); parameters stay float32.
  """

  num_classes: int
  dtype: Any = jnp.float32


class MNIST1DCNN(_Baseline):
  """The published MNIST-1D CNN: three strided 1-D convolutions (25 channels) and a dense layer."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps signals ``[batch, length, channels]`` to float32 logits ``[batch, num_classes]``."""
    del train  # no dropout, no BatchNorm
    if x.ndim != 3:
      raise ValueError(
          f"MNIST1DCNN takes signals [batch, length, channels], got shape {x.shape}.")
    for i, kernel_size in enumerate((5, 3, 3)):
      fan_in = kernel_size * x.shape[-1]
      x = nn.Conv(25, (kernel_size,), strides=(2,), padding=((1, 1),),
                  kernel_init=layers.torch_kernel_init, bias_init=layers.torch_bias_init(fan_in),
                  dtype=self.dtype, param_dtype=jnp.float32, name=f"conv{i + 1}")(x)
      x = nn.relu(x)
    x = _flatten(x)
    logits = layers.torch_dense(self.num_classes, x.shape[-1], self.dtype, "dense")(x)
    return logits.astype(jnp.float32)


class MNIST1DMLP(_Baseline):
  """The published MNIST-1D MLP: two hidden layers of 100 ReLUs, the second one residual.

  Attributes:
    hidden: width of the hidden layers (100 as published).
  """

  hidden: int = 100

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps signals ``[batch, ...]`` (flattened) to float32 logits ``[batch, num_classes]``."""
    del train  # no dropout, no BatchNorm
    x = _flatten(x)
    h = nn.relu(layers.torch_dense(self.hidden, x.shape[-1], self.dtype, "dense1")(x))
    h = h + nn.relu(layers.torch_dense(self.hidden, self.hidden, self.dtype, "dense2")(h))
    logits = layers.torch_dense(self.num_classes, self.hidden, self.dtype, "dense3")(h)
    return logits.astype(jnp.float32)


class MNIST1DLogistic(_Baseline):
  """Logistic regression on the raw signal: one dense layer, the published linear baseline."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps signals ``[batch, ...]`` (flattened) to float32 logits ``[batch, num_classes]``."""
    del train  # no dropout, no BatchNorm
    x = _flatten(x)
    logits = layers.torch_dense(self.num_classes, x.shape[-1], self.dtype, "dense")(x)
    return logits.astype(jnp.float32)
