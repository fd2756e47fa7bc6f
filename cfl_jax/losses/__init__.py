"""The cyclical focal losses: softmax, sigmoid (multi-label) and fused large-vocabulary forms."""

from cfl_jax.losses.linear import linear_cyclical_focal_loss_with_integer_labels
from cfl_jax.losses.sigmoid import sigmoid_cyclical_focal_loss, sigmoid_high_confidence_loss
from cfl_jax.losses.softmax import (
    cyclical_focal_loss,
    cyclical_focal_loss_with_integer_labels,
    focal_loss,
    focal_loss_with_integer_labels,
    high_confidence_loss,
    high_confidence_loss_with_integer_labels,
)

__all__ = [
    "cyclical_focal_loss",
    "cyclical_focal_loss_with_integer_labels",
    "focal_loss",
    "focal_loss_with_integer_labels",
    "high_confidence_loss",
    "high_confidence_loss_with_integer_labels",
    "linear_cyclical_focal_loss_with_integer_labels",
    "sigmoid_cyclical_focal_loss",
    "sigmoid_high_confidence_loss",
]
