r"""Multi-label (sigmoid) cyclical focal loss, beside :func:`optax.sigmoid_focal_loss`.

Every logit is an independent binary prediction (multi-label tagging, detection,
segmentation masks), so these losses are elementwise: one value per logit, no
reduction, as in :func:`optax.sigmoid_focal_loss`. With :math:`p = \sigma(z)`,
a label :math:`y \in [0, 1]` and the negatives' probability margin :math:`m`
(``clip``), :math:`p_m = \max(p - m, 0)`:

.. math::
  p_t &= y\, p + (1 - y)(1 - p_m) \\
  \log p_t &:= y \log p + (1 - y) \log(1 - p_m) \\
  \gamma_t &= y\, \gamma_{lc} + (1 - y)\, \gamma_{neg} \\
  \mathrm{CFL} &= -\left[\xi (1 + p_t)^{\gamma_{hc}}
                  + (1 - \xi)(1 - p_t)^{\gamma_t}\right] \log p_t

For hard labels :math:`\log p_t` is the log of :math:`p_t`; for soft labels it
is minus the binary cross-entropy, optax's convention. ``gamma_neg=None`` means
:math:`\gamma_{neg} = \gamma_{lc}`.

* ``gamma_neg=None, clip=0`` is the paper's loss applied to each binary
  prediction; at :math:`\xi = 0` it equals
  ``optax.sigmoid_focal_loss(logits, labels, alpha=alpha, gamma=gamma_lc)`` and
  at :math:`\gamma = 0` (``alpha=None``) ``optax.sigmoid_binary_cross_entropy``,
  for hard and soft labels. ``alpha`` is optax's class-balance weight: every
  term times :math:`\alpha_t = \alpha y + (1 - \alpha)(1 - y)`.
* At :math:`\xi = 0` the loss is the asymmetric loss (ASL, Ben-Baruch et al.):
  :math:`-(1 - p)^{\gamma_{lc}} \log p` for a positive and
  :math:`-p_m^{\gamma_{neg}} \log(1 - p_m)` for a negative
  (:math:`\gamma_+ = \gamma_{lc}`, :math:`\gamma_- = \gamma_{neg}`,
  ``clip`` its probability margin); soft labels blend :math:`p_t` and the
  exponent as ASL's reference code does.

Numerics: :math:`\log p` and :math:`\log(1 - p)` come from one softplus of the
logits, :math:`\log(1 - p_t)` from a log-add-exp of those, never from the log
of a rounded probability; integer exponents of the symmetric form use products
instead. Values, gradients and Hessians with respect to the logits are finite
for every :math:`\gamma \ge 0` at any finite logits, for hard and soft labels.
Labels are data: gradients with respect to them are not guaranteed at exactly 0
or 1. Shapes, masks, xi, labels outside [0, 1] and dtypes follow the input policy
of :mod:`cfl_jax.losses`.

References:
  Smith, `Cyclical Focal Loss <https://arxiv.org/abs/2202.08978>`_, 2022.
  Lin et al., `Focal Loss for Dense Object Detection
  <https://arxiv.org/abs/1708.02002>`_, 2017.
  Ben-Baruch et al., `Asymmetric Loss For Multi-Label Classification
  <https://arxiv.org/abs/2009.14119>`_, 2020.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cfl_jax.losses import _common

ArrayLike = jax.typing.ArrayLike

__all__ = ["sigmoid_cyclical_focal_loss", "sigmoid_high_confidence_loss"]


# ----------------------------------------------------------------------------
# Inputs (the policy of cfl_jax.losses)
# ----------------------------------------------------------------------------


class _Inputs(NamedTuple):
  """Canonicalised inputs, all of the logits' shape (xi: scalar or one trailing axis)."""
  logits: jax.Array          # [...], float32 or wider; masked entries zeroed
  labels: jax.Array          # [...], same dtype; masked and invalid entries zeroed
  xi: jax.Array | float      # [] or [batch..., 1]; Python 0 or 1 kept static
  mask: jax.Array | None     # [...] bool
  valid: jax.Array           # [...] bool: labels in [0, 1]


def _canonicalize(logits, labels, xi, where) -> _Inputs:
  """Checks shapes and dtypes; computes in float32 or wider."""
  logits = jnp.asarray(logits)
  _common.check_float("logits", logits)
  dtype = _common.compute_dtype(logits)
  logits = logits.astype(dtype)

  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.number) and labels.dtype != bool:
    raise ValueError(f"labels must be numbers in [0, 1], got dtype {labels.dtype}.")
  try:
    labels = jnp.broadcast_to(labels.astype(dtype), logits.shape)
  except ValueError:
    raise ValueError(f"labels shape {labels.shape} does not broadcast to the logits' shape "
                     f"{logits.shape}.") from None
  valid = _common.valid_targets(labels)
  labels = jnp.where(valid, labels, 0.0)

  mask = _common.mask(where, logits.shape)
  if mask is not None:
    mask = jnp.broadcast_to(mask, logits.shape)
    # Double-where: masked entries may hold garbage; keep their gradient exactly 0.
    logits = jnp.where(mask, logits, 0.0)
    labels = jnp.where(mask, labels, 0.0)

  xi = _common.batch_xi(xi, logits.shape[:-1], dtype)
  if isinstance(xi, jax.Array) and xi.ndim:
    xi = xi[..., None]
  return _Inputs(logits, labels, xi, mask, valid)


