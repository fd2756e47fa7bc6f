"""What a config asks for, built in one place: the loss by name, every schedule, the optimizer.

* :func:`get_loss_fn`: the training loss named by ``config.loss.name`` as
  ``loss_fn(logits, labels, xi) -> [batch]``.
* :func:`xi_schedule`: the loss's xi (paper or reference form, step or epoch granular).
* :func:`learning_rate_schedule`: warm-up, then cosine to a floor and a cool-down, step decay
  or constant.
* :func:`cyclical_schedules`: general cyclical training (docs/method.md §4): weight decay, gradient
  clipping threshold and softmax temperature, each ``(1 - xi) * max + xi * min`` on the run's xi,
  so they all share the loss's cyclical factor.
* :func:`build_optimizer`: ``clip -> [adam] -> masked weight decay -> [momentum] -> -lr``,
  the last four per parameter group (backbone, classifier head) when the head has its own
  learning rate; its learning rate, weight decay and clipping threshold are set each step
  (:func:`set_hyperparameters`) from the plan's schedules.
* :class:`Plan`: the run's durations in steps and all of its schedules, read at ``state.step``.
"""

from collections.abc import Callable, Collection, Mapping
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

import cfl_jax

LossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

OPTIMIZER_NAMES = ("sgd", "adamw")
LR_SCHEDULE_NAMES = ("cosine", "step", "constant")
WEIGHT_DECAY_TARGETS = ("kernels", "all")
HEAD_MODULE = "head"  #: top-level module name of every classifier's last layer (cfl_jax.models)

# config.cyclical entry -> name of the hyper-parameter it drives (and of its logged metric).
CYCLICAL_HYPERPARAMETERS = {
    "weight_decay": "weight_decay",
    "grad_clip": "grad_clip_norm",
    "temperature": "temperature",
}


def _nan_outside_classes(loss, logits, labels):
  """``loss`` with NaN (as every cfl_jax loss) where a label is outside ``[0, C)``."""
  return jnp.where((labels >= 0) & (labels < logits.shape[-1]), loss, jnp.nan)


def _cross_entropy(logits, labels, *, label_smoothing):
  """optax's cross-entropy, for integer labels or class probabilities (mixup)."""
  if labels.ndim == logits.ndim:
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(labels, label_smoothing))
  if label_smoothing:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets)
  else:
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return _nan_outside_classes(loss, logits, labels)


def _sigmoid_cyclical_focal(logits, labels, xi, *, label_smoothing, **hyper):
  """Multi-label (sigmoid) CFL with one positive per example: one-hot targets (or the class
  probabilities of mixup), loss summed over the classes."""
  probabilities = labels.ndim == logits.ndim
  targets = labels if probabilities else jax.nn.one_hot(labels, logits.shape[-1])
  loss = cfl_jax.sigmoid_cyclical_focal_loss(
      logits, optax.smooth_labels(targets, label_smoothing), xi, **hyper).sum(axis=-1)
  return loss if probabilities else _nan_outside_classes(loss, logits, labels)


def _by_label_kind(integer_fn, probability_fn):
  """One loss for both label kinds: integer ``[batch]`` or probabilities ``[batch, C]``."""

  def loss(logits, labels, *args, **hyper):
    fn = probability_fn if labels.ndim == logits.ndim else integer_fn
    return fn(logits, labels, *args, **hyper)

  return loss


_CYCLICAL_FOCAL = _by_label_kind(cfl_jax.cyclical_focal_loss_with_integer_labels,
                                 cfl_jax.cyclical_focal_loss)


def _asymmetric_focal(logits, labels, **hyper):
  r"""timm's ``ASLSingleLabel`` (the authors' ``--focal_loss asym`` baseline): target weight
  :math:`(1 - p_t)^{\gamma_{lc}}`, non-target weight :math:`p_j^{\gamma_{neg}}`, smoothing inside
  the weighted sum; the reference form at xi = 0 (docs/method.md §3)."""
  return _CYCLICAL_FOCAL(logits, labels, 0.0, **hyper)

# name -> (function of (logits, labels, [xi,] **hyper), {function keyword: config.loss key}).
# Probability labels (mixup) take the probability-label variants; the reference form collapses
# them to their argmax class and re-smooths, as the authors' code does (docs/method.md §3).
_LOSSES = {
    "cross_entropy": (_cross_entropy, {}),
    "focal": (_by_label_kind(cfl_jax.focal_loss_with_integer_labels, cfl_jax.focal_loss),
              {"gamma": "gamma_lc"}),
    "high_confidence": (_by_label_kind(cfl_jax.high_confidence_loss_with_integer_labels,
                                       cfl_jax.high_confidence_loss), {"gamma": "gamma_hc"}),
    "cyclical_focal": (_CYCLICAL_FOCAL, {"gamma_hc": "gamma_hc", "gamma_lc": "gamma_lc"}),
    "cyclical_focal_reference": (_CYCLICAL_FOCAL, {"gamma_hc": "gamma_hc", "gamma_lc": "gamma_lc",
                                                   "gamma_neg": "gamma_neg"}),
    "asymmetric_focal": (_asymmetric_focal, {"gamma_lc": "gamma_lc", "gamma_neg": "gamma_neg"}),
    "sigmoid_cyclical_focal": (_sigmoid_cyclical_focal,
                               {"gamma_hc": "gamma_hc", "gamma_lc": "gamma_lc"}),
}
_CYCLICAL = ("cyclical_focal", "cyclical_focal_reference", "sigmoid_cyclical_focal")

