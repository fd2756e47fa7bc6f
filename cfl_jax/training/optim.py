"""The optimizer and every schedule of a run, as optax pieces.

* :func:`learning_rate_schedule`: warm-up then cosine / step / constant.
* :func:`cyclical_schedules`: general cyclical training (SPEC section 4): weight decay, gradient
  clipping threshold and softmax temperature, each ``(1 - xi) * max + xi * min`` on the run's xi,
  so they all share the loss's cyclical factor.
* :func:`build_optimizer`: ``clip -> [adam] -> masked weight decay -> [momentum] -> -lr``, where
  the clip threshold and the decay may be schedules (read at the optimizer's own step count, which
  advances with ``state.step``).
"""

from collections.abc import Mapping

import jax
import ml_collections
import optax

import cfl_jax

OPTIMIZER_NAMES = ("sgd", "adamw")
LR_SCHEDULE_NAMES = ("cosine", "step", "constant")

# config.cyclical entry -> name of the hyper-parameter it drives (and of its logged metric).
CYCLICAL_HYPERPARAMETERS = {
    "weight_decay": "weight_decay",
    "grad_clip": "grad_clip_norm",
    "temperature": "temperature",
}


def learning_rate_schedule(optimizer_config: ml_collections.ConfigDict, *, total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from ``warmup_init_learning_rate``, then the ``lr_schedule`` of the config.

  ``cosine`` decays to 0 at ``total_steps``; ``step`` multiplies the rate by ``lr_decay_factor``
  at each epoch in ``lr_decay_epochs``; ``constant`` holds it.

  Raises:
    ValueError: if the warm-up does not end before training does.
  """
  c = optimizer_config
  warmup = round(c.warmup_epochs * steps_per_epoch)
  if warmup >= total_steps:
    raise ValueError(f"optimizer.warmup_epochs={c.warmup_epochs} gives {warmup} warm-up steps, "
                     f"not fewer than the run's {total_steps} steps.")
  if c.lr_schedule == "cosine":
    main = optax.cosine_decay_schedule(c.learning_rate, total_steps - warmup)
  elif c.lr_schedule == "step":
    main = optax.piecewise_constant_schedule(
        c.learning_rate,
        {epoch * steps_per_epoch - warmup: c.lr_decay_factor for epoch in c.lr_decay_epochs})
  else:
    main = optax.constant_schedule(c.learning_rate)
  if not warmup:
    return main
  ramp = optax.linear_schedule(c.warmup_init_learning_rate, c.learning_rate, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def cyclical_schedules(cyclical_config: ml_collections.ConfigDict,
                       xi: optax.Schedule) -> dict[str, optax.Schedule]:
  """Schedules of the enabled ``config.cyclical`` entries, keyed as ``CYCLICAL_HYPERPARAMETERS``."""
  return {
      hyper: cfl_jax.follow_xi(xi, cyclical_config[entry].min, cyclical_config[entry].max)
      for entry, hyper in CYCLICAL_HYPERPARAMETERS.items()
      if cyclical_config[entry].enabled
  }


def weight_decay_mask(params) -> object:
  """True on weight matrices and conv kernels (ndim > 1); False on biases and norm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def build_optimizer(optimizer_config: ml_collections.ConfigDict, *,
                    learning_rate: optax.ScalarOrSchedule,
                    schedules: Mapping[str, optax.Schedule] | None = None
                    ) -> optax.GradientTransformation:
  """The optax transformation of ``optimizer_config``.

  Args:
    optimizer_config: ``config.optimizer``.
    learning_rate: a float or a schedule (see :func:`learning_rate_schedule`).
    schedules: optional ``'weight_decay'`` / ``'grad_clip_norm'`` schedules that replace the
      config's constants (see :func:`cyclical_schedules`); other keys are ignored.

  Returns:
    ``sgd``: L2 weight decay added to the gradient before (Nesterov) momentum, as in PyTorch.
    ``adamw``: decoupled weight decay after the Adam scaling, as ``optax.adamw``.
    Either is preceded by global-norm clipping when a threshold is set.
  """
  c, schedules = optimizer_config, schedules or {}
  weight_decay = schedules.get("weight_decay", c.weight_decay)
  clip = schedules.get("grad_clip_norm", c.grad_clip_norm)
  parts = []
  if callable(clip) or clip > 0:
    parts.append(optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=clip))
  if c.name == "adamw":
    parts.append(optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps))
  if callable(weight_decay) or weight_decay > 0:
    parts.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
  if c.name == "sgd" and c.momentum > 0:
    parts.append(optax.trace(decay=c.momentum, nesterov=c.nesterov))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)