# ----------------------------------------------------------------------------
# Numerics
# ----------------------------------------------------------------------------


class _Binary(NamedTuple):
  r"""Each element's prediction seen from its label, with the negatives' margin.

  ``log_shifted`` is :math:`\log p_m`, :math:`-\infty` where :math:`p_m = 0`;
  ``miss_is_zero`` marks :math:`1 - p_t = 0` exactly (a negative with
  :math:`p_m = 0`), ``None`` without a margin, where it cannot happen.
  """
  neg_log_p_t: jax.Array  # -y log p - (1 - y) log(1 - p_m): the BCE when m = 0
  p_t: jax.Array          # y p + (1 - y)(1 - p_m)
  miss: jax.Array         # 1 - p_t = y (1 - p) + (1 - y) p_m
  log_q: jax.Array        # log(1 - p)
  log_shifted: jax.Array  # log p_m
  miss_is_zero: jax.Array | None


@jax.custom_jvp
def _log_sigmoids(logits):
  r""":math:`(\log p, \log(1 - p))` for :math:`p = \sigma(z)`, from one shared softplus.

  :math:`\log p = \min(z, 0) - \log(1 + e^{-|z|})` and :math:`\log(1 - p) =
  \min(-z, 0) - \log(1 + e^{-|z|})`: no cancellation, half the transcendentals
  of two ``jax.nn.log_sigmoid`` calls. The derivatives, :math:`1 - p` and
  :math:`-p`, are given explicitly (autodiff through the kinks of :math:`|z|`
  and :math:`\min` gives a slope of 1, not 1/2, at :math:`z = 0`).
  """
  softplus_of_minus_abs = jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return (jnp.minimum(logits, 0.0) - softplus_of_minus_abs,
          jnp.minimum(-logits, 0.0) - softplus_of_minus_abs)


@_log_sigmoids.defjvp
def _log_sigmoids_jvp(primals, tangents):
  (logits,), (tangent,) = primals, tangents
  log_p, log_q = _log_sigmoids(logits)
  return (log_p, log_q), (jnp.exp(log_q) * tangent, -jnp.exp(log_p) * tangent)


def _binary(logits, labels, clip: float) -> _Binary:
  """Probabilities from the log-sigmoids of the logits, the margin applied to negatives."""
  log_p, log_q = _log_sigmoids(logits)
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  if clip:
    kept = jnp.minimum(q + clip, 1.0)   # 1 - p_m >= clip > 0: its log is finite
    log_kept = jnp.log(kept)
    shifted = jnp.maximum(p - clip, 0.0)
    positive = shifted > 0
    log_shifted = jnp.where(positive, jnp.log(jnp.where(positive, shifted, 1.0)), -jnp.inf)
    miss_is_zero = (labels == 0) & ~positive
  else:
    kept, log_kept, shifted, log_shifted, miss_is_zero = q, log_q, p, log_p, None
  return _Binary(
      neg_log_p_t=-labels * log_p - (1 - labels) * log_kept,
      p_t=labels * p + (1 - labels) * kept,
      miss=labels * q + (1 - labels) * shifted,
      log_q=log_q,
      log_shifted=log_shifted,
      miss_is_zero=miss_is_zero,
  )


def _power(base, log_base, gamma: float):
  """``base ** gamma``: integer powers as products, others as ``exp(gamma * log_base())``."""
  if gamma.is_integer():
    return jax.lax.integer_pow(base, int(gamma))
  return _common.pow_exp(log_base(), gamma)