#: The values of the config's ``loss.name``, for :func:`get_loss_fn`.
LOSS_NAMES = tuple(_LOSSES)


def get_loss_fn(loss_config: ml_collections.ConfigDict) -> LossFn:
  """The per-example loss named by ``loss_config.name`` with its hyper-parameters bound.

  Args:
    loss_config: the ``config.loss`` block (``name``, ``gamma_hc``, ``gamma_lc``, ``gamma_neg``,
      ``label_smoothing``); each loss reads only the keys it uses.

  Returns:
    ``loss_fn(logits [batch, C], labels, xi scalar) -> [batch] float32`` with ``labels`` either
    int ``[batch]`` or class probabilities ``[batch, C]`` (mixup); losses that do not mix
    (cross-entropy, focal, high-confidence) ignore ``xi``.

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


def learning_rate_schedule(optimizer_config: ml_collections.ConfigDict, *, total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from ``warmup_init_learning_rate``, then the ``lr_schedule`` of the config.

  With ``w`` warm-up and ``k`` cool-down steps out of ``T``, peak ``lr`` and floor ``m``:
  ``cosine`` decays as ``m + (lr - m) (1 + cos(pi t / (T - w - k))) / 2`` over ``t in [0, T - w
  - k]`` and holds ``m`` for the last ``k`` steps (timm's cosine with cool-down epochs);
  ``step`` multiplies the rate by ``lr_decay_factor`` at each epoch in ``lr_decay_epochs``;
  ``constant`` holds it.

  Examples:
    >>> c = ml_collections.ConfigDict(dict(learning_rate=0.1, min_learning_rate=0.01,
    ...     warmup_epochs=1.0, warmup_init_learning_rate=0.0, cooldown_epochs=1.0,
    ...     lr_schedule='cosine', lr_decay_epochs=(), lr_decay_factor=0.1))
    >>> lr = learning_rate_schedule(c, total_steps=40, steps_per_epoch=10)
    >>> [round(float(lr(s)), 4) for s in (0, 5, 10, 20, 30, 35)]
    [0.0, 0.05, 0.1, 0.055, 0.01, 0.01]

  Raises:
    ValueError: if the warm-up and cool-down do not leave steps for the main schedule.
  """
  c = optimizer_config
  warmup = round(c.warmup_epochs * steps_per_epoch)
  cooldown = round(c.cooldown_epochs * steps_per_epoch)
  if warmup + cooldown >= total_steps:
    raise ValueError(f"optimizer.warmup_epochs={c.warmup_epochs} and cooldown_epochs="
                     f"{c.cooldown_epochs} give {warmup} warm-up and {cooldown} cool-down steps, "
                     f"not fewer than the run's {total_steps} steps.")
  if c.lr_schedule == "cosine":
    main = optax.cosine_decay_schedule(c.learning_rate, total_steps - warmup - cooldown,
                                       alpha=c.min_learning_rate / c.learning_rate)
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


