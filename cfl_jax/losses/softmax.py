r"""Softmax cyclical focal loss and its components, beside :func:`optax.softmax_cross_entropy`.

Every function is pure, returns one loss per example and accepts ``axis=`` and
``where=`` like optax; shapes, masks, xi, bad labels and dtypes follow the input
policy of :mod:`cfl_jax.losses`.

With :math:`p = \operatorname{softmax}(z)`, target class :math:`t` and mixing
weight :math:`\xi \in [0, 1]` (see :mod:`cfl_jax.schedules`):

.. math::
  \mathrm{FL}  &= -(1 - p_t)^{\gamma_{lc}} \log p_t \\
  \mathrm{HC}  &= -(1 + p_t)^{\gamma_{hc}} \log p_t \\
  \mathrm{CFL} &= \xi\, \mathrm{HC} + (1 - \xi)\, \mathrm{FL}

Two forms are offered (``gamma_neg``):

* ``gamma_neg=None`` (paper form): every class :math:`j` carrying label mass
  :math:`q_j` contributes :math:`-q_j\,[\xi(1+p_j)^{\gamma_{hc}} +
  (1-\xi)(1-p_j)^{\gamma_{lc}}]\log p_j`.
* ``gamma_neg=g`` (the authors' reference code): the target weight is as above,
  each non-target class gets :math:`\xi + (1-\xi)\,p_j^{g}`, and label smoothing
  enters inside the weighted sum. With ``label_smoothing=0.1, gamma_neg=gamma_lc``
  this equals what the reference PyTorch code computes per example.

Numerics: :math:`\log p_t` and :math:`\log(1 - p_t)` are both computed from a
log-sum-exp over the non-target logits, so values, gradients and Hessians stay
finite for every :math:`\gamma \ge 0` (including :math:`0 < \gamma < 1`) at any
finite logits, also when :math:`p_t` rounds to 1 in float32. With integer labels
the loss follows from per-row statistics (the row maximum, :math:`z_t`, the non-target
exponential sum and, for the reference form, its weighted non-target sums) by the one
per-example function the fused loss calls too (``cfl_jax.losses._core``).

References:
  Smith, `Cyclical Focal Loss <https://arxiv.org/abs/2202.08978>`_, 2022.
  Lin et al., `Focal Loss for Dense Object Detection
  <https://arxiv.org/abs/1708.02002>`_, 2017.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cfl_jax.losses import _common, _core

ArrayLike = jax.typing.ArrayLike

__all__ = [
    "cyclical_focal_loss",
    "cyclical_focal_loss_with_integer_labels",
    "focal_loss",
    "focal_loss_with_integer_labels",
    "high_confidence_loss",
    "high_confidence_loss_with_integer_labels",
]


# ----------------------------------------------------------------------------
# Inputs (the policy of cfl_jax.losses)
# ----------------------------------------------------------------------------


class _Inputs(NamedTuple):
  """Canonicalised inputs: classes on the last axis, float32-or-wider logits."""
  logits: jax.Array          # [..., C]
  labels: jax.Array          # [...] int32 or [..., C] float
  example_mask: jax.Array | None   # [...] bool
  class_mask: jax.Array | None     # [..., C] bool
  xi: jax.Array | float      # static 0 or 1, [] or [...]
  class_weights: jax.Array | None  # [C]


def _canonicalize(logits, labels, xi, *, integer_labels, class_weights, axis,
                  where, logit_soft_cap=None) -> _Inputs:
  """Checks shapes and dtypes and moves the class axis last."""
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  _common.check_float("logits", logits)
  if logits.ndim < 1:
    raise ValueError("logits must have a class axis, got a scalar.")
  if not isinstance(axis, numbers.Integral) or not -logits.ndim <= axis < logits.ndim:
    raise ValueError(
        f"axis must be an int in [-{logits.ndim}, {logits.ndim}), got {axis!r}.")
  axis = int(axis)
  where = _common.mask(where, logits.shape, axis)
  logits = jnp.moveaxis(logits, axis, -1)
  num_classes = logits.shape[-1]
  if isinstance(num_classes, int) and num_classes < 2:  # not checked when symbolic (jax.export)
    raise ValueError(f"logits need at least 2 classes on axis {axis}, got {num_classes}.")
  batch_shape = logits.shape[:-1]
  dtype = _common.compute_dtype(logits)
  logits = _common.soft_cap(logits.astype(dtype), logit_soft_cap)

  if integer_labels:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(
          f"labels must be integer class indices, got dtype {labels.dtype}; use "
          "the variant without `_with_integer_labels` for probability labels.")
    _common.check_index_shape(
        labels, batch_shape, num_classes,
        expected=f"logits shape {logits.shape} without its class axis",
        alternative=", or use the variant without `_with_integer_labels`")
  else:
    # Integer (one-hot) labels are probabilities too, as in optax.
    if not any(jnp.issubdtype(labels.dtype, kind) for kind in (jnp.floating, jnp.integer, bool)):
      raise ValueError(
          f"labels must be class probabilities, got dtype {labels.dtype}; use the "
          "`_with_integer_labels` variant for indices.")
    labels = jnp.moveaxis(labels, axis, -1) if labels.ndim == logits.ndim else labels
    if labels.shape != logits.shape:
      indices = labels.shape == batch_shape and jnp.issubdtype(labels.dtype, jnp.integer)
      raise ValueError(
          f"labels shape {labels.shape} does not match logits shape {logits.shape}"
          + ("; integer labels of the batch shape look like class indices: use the "
             "`_with_integer_labels` variant" if indices else "") + ".")
    labels = labels.astype(dtype)

  xi = _common.batch_xi(xi, batch_shape, dtype, axis)
  class_weights = _common.class_vector("class_weights", class_weights, num_classes)
  if class_weights is not None:
    class_weights = class_weights.astype(dtype)

  example_mask = class_mask = None
  if where is not None and where.shape[-1] == 1:
    example_mask = jnp.broadcast_to(where[..., 0], batch_shape)
  elif where is not None:
    class_mask = jnp.broadcast_to(where, logits.shape)
    example_mask = jnp.any(class_mask, axis=-1)
    # Masked entries never reach a sum; zeroing them keeps garbage out of gradients.
    logits = jnp.where(class_mask, logits, 0.0)
  return _Inputs(logits, labels, example_mask, class_mask, xi, class_weights)


# ----------------------------------------------------------------------------
# Numerics
# ----------------------------------------------------------------------------


def _row_stats(logits, target, class_mask) -> _core.RowStats:
  r"""The row maximum :math:`m`, :math:`z_t` and :math:`\sum_{j \ne t} e^{z_j - m + K}`.

  The sum is over the kept classes, of the exponentials of :func:`_common.scaled_exp`
  (K = 60: no overflow below 1e12 classes), plus a floor of 1e-18 that keeps the second
  derivative of its log bounded (:mod:`cfl_jax.losses._core`); so :math:`\log(1 - p_t)`
  is exact down to :math:`1 - p_t \approx 10^{-44}` (below float32's smallest subnormal)
  and saturates near -101 beyond, where every focal weight is zero anyway. One max pass
  and one exp-sum pass over the logits, and a gradient of one elementwise pass plus a
  scatter at the target, like cross-entropy.
  """
  if class_mask is None:
    shift = jnp.max(logits, axis=-1)
    num_classes = logits.shape[-1]
  else:
    shift = jnp.max(logits, axis=-1, where=class_mask,
                    initial=jnp.finfo(logits.dtype).min)
    num_classes = jnp.sum(class_mask, axis=-1).astype(logits.dtype)
  shift = jax.lax.stop_gradient(shift)
  return _core.RowStats(
      shift=shift, target_logit=_common.at_target(logits, target), num_classes=num_classes,
      exp_sum=jnp.sum(_common.scaled_exp(logits, shift, class_mask, target), axis=-1))


def _masked(loss, example_mask):
  return loss if example_mask is None else jnp.where(example_mask, loss, 0.0)


def _integer_loss(inputs: _Inputs, *, xi, gamma_hc, gamma_lc, gamma_neg,
                  label_smoothing, z_loss):
  """The loss of :func:`cfl_jax.losses._core.loss_from_row_stats` from the dense statistics."""
  logits, labels = inputs.logits, inputs.labels.astype(jnp.int32)
  example_mask, class_mask, weights = inputs.example_mask, inputs.class_mask, inputs.class_weights
  if class_mask is not None:
    example_mask = example_mask & _common.at_target(class_mask, labels)
  if example_mask is not None:
    # Double-where: padded rows may hold garbage; keep their gradient exactly 0.
    logits = jnp.where(example_mask[..., None], logits, 0.0)
  stats = _row_stats(logits, labels, class_mask)
  if weights is not None:
    stats = stats._replace(target_weight=_common.at_target(weights, labels))
  if gamma_neg is not None and label_smoothing > 0:
    # Reference form: sum_N c_j [xi + (1 - xi) p_j^g] log p_j over the kept non-target N.
    stats = stats._replace(
        non_target_weight=_non_target_sum(jnp.ones_like(logits), 1.0, labels, class_mask,
                                          weights),
        non_target_logit=_non_target_sum(logits, stats.target_logit, labels, class_mask,
                                         weights))
    if gamma_neg > 0:
      focal = (_integer_focal_log_p_sum if _common.is_small_integer(gamma_neg)
               else _focal_log_p_sum)
      stats = stats._replace(focal_log_p_sum=lambda lse: focal(
          gamma_neg, logits, lse, stats.shift, labels, class_mask, weights))
  loss = _core.loss_from_row_stats(stats, xi=xi, gamma_hc=gamma_hc, gamma_lc=gamma_lc,
                                   gamma_neg=gamma_neg, label_smoothing=label_smoothing,
                                   z_loss=z_loss)
  return _masked(loss, example_mask)


def _non_target_sum(values, target_value, target, class_mask, weights):
  r""":math:`\sum_N c_j v_j`, per example: over all kept classes, minus the target's term.

  Subtracting ``target_value`` (:math:`v_t`) instead of masking the summand
  leaves a plain sum of the values, the form XLA:CPU's reduction kernels fuse
  cheaply; it rounds to about :math:`\epsilon\, c_t |v_t|`.
  """
  if weights is None:
    return jnp.sum(values, axis=-1, where=class_mask) - target_value
  return (jnp.sum(weights * values, axis=-1, where=class_mask)
          - _common.at_target(weights, target) * target_value)


def _focal_log_p_sum(gamma, logits, lse, shift, target, class_mask, weights):
  r""":math:`F = \sum_N c_j p_j^{g} \log p_j` with :math:`p_j = e^{z_j - \ell}`, per example.

  ``lse`` is :math:`\ell`, ``shift`` the row maximum :math:`m` (no gradient),
  :math:`N` the classes kept by ``class_mask`` other than ``target``, and
  ``weights`` the :math:`c_j` (``[C]`` or None). :math:`u^{g}` is written out once
  (it feeds both sums of :func:`cfl_jax.losses._core.focal_from_sums` and the gradient, which
  autodiff computes in one elementwise pass).
  """
  target_logit = _common.at_target(logits, target)
  target_power = jnp.exp(gamma * (target_logit - shift))
  powers = jnp.exp(gamma * (logits - shift[..., None]))
  power_sum = _non_target_sum(powers, target_power, target, class_mask, weights)
  moment = _non_target_sum(powers * logits, target_power * target_logit, target,
                           class_mask, weights)
  return _core.focal_from_sums(gamma, lse, shift, power_sum, moment)[0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _integer_focal_log_p_sum(gamma, logits, lse, shift, target, class_mask, weights):
  r""":func:`_focal_log_p_sum` for a small integer :math:`g`, without writing out :math:`u^{g}`.

  The powers are products of the exponentials the target term saves (zero off
  :math:`N`; no further ``exp``), scaled by :math:`2 e^{-K}` in one sum and
  :math:`e^{-K}` in the other: as two different expressions, XLA:CPU fuses each
  into its own reduction instead of writing :math:`u^{g}` out as a further
  ``[..., C]`` array. Autodiff would share them with the gradient and so write
  them out; the JVP is given instead, from the partial derivatives (at fixed
  :math:`\ell`, :math:`\partial \log p_j / \partial z_k = \delta_{jk}`)

  .. math::
    \frac{\partial F}{\partial z_k} = [k \in N]\, c_k p_k^{g} (1 + g \log p_k),
    \qquad \frac{\partial F}{\partial \ell} = -(P + g F),
    \qquad \frac{\partial F}{\partial c_k} = [k \in N]\, p_k^{g} \log p_k,

  with :math:`p^{g}` recomputed from the exponentials in a third form, and
  :math:`P` taken from the forward pass. The chain rule through :math:`\ell` adds
  :math:`p_k` times a row scalar, so the gradient stays one elementwise pass. A
  JVP rather than a VJP, so Hessians (forward over reverse) still work: the rule
  is plain, differentiable JAX.
  """
  return _integer_focal_sums(gamma, logits, lse, shift, target, class_mask, weights)[0]


def _integer_focal_sums(gamma, logits, lse, shift, target, class_mask, weights):
  g = int(gamma)
  c = 1.0 if weights is None else weights
  scaled = _common.scaled_exp(logits, shift, class_mask, target)
  power_sum = 2.0 ** -g * jnp.sum(
      c * jax.lax.integer_pow(scaled * (2 * math.exp(-_common.EXP_OFFSET)), g), axis=-1)
  moment = jnp.sum(
      c * jax.lax.integer_pow(scaled * math.exp(-_common.EXP_OFFSET), g) * logits, axis=-1)
  return _core.focal_from_sums(gamma, lse, shift, power_sum, moment)


def _integer_focal_log_p_sum_jvp(gamma, primals, tangents):
  logits, lse, shift, target, class_mask, weights = primals
  d_logits, d_lse, _, _, _, d_weights = tangents
  focal, power = _integer_focal_sums(gamma, *primals)
  scaled = _common.scaled_exp(logits, shift, class_mask, target)
  p_pow = jax.lax.integer_pow(  # p_j^g, zero off N
      scaled * jnp.exp(shift - lse - _common.EXP_OFFSET)[..., None], int(gamma))
  log_p = logits - lse[..., None]
  d_focal = jnp.zeros_like(focal)
  if not _common.is_zero(d_logits):
    c = 1.0 if weights is None else weights
    d_focal += jnp.sum(c * p_pow * (1 + gamma * log_p) * d_logits, axis=-1)
  if not _common.is_zero(d_lse):
    d_focal -= (power + gamma * focal) * d_lse
  if weights is not None and not _common.is_zero(d_weights):
    d_focal += jnp.sum(d_weights * p_pow * log_p, axis=-1)
  return focal, d_focal


_integer_focal_log_p_sum.defjvp(_integer_focal_log_p_sum_jvp, symbolic_zeros=True)


def _soft_label_loss(inputs: _Inputs, *, xi, gamma_hc, gamma_lc, z_loss):
  r"""Paper form for class-probability labels: a weighted sum over all classes.

  :math:`\log(1 - p_j)` is ``log1p(-p_j)`` for every class but the row's argmax
  (where :math:`p_j \le 1/2`), and comes from :func:`_row_stats` for the argmax, the
  one class whose probability can round to 1.
  """
  logits, labels, class_mask = inputs.logits, inputs.labels, inputs.class_mask
  example_mask = inputs.example_mask
  if example_mask is not None:
    logits = jnp.where(example_mask[..., None], logits, 0.0)
  log_p = jax.nn.log_softmax(logits, axis=-1, where=class_mask)
  if class_mask is not None:
    log_p = jnp.where(class_mask, log_p, 0.0)
    labels = jnp.where(class_mask, labels, 0.0)

  def log_1m_p():
    masked_logits = (logits if class_mask is None
                     else jnp.where(class_mask, logits, jnp.finfo(logits.dtype).min))
    top = jnp.argmax(masked_logits, axis=-1)
    is_top = jnp.arange(logits.shape[-1]) == top[..., None]
    top_log_1m_p = _core.log_probs(_row_stats(logits, top, class_mask)).log_1m_p_target
    safe_p = jnp.where(is_top, 0.0, jnp.exp(log_p))
    return jnp.where(is_top, top_log_1m_p[..., None], jnp.log1p(-safe_p))

  xi_b = xi[..., None] if isinstance(xi, jax.Array) and xi.ndim else xi
  weight = _common.focal_weight(log_p, log_1m_p, xi_b, gamma_hc, gamma_lc)
  if inputs.class_weights is not None:
    labels = labels * inputs.class_weights
  loss = -jnp.sum(labels * weight * log_p, axis=-1)
  if z_loss:
    loss += _core.lse_penalty(jax.nn.logsumexp(logits, axis=-1, where=class_mask), z_loss)
  return _masked(loss, example_mask)


def _cyclical(logits, labels, xi, *, integer_labels, gamma_hc, gamma_lc,
              gamma_neg, label_smoothing, class_weights, axis, where, z_loss=0.0,
              logit_soft_cap=None):
  gamma_hc = _common.exponent("gamma_hc", gamma_hc)
  gamma_lc = _common.exponent("gamma_lc", gamma_lc)
  gamma_neg = None if gamma_neg is None else _common.exponent("gamma_neg", gamma_neg)
  label_smoothing = _common.fraction("label_smoothing", label_smoothing)
  z_loss, logit_soft_cap = _common.logit_options(z_loss, logit_soft_cap)
  inputs = _canonicalize(logits, labels, xi, integer_labels=integer_labels,
                         class_weights=class_weights, axis=axis, where=where,
                         logit_soft_cap=logit_soft_cap)
  losses = functools.partial(_cyclical_losses, integer_labels=integer_labels,
                             gamma_hc=gamma_hc, gamma_lc=gamma_lc, gamma_neg=gamma_neg,
                             label_smoothing=label_smoothing, z_loss=z_loss)
  if integer_labels:
    valid = _common.valid_classes(inputs.labels, inputs.logits.shape[-1])
    loss = _common.nan_unless(valid, losses(inputs._replace(
        labels=jnp.where(valid, inputs.labels, 0))))
  else:
    loss = losses(inputs)
  return _masked(loss, inputs.example_mask)


def _cyclical_losses(inputs: _Inputs, *, integer_labels, gamma_hc, gamma_lc,
                     gamma_neg, label_smoothing, z_loss):
  """The per-example loss of checked inputs (integer labels already in range)."""
  xi = inputs.xi
  if gamma_neg is not None and not integer_labels:
    # Reference code: soft targets collapse to their argmax, then are re-smoothed.
    hard = jnp.argmax(inputs.labels, axis=-1)
    inputs = inputs._replace(labels=hard)
    integer_labels = True
  if integer_labels and (gamma_neg is not None or label_smoothing == 0):
    return _integer_loss(inputs, xi=xi, gamma_hc=gamma_hc, gamma_lc=gamma_lc,
                         gamma_neg=gamma_neg, label_smoothing=label_smoothing, z_loss=z_loss)
  if integer_labels:
    labels = jax.nn.one_hot(inputs.labels, inputs.logits.shape[-1],
                            dtype=inputs.logits.dtype)
    inputs = inputs._replace(labels=labels)
  if label_smoothing:
    num_classes = (inputs.logits.shape[-1] if inputs.class_mask is None else
                   jnp.sum(inputs.class_mask, axis=-1, keepdims=True))
    inputs = inputs._replace(
        labels=inputs.labels * (1 - label_smoothing) + label_smoothing / num_classes)
  return _soft_label_loss(inputs, xi=xi, gamma_hc=gamma_hc, gamma_lc=gamma_lc, z_loss=z_loss)


def _component(logits, labels, xi, gamma, *, integer_labels, **options):
  """CFL at a static ``xi`` of 0 (the focal loss) or 1 (the high-confidence loss)."""
  gamma = _common.exponent("gamma", gamma)
  return _cyclical(logits, labels, xi, integer_labels=integer_labels,
                   gamma_hc=gamma if xi == 1 else 0.0, gamma_lc=gamma if xi == 0 else 0.0,
                   gamma_neg=None, **options)


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------

def cyclical_focal_loss_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    xi: ArrayLike,
    *,
    gamma_hc: float = 2.0,
    gamma_lc: float = 2.0,
    gamma_neg: float | None = None,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    axis: int = -1,
    where: ArrayLike | None = None,
    z_loss: float = 0.0,
    logit_soft_cap: float | None = None,
) -> jax.Array:
  r"""Cyclical focal loss between logits and integer class labels.

  .. math::
    \ell = -\left[\xi (1 + p_t)^{\gamma_{hc}}
           + (1 - \xi)(1 - p_t)^{\gamma_{lc}}\right] \log p_t

  ``xi = 1`` gives the high-confidence loss, ``xi = 0`` the focal loss, and
  ``gamma_lc = 0, xi = 0`` (or ``gamma_hc = 0, xi = 1``) cross-entropy. With
  ``label_smoothing > 0`` the smoothed labels enter the weighted sum over classes
  (paper form) or the reference code's asymmetric sum (``gamma_neg`` set).

  Args:
    logits: unnormalised log-probabilities, ``[batch..., num_classes]``; any
      float dtype (computed in float32).
    labels: integer class indices, ``[batch...]``; an index outside
      ``[0, num_classes)`` gives a NaN loss for its example (never a silent
      finite value, so a divergence check catches it): mask such examples
      (e.g. padding labelled -1) with ``where``.
    xi: the mixing weight in [0, 1], a scalar or one per example
      (``[batch...]``, or a shape that broadcasts to it); may be traced (e.g.
      ``cfl_jax.xi_schedule(...)(state.step)`` inside ``jit``).
    gamma_hc: high-confidence exponent :math:`\gamma_{hc} \ge 0` (2 is the
      safe default, 3 the paper's CIFAR/ImageNet choice).
    gamma_lc: focal exponent :math:`\gamma_{lc} \ge 0` (the reference code's
      ``gamma_pos``).
    gamma_neg: ``None`` for the paper form; a number :math:`\ge 0` for the
      reference-code form, whose non-target weight is
      :math:`\xi + (1 - \xi) p_j^{\gamma_{neg}}`.
    label_smoothing: :math:`\epsilon \in [0, 1)`; labels become
      :math:`(1 - \epsilon) q + \epsilon / C` inside the weighted sum.
    class_weights: optional ``[num_classes]`` weights multiplying each class
      term (alpha-balancing for long tails).
    axis: the class axis of ``logits``.
    where: optional boolean mask as in optax: ``[batch...]`` (one flag per
      example) or a shape that broadcasts to the logits' (``[batch..., 1]``,
      ``[1, num_classes]`` to leave classes out of the softmax, the logits'
      shape); an example masked entirely, or whose target class is masked,
      has loss 0 and gradient 0.
    z_loss: weight of :math:`\operatorname{lse}(z)^2` added to each example's loss
      (PaLM's z-loss; 1e-4 is usual), >= 0.
    logit_soft_cap: ``None`` or a cap :math:`c > 0`: the logits become
      :math:`c \tanh(z / c)` before everything else (Gemma 2's soft-capping).

  Returns:
    The loss of each example, ``[batch...]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> import cfl_jax
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> labels = jnp.array([0, 1])
    >>> print(cfl_jax.cyclical_focal_loss_with_integer_labels(
    ...     logits, labels, xi=0.5, gamma_hc=2.0, gamma_lc=2.0).round(4))
    [0.4351 2.9599]

  References:
    Smith, `Cyclical Focal Loss <https://arxiv.org/abs/2202.08978>`_, 2022.
  """
  return _cyclical(logits, labels, xi, integer_labels=True, gamma_hc=gamma_hc,
                   gamma_lc=gamma_lc, gamma_neg=gamma_neg,
                   label_smoothing=label_smoothing, class_weights=class_weights,
                   axis=axis, where=where, z_loss=z_loss, logit_soft_cap=logit_soft_cap)


def cyclical_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    xi: ArrayLike,
    *,
    gamma_hc: float = 2.0,
    gamma_lc: float = 2.0,
    gamma_neg: float | None = None,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    axis: int = -1,
    where: ArrayLike | None = None,
    z_loss: float = 0.0,
    logit_soft_cap: float | None = None,
) -> jax.Array:
  r"""Cyclical focal loss between logits and class-probability labels.

  Paper form (``gamma_neg=None``), for labels :math:`q` (one-hot, smoothed or mixup):

  .. math::
    \ell = -\sum_j q_j \left[\xi (1 + p_j)^{\gamma_{hc}}
           + (1 - \xi)(1 - p_j)^{\gamma_{lc}}\right] \log p_j

  With ``gamma_neg`` set (reference-code form) the labels are first collapsed to
  their argmax class and re-smoothed, as the authors' code does with mixup targets.

  Args:
    logits: unnormalised log-probabilities, ``[batch..., num_classes]``; any
      float dtype (computed in float32).
    labels: class probabilities, same shape as ``logits`` (weights, not
      range-checked, as in optax).
    xi: the mixing weight in [0, 1], a scalar or one per example
      (``[batch...]``, or a shape that broadcasts to it); may be traced.
    gamma_hc: high-confidence exponent :math:`\gamma_{hc} \ge 0` (2 is the
      safe default, 3 the paper's CIFAR/ImageNet choice).
    gamma_lc: focal exponent :math:`\gamma_{lc} \ge 0` (the reference code's
      ``gamma_pos``).
    gamma_neg: ``None`` for the paper form; a number :math:`\ge 0` for the
      reference-code form, whose non-target weight is
      :math:`\xi + (1 - \xi) p_j^{\gamma_{neg}}`.
    label_smoothing: :math:`\epsilon \in [0, 1)`; labels become
      :math:`(1 - \epsilon) q + \epsilon / C` inside the weighted sum.
    class_weights: optional ``[num_classes]`` weights multiplying each class
      term (alpha-balancing for long tails).
    axis: the class axis of ``logits``.
    where: optional boolean mask as in optax: ``[batch...]`` (one flag per
      example) or a shape that broadcasts to the logits' (``[batch..., 1]``,
      ``[1, num_classes]`` to leave classes out of the softmax, the logits'
      shape); an example masked entirely, or whose target class is masked,
      has loss 0 and gradient 0.
    z_loss: weight of :math:`\operatorname{lse}(z)^2` added to each example's loss
      (PaLM's z-loss; 1e-4 is usual), >= 0.
    logit_soft_cap: ``None`` or a cap :math:`c > 0`: the logits become
      :math:`c \tanh(z / c)` before everything else (Gemma 2's soft-capping).

  Returns:
    The loss of each example, ``[batch...]``, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> import cfl_jax
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> print(cfl_jax.cyclical_focal_loss(logits, labels, xi=0.5).round(4))
    [0.4351 2.9599]

  References:
    Smith, `Cyclical Focal Loss <https://arxiv.org/abs/2202.08978>`_, 2022.
  """
  return _cyclical(logits, labels, xi, integer_labels=False, gamma_hc=gamma_hc,
                   gamma_lc=gamma_lc, gamma_neg=gamma_neg,
                   label_smoothing=label_smoothing, class_weights=class_weights,
                   axis=axis, where=where, z_loss=z_loss, logit_soft_cap=logit_soft_cap)


def focal_loss_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    axis: int = -1,
    where: ArrayLike | None = None,
    z_loss: float = 0.0,
    logit_soft_cap: float | None = None,
) -> jax.Array:
  r"""Softmax focal loss, :math:`-(1 - p_t)^{\gamma} \log p_t`.

  Down-weights the examples the model already classifies confidently: the
  cyclical focal loss at ``xi = 0``. ``gamma = 0`` gives cross-entropy.

  Args:
    logits: ``[batch..., num_classes]``; any float dtype (computed in float32).
    labels: integer class indices, ``[batch...]``; an index outside
      ``[0, num_classes)`` gives NaN unless masked with ``where``.
    gamma: the exponent :math:`\gamma \ge 0`.
    label_smoothing: :math:`\epsilon \in [0, 1)`, applied to the labels inside
      the weighted sum.
    class_weights: optional ``[num_classes]`` per-class weights.
    axis: the class axis of ``logits``.
    where: optional mask, ``[batch...]`` or broadcastable to the logits (as in
      :func:`cyclical_focal_loss_with_integer_labels`).
    z_loss: weight :math:`\ge 0` of :math:`\operatorname{lse}(z)^2` added per example.
    logit_soft_cap: ``None`` or :math:`c > 0`: the logits become :math:`c \tanh(z / c)` first.

  Returns:
    ``[batch...]`` float32 losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> import cfl_jax
    >>> print(cfl_jax.focal_loss_with_integer_labels(
    ...     jnp.array([[2.0, 0.0]]), jnp.array([0]), gamma=2.0).round(4))
    [0.0018]

  References:
    Lin et al., `Focal Loss for Dense Object Detection
    <https://arxiv.org/abs/1708.02002>`_, 2017.
  """
  return _component(logits, labels, 0, gamma, integer_labels=True,
                    label_smoothing=label_smoothing, class_weights=class_weights,
                    axis=axis, where=where, z_loss=z_loss, logit_soft_cap=logit_soft_cap)


def focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    axis: int = -1,
    where: ArrayLike | None = None,
    z_loss: float = 0.0,
    logit_soft_cap: float | None = None,
) -> jax.Array:
  r"""Softmax focal loss for probability labels, :math:`-\sum_j q_j (1 - p_j)^{\gamma} \log p_j`.

  Every class carrying label mass is down-weighted by its own probability: the
  cyclical focal loss at ``xi = 0`` (``gamma = 0``: cross-entropy).

  Args:
    logits: ``[batch..., num_classes]``; any float dtype (computed in float32).
    labels: class probabilities :math:`q`, same shape as ``logits``.
    gamma: the exponent :math:`\gamma \ge 0`.
    label_smoothing: :math:`\epsilon \in [0, 1)`, applied to the labels inside
      the weighted sum.
    class_weights: optional ``[num_classes]`` per-class weights.
    axis: the class axis of ``logits``.
    where: optional mask, ``[batch...]`` or broadcastable to the logits (as in
      :func:`cyclical_focal_loss`).
    z_loss: weight :math:`\ge 0` of :math:`\operatorname{lse}(z)^2` added per example.
    logit_soft_cap: ``None`` or :math:`c > 0`: the logits become :math:`c \tanh(z / c)` first.

  Returns:
    ``[batch...]`` float32 losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> import cfl_jax
    >>> print(cfl_jax.focal_loss(
    ...     jnp.array([[2.0, 0.0]]), jnp.array([[1.0, 0.0]]), gamma=2.0).round(4))
    [0.0018]

  References:
    Lin et al., `Focal Loss for Dense Object Detection
    <https://arxiv.org/abs/1708.02002>`_, 2017.
  """
  return _component(logits, labels, 0, gamma, integer_labels=False,
                    label_smoothing=label_smoothing, class_weights=class_weights,
                    axis=axis, where=where, z_loss=z_loss, logit_soft_cap=logit_soft_cap)


def high_confidence_loss_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    axis: int = -1,
    where: ArrayLike | None = None,
    z_loss: float = 0.0,
    logit_soft_cap: float | None = None,
) -> jax.Array:
  r"""High-confidence loss, :math:`-(1 + p_t)^{\gamma} \log p_t`.

  Up-weights confident examples by up to :math:`2^{\gamma}`, the opposite of
  the focal loss: the cyclical focal loss at ``xi = 1``. ``gamma = 0`` gives
  cross-entropy.

  Args:
    logits: ``[batch..., num_classes]``; any float dtype (computed in float32).
    labels: integer class indices, ``[batch...]``; an index outside
      ``[0, num_classes)`` gives NaN unless masked with ``where``.
    gamma: the exponent :math:`\gamma \ge 0`.
    label_smoothing: :math:`\epsilon \in [0, 1)`, applied to the labels inside
      the weighted sum.
    class_weights: optional ``[num_classes]`` per-class weights.
    axis: the class axis of ``logits``.
    where: optional mask, ``[batch...]`` or broadcastable to the logits (as in
      :func:`cyclical_focal_loss_with_integer_labels`).
    z_loss: weight :math:`\ge 0` of :math:`\operatorname{lse}(z)^2` added per example.
    logit_soft_cap: ``None`` or :math:`c > 0`: the logits become :math:`c \tanh(z / c)` first.

  Returns:
    ``[batch...]`` float32 losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> import cfl_jax
    >>> print(cfl_jax.high_confidence_loss_with_integer_labels(
    ...     jnp.array([[2.0, 0.0]]), jnp.array([0]), gamma=2.0).round(4))
    [0.449]

  References:
    Smith, `Cyclical Focal Loss <https://arxiv.org/abs/2202.08978>`_, 2022.
  """
  return _component(logits, labels, 1, gamma, integer_labels=True,
                    label_smoothing=label_smoothing, class_weights=class_weights,
                    axis=axis, where=where, z_loss=z_loss, logit_soft_cap=logit_soft_cap)


def high_confidence_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    axis: int = -1,
    where: ArrayLike | None = None,
    z_loss: float = 0.0,
    logit_soft_cap: float | None = None,
) -> jax.Array:
  r"""High-confidence loss for probability labels, :math:`-\sum_j q_j (1 + p_j)^{\gamma} \log p_j`.

  Every class carrying label mass is up-weighted by its own probability, by up
  to :math:`2^{\gamma}`: the cyclical focal loss at ``xi = 1`` (``gamma = 0``:
  cross-entropy).

  Args:
    logits: ``[batch..., num_classes]``; any float dtype (computed in float32).
    labels: class probabilities :math:`q`, same shape as ``logits``.
    gamma: the exponent :math:`\gamma \ge 0`.
    label_smoothing: :math:`\epsilon \in [0, 1)`, applied to the labels inside
      the weighted sum.
    class_weights: optional ``[num_classes]`` per-class weights.
    axis: the class axis of ``logits``.
    where: optional mask, ``[batch...]`` or broadcastable to the logits (as in
      :func:`cyclical_focal_loss`).
    z_loss: weight :math:`\ge 0` of :math:`\operatorname{lse}(z)^2` added per example.
    logit_soft_cap: ``None`` or :math:`c > 0`: the logits become :math:`c \tanh(z / c)` first.

  Returns:
    ``[batch...]`` float32 losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> import cfl_jax
    >>> print(cfl_jax.high_confidence_loss(
    ...     jnp.array([[2.0, 0.0]]), jnp.array([[1.0, 0.0]]), gamma=2.0).round(4))
    [0.449]

  References:
    Smith, `Cyclical Focal Loss <https://arxiv.org/abs/2202.08978>`_, 2022.
  """
  return _component(logits, labels, 1, gamma, integer_labels=False,
                    label_smoothing=label_smoothing, class_weights=class_weights,
                    axis=axis, where=where, z_loss=z_loss, logit_soft_cap=logit_soft_cap)
