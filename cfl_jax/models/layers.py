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

# PyTorch's nn.Linear / nn.Conv1d default: kaiming_uniform(a=sqrt(5)) = U(+-1 / sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable[..., jax.Array]:
  """PyTorch's default bias initialisation, ``U(-1 / sqrt(fan_in), 1 / sqrt(fan_in))``."""
  bound = fan_in**-0.5

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
  """A dense layer initialised as PyTorch's ``nn.Linear(fan_in, features)``; float32 parameters."""
  return nn.Dense(features, kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in),
                  dtype=dtype, param_dtype=jnp.float32, name=name)


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


FEATURE_MODULE = "features"  # top-level name of the feature layer (see classify)


def classify(x: jax.Array, *, num_classes: int, dtype: Any, feature_dim: int = 0) -> jax.Array:
  """The end of the image models: an optional feature layer, then :class:`ClassifierHead`.

  Call it inside a model's compact ``__call__``: it adds the parameters ``head`` and, with
  ``feature_dim > 0``, ``features``: OLTR's ``use_fc`` layer, a dense layer from the pooled
  backbone features to ``feature_dim`` outputs and a ReLU (initialised as PyTorch's
  ``nn.Linear``), between the backbone and the classifier. Being outside ``head``, it trains in
  the backbone's parameter group (``cfl_jax.training.recipe.parameter_groups``).

  Args:
    x: backbone features ``[batch, H, W, C]``.
    num_classes: number of output logits.
    dtype: compute dtype; parameters are float32.
    feature_dim: width of the feature layer; 0 for none.

  Returns:
    float32 logits ``[batch, num_classes]``.
  """
  if feature_dim:
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)  # [batch, 1, 1, C]: the head's pool is exact
    x = nn.relu(torch_dense(feature_dim, x.shape[-1], dtype, FEATURE_MODULE)(pooled))
  return ClassifierHead(num_classes, dtype, name="head")(x)