def parameter_groups(params) -> object:
  """``'head'`` on the classifier (top-level module :data:`HEAD_MODULE`), else ``'backbone'``.

  Examples:
    >>> parameter_groups({'head': {'dense': {'kernel': 0}}, 'stem_conv': {'kernel': 0}})
    {'head': {'dense': {'kernel': 'head'}}, 'stem_conv': {'kernel': 'backbone'}}
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "head" if path[0].key == HEAD_MODULE else "backbone", params)


def _update_rule(c: ml_collections.ConfigDict, learning_rate, weight_decay
                 ) -> list[optax.GradientTransformation]:
  """``[adam] -> [weight decay] -> [momentum] -> -learning_rate`` of one parameter group."""
  parts = []
  if c.name == "adamw":
    parts.append(optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps))
  if weight_decay is not None:
    mask = weight_decay_mask if c.weight_decay_on == "kernels" else None
    parts.append(optax.add_decayed_weights(weight_decay, mask=mask))
  if c.name == "sgd" and c.momentum > 0:
    parts.append(optax.trace(decay=c.momentum, nesterov=c.nesterov))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return parts


def build_optimizer(optimizer_config: ml_collections.ConfigDict, *,
                    scheduled: Collection[str] = ()) -> optax.GradientTransformation:
  """The optax transformation of ``optimizer_config``, its hyper-parameters in its state.

  The update rule is wrapped in ``optax.inject_hyperparams``: ``opt_state.hyperparams`` holds
  ``learning_rate`` and, when used, ``weight_decay`` and ``grad_clip_norm``, starting at the
  config's values. To follow schedules, set them before each update with
  :func:`set_hyperparameters`, as the train step does from :attr:`Plan.schedules` at
  ``state.step``: no schedule reads the optimizer's own counts (which a skipped update leaves
  where they were), so all of them stay in step with the rest of the run.

  Args:
    optimizer_config: ``config.optimizer``.
    scheduled: ``'weight_decay'`` / ``'grad_clip_norm'`` when a schedule will set them (see
      :func:`cyclical_schedules`), so they are kept even where the config's constant is 0;
      other names are ignored.

  Returns:
    ``sgd``: L2 weight decay added to the gradient before (Nesterov) momentum, as in PyTorch.
    ``adamw``: decoupled weight decay after the Adam scaling, as ``optax.adamw``.
    Weight decay applies to kernels only or, with ``weight_decay_on='all'``, to every parameter
    (as the OLTR and LDAM code). With ``head_learning_rate > 0`` the classifier (see
    :func:`parameter_groups`) follows the learning rate scaled by ``head_learning_rate /
    optimizer_config.learning_rate`` through ``optax.multi_transform``. Either is preceded by
    global-norm clipping (over all parameters) when a threshold is set.

  Examples:
    >>> from cfl_jax.training import resolve_config
    >>> c = resolve_config({'optimizer': {'momentum': 0.0, 'weight_decay': 0.0}}).optimizer
    >>> tx = build_optimizer(c)  # plain SGD
    >>> params = {'w': jnp.ones(2)}
    >>> state = set_hyperparameters(tx.init(params), {'learning_rate': 0.5})
    >>> tx.update({'w': jnp.ones(2)}, state, params)[0]
    {'w': Array([-0.5, -0.5], dtype=float32)}
  """
  c = optimizer_config
  hyperparameters = {"learning_rate": c.learning_rate}
  if c.weight_decay > 0 or "weight_decay" in scheduled:
    hyperparameters["weight_decay"] = c.weight_decay
  if c.grad_clip_norm > 0 or "grad_clip_norm" in scheduled:
    hyperparameters["grad_clip_norm"] = c.grad_clip_norm

  def update_rule(learning_rate, weight_decay=None, grad_clip_norm=None):
    parts = [] if grad_clip_norm is None else [optax.clip_by_global_norm(grad_clip_norm)]
    if c.head_learning_rate:
      head_rate = learning_rate * (c.head_learning_rate / c.learning_rate)
      parts.append(optax.multi_transform(
          {"backbone": optax.chain(*_update_rule(c, learning_rate, weight_decay)),
           "head": optax.chain(*_update_rule(c, head_rate, weight_decay))}, parameter_groups))
    else:
      parts += _update_rule(c, learning_rate, weight_decay)
    return optax.chain(*parts)

  return optax.inject_hyperparams(update_rule)(**hyperparameters)


def set_hyperparameters(opt_state: optax.InjectStatefulHyperparamsState,
                        values: Mapping[str, jax.Array]) -> optax.InjectStatefulHyperparamsState:
  """``opt_state`` of :func:`build_optimizer` with the hyper-parameters it has set from
  ``values`` (at their dtype); other entries of ``values`` (e.g. xi) are ignored."""
  return opt_state._replace(hyperparams={
      name: jnp.asarray(values.get(name, value), value.dtype)
      for name, value in opt_state.hyperparams.items()})


@dataclasses.dataclass(frozen=True)
class Plan:
  """The run's durations, in steps, and its schedules (all read at ``state.step``).

  Attributes:
    steps_per_epoch: optimizer steps in one epoch.
    total_steps: the run's length in steps.
    eval_every_steps: steps between evaluations; 0 evaluates only at the end.
    schedules: name -> ``optax.Schedule`` of the step: ``xi``, ``learning_rate`` and each enabled
      cyclical hyper-parameter.
  """

  steps_per_epoch: int
  total_steps: int
  eval_every_steps: int  # 0: only at the end
  schedules: dict[str, optax.Schedule]

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, *, steps_per_epoch: int) -> "Plan":
    """Turns the config's durations into steps and builds xi, the learning rate and the
    cyclical hyper-parameters as schedules of the step."""
    total_steps = (config.num_train_steps if config.num_train_steps > 0
                   else config.num_epochs * steps_per_epoch)
    xi = xi_schedule(config.loss, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    learning_rate = learning_rate_schedule(config.optimizer, total_steps=total_steps,
                                           steps_per_epoch=steps_per_epoch)
    schedules = {"xi": xi, "learning_rate": learning_rate,
                 **cyclical_schedules(config.cyclical, xi)}
    return cls(steps_per_epoch, total_steps, config.eval_every_epochs * steps_per_epoch,
               schedules)

  def optimizer(self, optimizer_config: ml_collections.ConfigDict
                ) -> optax.GradientTransformation:
    """:func:`build_optimizer` with room for every hyper-parameter this plan schedules."""
    return build_optimizer(optimizer_config, scheduled=tuple(self.schedules))
