"""The train state: parameters, optimizer state, step and BatchNorm statistics."""

from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import optax


class TrainState(train_state.TrainState):
  """``flax.training.train_state.TrainState`` plus the model's ``batch_stats`` collection.

  ``batch_stats`` is an empty dict for models without BatchNorm.
  """

  batch_stats: Any


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...]) -> TrainState:
  """Initialises ``model`` on a dummy batch of one ``image_shape`` image and wraps it.

  Args:
    model: a Linen classifier called as ``model.apply(variables, images, train=...)``.
    tx: the optimizer.
    rng: the parameter-initialisation key.
    image_shape: ``(H, W, C)``.

  Returns:
    A :class:`TrainState` at step 0. Call it under ``jax.jit`` with ``out_shardings`` to place it
    (see :func:`cfl_jax.training.sharding.replicated`).
  """
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats", {}))
