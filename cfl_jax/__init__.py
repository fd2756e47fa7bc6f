"""cfl-jax: Cyclical Focal Loss (Smith 2022) for JAX, Flax and optax.

The loss functions and xi schedules live at the top level; training, data,
models and metrics are sub-packages imported on demand (``cfl_jax.training`` ...),
so ``import cfl_jax`` pulls in neither TensorFlow nor TFDS.
"""

from cfl_jax.losses import (
    cyclical_focal_loss,
    cyclical_focal_loss_with_integer_labels,
    focal_loss,
    focal_loss_with_integer_labels,
    high_confidence_loss,
    high_confidence_loss_with_integer_labels,
)
from cfl_jax.schedules import cyclical_schedule, follow_xi, reference_xi_schedule, xi_schedule
from cfl_jax.sigmoid_losses import sigmoid_cyclical_focal_loss, sigmoid_high_confidence_loss

__version__ = "0.1.0"

__all__ = [
    "cyclical_focal_loss",
    "cyclical_focal_loss_with_integer_labels",
    "cyclical_schedule",
    "focal_loss",
    "follow_xi",
    "focal_loss_with_integer_labels",
    "high_confidence_loss",
    "high_confidence_loss_with_integer_labels",
    "reference_xi_schedule",
    "sigmoid_cyclical_focal_loss",
    "sigmoid_high_confidence_loss",
    "xi_schedule",
]