def _focal_weight(binary: _Binary, labels, *, gamma_lc: float, gamma_neg: float | None):
  r""":math:`(1 - p_t)^{\gamma_t}`, with :math:`\gamma_t = y \gamma_{lc} + (1 - y) \gamma_{neg}`.

  Integer exponents of the symmetric form are products of :math:`1 - p_t`; the
  others are :math:`\exp(\gamma_t \log(1 - p_t))` with :math:`\log(1 - p_t) =
  \operatorname{logaddexp}(\log y + \log(1 - p), \log(1 - y) + \log p_m)`. One
  argument is :math:`-\infty` for a hard label, which ``logaddexp`` handles.
  Both are only where :math:`1 - p_t = 0` (a negative with :math:`p_m = 0`);
  there :math:`\log p_t = 0` as well, so the loss is 0 whatever the weight, and
  taking :math:`\log(1 - p_t) = 0` keeps the gradients finite.
  """
  if gamma_neg is None or gamma_neg == gamma_lc:
    if gamma_lc.is_integer():
      return jax.lax.integer_pow(binary.miss, int(gamma_lc))
    gamma = gamma_lc
  else:
    gamma = labels * gamma_lc + (1 - labels) * gamma_neg
  positive_part = jnp.log(labels) + binary.log_q
  if binary.miss_is_zero is not None:
    positive_part = jnp.where(binary.miss_is_zero, 0.0, positive_part)
  return jnp.exp(gamma * jnp.logaddexp(positive_part, jnp.log1p(-labels) + binary.log_shifted))


def _sigmoid_cyclical(logits, labels, xi, where, *, gamma_hc, gamma_lc, gamma_neg, clip, alpha):
  """The elementwise loss; checks the inputs and the static hyper-parameters."""
  gamma_hc = _common.exponent("gamma_hc", gamma_hc)
  gamma_lc = _common.exponent("gamma_lc", gamma_lc)
  gamma_neg = None if gamma_neg is None else _common.exponent("gamma_neg", gamma_neg)
  clip = _common.fraction("clip", clip)
  alpha = None if alpha is None else _common.fraction("alpha", alpha, one=True)
  inputs = _canonicalize(logits, labels, xi, where)
  labels = inputs.labels
  binary = _binary(inputs.logits, labels, clip)
  weight = _common.mix(
      inputs.xi,
      lambda: _power(1 + binary.p_t, lambda: jnp.log1p(binary.p_t), gamma_hc),
      lambda: _focal_weight(binary, labels, gamma_lc=gamma_lc, gamma_neg=gamma_neg))
  loss = weight * binary.neg_log_p_t
  if alpha is not None:
    loss *= alpha * labels + (1 - alpha) * (1 - labels)
  loss = _common.nan_unless(inputs.valid, loss)
  return loss if inputs.mask is None else jnp.where(inputs.mask, loss, 0.0)


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------


