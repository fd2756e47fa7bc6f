"""Layers shared by every model of the package: convolution, BatchNorm, classifier head.

The two factories return constructors of Flax modules, so a model writes ``conv(64, 3, 2)`` and
``norm()`` and all models agree on initialisation, padding, BatchNorm momentum and the compute /
parameter dtypes.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# He et al. (2015) normal initialisation over fan-out, as in torchvision's ResNets.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv_factory(dtype: jnp.dtype) -> Callable[..., nn.Module]:
  """Bias-free square convolution with symmetric ``kernel // 2`` padding (PyTorch-style).

  Args:
    dtype: compute dtype (e.g. ``jnp.bfloat16``); kernels are stored in float32.

  Returns:
    ``conv(features, kernel_size, strides=1, name=None) -> nn.Conv`` over NHWC inputs.
  """

  def conv(features: int, kernel_size: int, strides: int = 1, name: str | None = None) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=kernel_size // 2,
        use_bias=False,
        kernel_init=he_normal,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )

  return conv


def norm_factory(dtype: jnp.dtype, *, train: bool) -> Callable[..., nn.BatchNorm]:
  """BatchNorm over the batch in training, over the running statistics in evaluation.

  Momentum 0.9 and epsilon 1e-5 match PyTorch's defaults (its momentum 0.1). Statistics are
  reduced in float32 even for bfloat16 compute; running averages live in the ``'batch_stats'``
  collection. Under ``jax.jit`` with a batch sharded over devices the statistics are those of the
  global batch (no ``axis_name`` needed).

  Args:
    dtype: compute dtype; scale and bias are stored in float32.
    train: normalise with batch statistics and update the running averages.

  Returns:
    ``norm(name=None) -> nn.BatchNorm``.
  """
  return functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=dtype,
      param_dtype=jnp.float32,
  )


class ClassifierHead(nn.Module):
  """Global mean pool over height and width, then a dense layer; float32 logits.

  Attributes:
    num_classes: number of output logits.
    dtype: compute dtype of the dense layer; its parameters are float32.
  """

  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps features ``[batch, H, W, C]`` to float32 logits ``[batch, num_classes]``."""
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="dense")(x)
    return x.astype(jnp.float32)
