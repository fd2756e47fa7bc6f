"""The train and eval steps, and their jitted, sharded forms.

Every schedule (xi, learning rate, cyclical hyper-parameters) is evaluated at ``state.step`` inside
the step, so one compiled program serves the whole run; the step also folds ``state.step`` into
the dropout key. Metrics are means over the global batch, computed on device and fetched by the
host only when it logs.
"""

from collections.abc import Callable, Mapping
import functools

import jax
import jax.numpy as jnp
import optax

from cfl_jax import metrics as metrics_lib
from cfl_jax.training import sharding
from cfl_jax.training.objective import LossFn
from cfl_jax.training.state import TrainState

Batch = Mapping[str, jax.Array]


def _variables(state: TrainState, params) -> dict:
  return {"params": params, "batch_stats": state.batch_stats}


def train_step(state: TrainState, batch: Batch, rng: jax.Array, *, loss_fn: LossFn,
               schedules: Mapping[str, optax.Schedule]) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch.

  Args:
    state: the train state.
    batch: ``{'image': [B, H, W, C], 'label': int [B]}``.
    rng: the run's base key; the step uses ``fold_in(rng, state.step)`` for dropout.
    loss_fn: ``loss_fn(logits, labels, xi) -> [B]`` (see ``objective.get_loss_fn``).
    schedules: ``{'xi': ..., 'learning_rate': ..., and optionally 'temperature', 'weight_decay',
      'grad_clip_norm'}``; each is read at ``state.step`` and returned as a metric, and a
      ``'temperature'`` divides the training logits before the loss.

  Returns:
    The new state and ``{'loss', 'accuracy', 'grad_norm', **schedule values}`` (scalars).
    ``loss`` is the mean training objective (float32, also under bfloat16 compute); ``accuracy``
    is measured on the unscaled logits.
  """
  hyper = {name: schedule(state.step) for name, schedule in schedules.items()}
  dropout_rng = jax.random.fold_in(rng, state.step)

  def objective(params):
    logits, updates = state.apply_fn(
        _variables(state, params), batch["image"], train=True, mutable=["batch_stats"],
        rngs={"dropout": dropout_rng})
    logits = logits.astype(jnp.float32)
    scaled = logits / hyper["temperature"] if "temperature" in hyper else logits
    loss = jnp.mean(loss_fn(scaled, batch["label"], hyper["xi"]))
    return loss, (logits, updates.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
      state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == batch["label"])
  return state, {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads),
                 **hyper}


def eval_step(state: TrainState, batch: Batch, *, num_classes: int) -> dict[str, jax.Array]:
  """Per-class counts and summed cross-entropy of a padded eval batch.

  Args:
    state: the train state (BatchNorm in inference mode).
    batch: ``{'image', 'label', 'mask': bool [B]}``; masked rows are padding.
    num_classes: length of the count vectors.

  Returns:
    ``{'correct': [C], 'total': [C], 'loss_sum': []}``, additive over batches.
  """
  logits = state.apply_fn(_variables(state, state.params), batch["image"], train=False)
  logits = logits.astype(jnp.float32)
  counts = metrics_lib.class_counts(logits, batch["label"], num_classes, where=batch["mask"])
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return {**counts, "loss_sum": jnp.sum(jnp.where(batch["mask"], cross_entropy, 0.0))}


def jit_train_step(mesh: jax.sharding.Mesh, *, loss_fn: LossFn,
                   schedules: Mapping[str, optax.Schedule]) -> Callable:
  """``train_step`` jitted for ``mesh``: state and rng replicated, batch sharded, state donated."""
  replicated, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return jax.jit(functools.partial(train_step, loss_fn=loss_fn, schedules=dict(schedules)),
                 in_shardings=(replicated, batched, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def jit_eval_step(mesh: jax.sharding.Mesh, *, num_classes: int) -> Callable:
  """``eval_step`` jitted for ``mesh``: state replicated, batch sharded, counts replicated."""
  replicated = sharding.replicated(mesh)
  return jax.jit(functools.partial(eval_step, num_classes=num_classes),
                 in_shardings=(replicated, sharding.batch_sharded(mesh)),
                 out_shardings=replicated)