def sigmoid_cyclical_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    xi: ArrayLike,
    *,
    gamma_hc: float = 2.0,
    gamma_lc: float = 2.0,
    gamma_neg: float | None = None,
    clip: float = 0.0,
    alpha: float | None = None,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Cyclical focal loss of independent binary (sigmoid) predictions, elementwise.

  With :math:`p = \sigma(z)` and, for a hard label, :math:`p_t = p` if
  :math:`y = 1` and :math:`1 - p` if :math:`y = 0`:

  .. math::
    \ell = -\left[\xi (1 + p_t)^{\gamma_{hc}}
           + (1 - \xi)(1 - p_t)^{\gamma_{lc}}\right] \log p_t

  ``xi = 1`` gives :func:`sigmoid_high_confidence_loss`, ``xi = 0`` the sigmoid
  focal loss (``optax.sigmoid_focal_loss(logits, labels, alpha=alpha,
  gamma=gamma_lc)``), and a zero exponent at either end the binary
  cross-entropy. ``alpha`` weights each term by :math:`\alpha_t = \alpha y +
  (1 - \alpha)(1 - y)`, as in optax. Soft labels follow optax:
  :math:`p_t = y p + (1 - y)(1 - p)` and :math:`-\log p_t` is the binary
  cross-entropy.

  ``gamma_neg`` and ``clip`` give the asymmetric form: negatives
  (:math:`y = 0`) use the exponent :math:`\gamma_{neg}` and the shifted
  probability :math:`p_m = \max(p - m, 0)` (so :math:`p_t = 1 - p_m`, in the
  weights and in the log term):

  .. math::
    \ell_{y=0} = -\left[\xi (2 - p_m)^{\gamma_{hc}}
                 + (1 - \xi)\, p_m^{\gamma_{neg}}\right] \log(1 - p_m)

  At ``xi = 0`` this is the asymmetric loss (ASL) with
  :math:`\gamma_+ = \gamma_{lc}`, :math:`\gamma_- = \gamma_{neg}` and
  probability margin ``clip`` (soft labels as in ASL's code: :math:`p_t` and the
  exponent :math:`y \gamma_{lc} + (1 - y)\gamma_{neg}` blended); with
  ``gamma_neg=None, clip=0`` it is the form above.

  Args:
    logits: unnormalised log-odds, any shape ``[batch..., num_labels]``; any
      float dtype (computed in float32).
    labels: targets in [0, 1] (hard or soft), broadcastable to ``logits``; a
      target outside [0, 1] gives NaN for its entry unless masked.
    xi: the mixing weight in [0, 1], a scalar or broadcastable to the batch
      shape ``logits.shape[:-1]``, or of the logits' rank with a last axis of 1
      (one xi per example, shared by its labels); may be traced (e.g.
      ``cfl_jax.xi_schedule(...)(state.step)`` in ``jit``), and is checked when
      concrete.
    gamma_hc: high-confidence exponent :math:`\gamma_{hc} \ge 0`.
    gamma_lc: focal exponent :math:`\gamma_{lc} \ge 0` (of every label, or of
      the positives when ``gamma_neg`` is set).
    gamma_neg: ``None``, or the negatives' focal exponent :math:`\ge 0`
      (ASL's :math:`\gamma_-`, e.g. 4).
    clip: the negatives' probability margin :math:`m \in [0, 1)` (ASL's clip,
      e.g. 0.05); 0 turns it off.
    alpha: ``None``, or the positives' weight :math:`\alpha \in [0, 1]` (the
      negatives' is :math:`1 - \alpha`; Lin et al. use 0.25), optax's
      class-balance weight.
    where: optional boolean mask, ``[batch...]`` (one flag per example, shared
      by its labels) or a shape that broadcasts to ``logits``; masked entries
      have loss 0 and gradient 0.

  Returns:
    The loss of each logit, ``logits.shape``, float32 (or float64).

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import cfl_jax
    >>> logits = jnp.array([[2.0, -1.0, 0.5], [-3.0, 1.5, 0.0]])
    >>> labels = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    >>> loss = cfl_jax.sigmoid_cyclical_focal_loss(logits, labels, xi=0.5)
    >>> print(np.asarray(loss).round(4))
    [[0.2254 0.4807 0.6578]
     [0.0927 1.758  0.8664]]
    >>> asl = cfl_jax.sigmoid_cyclical_focal_loss(  # ASL at xi = 0
    ...     logits, labels, 0.0, gamma_lc=0.0, gamma_neg=4.0, clip=0.05)
    >>> print(np.asarray(asl).round(3))
    [[0.127 0.001 0.474]
     [0.    0.507 0.693]]

  References:
    Smith, `Cyclical Focal Loss <https://arxiv.org/abs/2202.08978>`_, 2022.
    Lin et al., `Focal Loss for Dense Object Detection
    <https://arxiv.org/abs/1708.02002>`_, 2017.
    Ben-Baruch et al., `Asymmetric Loss For Multi-Label Classification
    <https://arxiv.org/abs/2009.14119>`_, 2020.
  """
  return _sigmoid_cyclical(logits, labels, xi, where, gamma_hc=gamma_hc, gamma_lc=gamma_lc,
                           gamma_neg=gamma_neg, clip=clip, alpha=alpha)


def sigmoid_high_confidence_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Sigmoid high-confidence loss, elementwise: CFL's component at ``xi = 1``.

  Up-weights confident predictions by up to :math:`2^{\gamma}`, the opposite of
  the focal loss (``optax.sigmoid_focal_loss``):

  .. math::
    \ell = -(1 + p_t)^{\gamma} \log p_t

  with :math:`p = \sigma(z)`, :math:`p_t = y p + (1 - y)(1 - p)` and
  :math:`-\log p_t` the binary cross-entropy (optax's soft-label convention).

  Args:
    logits: unnormalised log-odds, any shape; any float dtype (computed in
      float32).
    labels: targets in [0, 1] (hard or soft), broadcastable to ``logits``; a
      target outside [0, 1] gives NaN for its entry unless masked.
    gamma: the exponent :math:`\gamma \ge 0`; 0 gives the binary cross-entropy.
    alpha: ``None``, or the positives' weight :math:`\alpha \in [0, 1]` (the
      negatives' is :math:`1 - \alpha`), as in ``optax.sigmoid_focal_loss``.
    where: optional boolean mask, ``[batch...]`` (one flag per example) or a
      shape that broadcasts to ``logits``; masked entries have loss 0 and
      gradient 0.

  Returns:
    The loss of each logit, ``logits.shape``, float32 (or float64).

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import cfl_jax
    >>> loss = cfl_jax.sigmoid_high_confidence_loss(
    ...     jnp.array([2.0, -1.0]), jnp.array([1.0, 1.0]), gamma=2.0)
    >>> print(np.asarray(loss).round(4))
    [0.449  2.1146]

  References:
    Smith, `Cyclical Focal Loss <https://arxiv.org/abs/2202.08978>`_, 2022.
  """
  gamma = _common.exponent("gamma", gamma)
  return _sigmoid_cyclical(logits, labels, 1, where, gamma_hc=gamma, gamma_lc=0.0,
                           gamma_neg=None, clip=0.0, alpha=alpha)
