"""Image classifiers (Flax Linen) picked by name: ``get_model(name, num_classes=...)``.

Every model is called as ``model.apply(variables, images, train=...)`` on NHWC images (the
MNIST-1D models on signals ``[batch, 40, 1]``) and returns float32 logits ``[batch, num_classes]``.
BatchNorm statistics live in the ``'batch_stats'`` collection: pass ``mutable=['batch_stats']``
when ``train=True`` and take the updated statistics from the second return value.
"""

from collections.abc import Callable
import functools
import inspect
from typing import Any

from cfl_jax import _extras

_extras.require("cfl_jax.models", "train", ["flax", "safetensors", "etils"])

# pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import jax.numpy as jnp

from cfl_jax.models import mnist1d
from cfl_jax.models import resnet
from cfl_jax.models import tresnet
from cfl_jax.models.digits_cnn import DigitsCNN
from cfl_jax.models.weights import IMPORTABLE_MODELS, WEIGHTS_SOURCES, import_weights

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "digits_cnn": DigitsCNN,
    "tiny_cnn": functools.partial(DigitsCNN, stem_strides=4),
    "mnist1d_cnn": mnist1d.MNIST1DCNN,
    "mnist1d_mlp": mnist1d.MNIST1DMLP,
    "mnist1d_logistic": mnist1d.MNIST1DLogistic,
    "resnet20": resnet.ResNet20,
    "resnet32": resnet.ResNet32,
    "resnet56": resnet.ResNet56,
    "resnet18_cifar": resnet.ResNet18CIFAR,
    "resnet10": resnet.ResNet10,
    "resnet50": resnet.ResNet50,
    "resnet152": resnet.ResNet152,
    "tresnet_m": tresnet.TResNetM,
}

#: The names :func:`get_model` accepts.
MODEL_NAMES = tuple(_MODELS)


def get_model(name: str, *, num_classes: int, dtype: Any = jnp.float32,
              feature_dim: int = 0) -> nn.Module:
  """Builds the classifier registered under ``name``.

  Args:
    name: one of ``MODEL_NAMES``.
    num_classes: number of output logits, at least 2.
    dtype: compute dtype, a dtype or its name (``'float32'``, ``'bfloat16'``); parameters are
      always float32 and logits are returned in float32.
    feature_dim: width of a dense + ReLU feature layer before the classifier (OLTR's
      ``use_fc``: 512 on Places-LT; see ``cfl_jax.models.layers.classify``), for the models with a
      ``feature_dim`` attribute (the ResNets, TResNet, the digits and tiny CNNs); 0 for none.

  Returns:
    An unbound ``flax.linen.Module``; call ``init`` / ``apply`` with ``train=`` as described in
    the module docstring.

  Raises:
    ValueError: for an unknown name, ``num_classes < 2`` or a ``feature_dim`` the model cannot
      take.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = get_model('digits_cnn', num_classes=10, dtype='bfloat16')
    >>> x = jnp.zeros((4, 8, 8, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=False).dtype
    dtype('float32')
  """
  if name not in _MODELS:
    raise ValueError(f"Unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}.")
  if num_classes < 2:
    raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
  if feature_dim < 0:
    raise ValueError(f"feature_dim must be >= 0, got {feature_dim}.")
  options = {"feature_dim": feature_dim} if feature_dim else {}
  if options and not _takes_feature_dim(name):
    raise ValueError(f"Model {name!r} has no feature layer (feature_dim); models with one: "
                     f"{', '.join(n for n in MODEL_NAMES if _takes_feature_dim(n))}.")
  return _MODELS[name](num_classes=num_classes, dtype=jnp.dtype(dtype), **options)


def _takes_feature_dim(name: str) -> bool:
  return "feature_dim" in inspect.signature(_MODELS[name]).parameters


__all__ = [
    "IMPORTABLE_MODELS",
    "MODEL_NAMES",
    "WEIGHTS_SOURCES",
    "DigitsCNN",
    "get_model",
    "import_weights",
    "mnist1d",
    "resnet",
    "tresnet",
]
