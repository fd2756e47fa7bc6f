"""cfl-jax: Cyclical Focal Loss (Smith 2022) for JAX, Flax and optax.

The loss functions and xi schedules live at the top level; training, data,
models and metrics are sub-packages imported on first use (``cfl_jax.training`` ...,
also as attributes after ``import cfl_jax``), so ``import cfl_jax`` pulls in neither
TensorFlow nor TFDS.
"""

import importlib

from cfl_jax.losses import (
    cyclical_focal_loss,
    cyclical_focal_loss_with_integer_labels,
    focal_loss,
    focal_loss_with_integer_labels,
    high_confidence_loss,
    high_confidence_loss_with_integer_labels,
    linear_cyclical_focal_loss_with_integer_labels,
    sigmoid_cyclical_focal_loss,
    sigmoid_high_confidence_loss,
)
from cfl_jax.schedules import cyclical_schedule, follow_xi, reference_xi_schedule, xi_schedule

__version__ = "0.1.0"

# Sub-packages, imported on first attribute access (none of them imports TensorFlow).
_SUBPACKAGES = ("data", "metrics", "models", "training")


def __getattr__(name: str):
  if name in _SUBPACKAGES:
    return importlib.import_module(f"cfl_jax.{name}")
  raise AttributeError(f"module 'cfl_jax' has no attribute {name!r}")


__all__ = [
    "cyclical_focal_loss",
    "cyclical_focal_loss_with_integer_labels",
    "cyclical_schedule",
    "focal_loss",
    "follow_xi",
    "focal_loss_with_integer_labels",
    "high_confidence_loss",
    "high_confidence_loss_with_integer_labels",
    "linear_cyclical_focal_loss_with_integer_labels",
    "reference_xi_schedule",
    "sigmoid_cyclical_focal_loss",
    "sigmoid_high_confidence_loss",
    "xi_schedule",
]
