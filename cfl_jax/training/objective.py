"""Training losses picked by name, and the xi schedule that drives the cyclical ones.

Every loss is returned as ``loss_fn(logits, labels, xi) -> [batch]`` (integer labels, one value per
example) so the train step treats them alike; losses that do not mix (cross-entropy, focal,
high-confidence) ignore ``xi``.
"""

from collections.abc import Callable
import functools

import jax
import ml_collections
import optax

import cfl_jax

LossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _cross_entropy(logits, labels, *, label_smoothing):
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


# name -> (function of (logits, labels, [xi,] **hyper), {function keyword: config.loss key}).
_LOSSES = {
    "cross_entropy": (_cross_entropy, {}),
    "focal": (cfl_jax.focal_loss_with_integer_labels, {"gamma": "gamma_lc"}),
    "high_confidence": (cfl_jax.high_confidence_loss_with_integer_labels, {"gamma": "gamma_hc"}),
    "cyclical_focal": (cfl_jax.cyclical_focal_loss_with_integer_labels,
                       {"gamma_hc": "gamma_hc", "gamma_lc": "gamma_lc"}),
    "cyclical_focal_reference": (cfl_jax.cyclical_focal_loss_with_integer_labels,
                                 {"gamma_hc": "gamma_hc", "gamma_lc": "gamma_lc",
                                  "gamma_neg": "gamma_neg"}),
}
_CYCLICAL = ("cyclical_focal", "cyclical_focal_reference")

LOSS_NAMES = tuple(_LOSSES)


def get_loss_fn(loss_config: ml_collections.ConfigDict) -> LossFn:
  """The per-example loss named by ``loss_config.name`` with its hyper-parameters bound.

  Args:
    loss_config: the ``config.loss`` block (``name``, ``gamma_hc``, ``gamma_lc``, ``gamma_neg``,
      ``label_smoothing``); each loss reads only the keys it uses.

  Returns:
    ``loss_fn(logits [batch, C], labels [batch] int, xi scalar) -> [batch] float32``.

  Raises:
    ValueError: for an unknown name.
  """
  if loss_config.name not in _LOSSES:
    raise ValueError(f"Unknown loss {loss_config.name!r}; known: {', '.join(LOSS_NAMES)}.")
  fn, keys = _LOSSES[loss_config.name]
  bound = functools.partial(fn, label_smoothing=loss_config.label_smoothing,
                            **{arg: loss_config[key] for arg, key in keys.items()})
  if loss_config.name in _CYCLICAL:
    return bound
  return lambda logits, labels, xi: bound(logits, labels)


def xi_schedule(loss_config: ml_collections.ConfigDict, *, total_steps: int,
                steps_per_epoch: int) -> optax.Schedule:
  """The xi schedule of ``loss_config``: paper or reference form, step or epoch granular.

  Args:
    loss_config: ``config.loss`` (``cyclical_factor``, ``xi_schedule``, ``xi_granularity``,
      ``xi_first_epoch``).
    total_steps: optimizer steps of the whole run.
    steps_per_epoch: optimizer steps per epoch.

  Returns:
    ``step -> xi`` (float32), evaluated on ``state.step`` inside the jitted step.

  Raises:
    ValueError: for an epoch-granular schedule whose length is not a whole number of epochs.
  """
  factor = loss_config.cyclical_factor
  if loss_config.xi_schedule == "reference":
    if total_steps % steps_per_epoch:
      raise ValueError(
          f"loss.xi_schedule='reference' counts whole epochs, but the run's {total_steps} steps "
          f"are not a multiple of the {steps_per_epoch} steps per epoch; set num_train_steps=-1.")
    return cfl_jax.reference_xi_schedule(
        total_steps // steps_per_epoch, steps_per_epoch, cyclical_factor=factor,
        first_epoch=loss_config.xi_first_epoch)
  by_epoch = loss_config.xi_granularity == "epoch"
  return cfl_jax.xi_schedule(total_steps, cyclical_factor=factor,
                             steps_per_epoch=steps_per_epoch if by_epoch else None)
