r"""The one per-example loss of the softmax and fused forms, from per-row statistics.

The dense integer-label forms (:mod:`cfl_jax.losses.softmax`) reduce their ``[..., C]``
logits to a :class:`RowStats` per example; the fused loss (:mod:`cfl_jax.losses.linear`)
streams the same statistics over vocabulary chunks. Both call :func:`loss_from_row_stats`,
where the target term, label smoothing, the reference form's non-target sum, the paper
form's smoothed second pass and the z-loss are written, once. With :math:`m` the row
maximum (held fixed: nothing depends on it), :math:`s = \sum_{j \ne t} e^{z_j - m}` and
:math:`u = z_t - m`,

.. math::
  \log p_t = -\operatorname{softplus}(\log s - u), \qquad
  \log(1 - p_t) = -\operatorname{softplus}(u - \log s), \qquad
  \operatorname{lse}(z) = m + \operatorname{logaddexp}(u, \log s),

so :math:`\log(1 - p_t)` never comes from ``1 - p_t``. Derivatives of any order follow from
the statistics' own (autodiff, or the custom JVP rules of the callers), so this module
holds no rule of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cfl_jax.losses import _common


class SmoothedSums(NamedTuple):
  r"""Paper form with label smoothing: sums over the non-target classes, ``[...]``.

  ``a`` is the row's largest non-target class; every other non-target class has
  :math:`p_j \le 1/2`, so ``log1p(-p_j)`` is exact there, and :math:`\log(1 - p_a)`
  comes from the log-sum-exp of the classes but ``a``.
  """
  high_confidence: jax.Array | None  # sum_{j not t, a} c_j (1 + p_j)^{g_hc} log p_j
  focal: jax.Array | None            # sum_{j not t, a} c_j (1 - p_j)^{g_lc} log p_j
  top_logit: jax.Array               # z_a
  top_rest: jax.Array                # sum_{j != a} e^{z_j - m + K}
  top_weight: jax.Array | None       # c_a (with class weights)


class RowStats(NamedTuple):
  """Per-row statistics of the logits, ``[...]``, from which the loss follows.

  The reference-form fields are set only with ``gamma_neg`` and label smoothing, and
  ``smoothed`` only for the paper form with label smoothing (fused).
  """
  shift: jax.Array                 # m, the row maximum over the kept classes
  target_logit: jax.Array          # z_t
  exp_sum: jax.Array               # sum_{j != t} e^{z_j - m + K} over the kept classes
  num_classes: jax.Array | int     # C, the kept classes
  target_weight: jax.Array | float = 1.0         # c_t
  non_target_weight: jax.Array | float | None = None  # sum_{j != t} c_j
  non_target_logit: jax.Array | None = None      # sum_{j != t} c_j z_j
  # F(lse) = sum_{j != t} c_j p_j^{g} log p_j, the reference form's focal sum (g = gamma_neg)
  focal_log_p_sum: Callable[[jax.Array], jax.Array] | None = None
  smoothed: SmoothedSums | None = None


class LogProbs(NamedTuple):
  """``lse(z)``, ``log p_t`` and ``log(1 - p_t)`` per row, from :class:`RowStats`."""
  lse: jax.Array
  log_p_target: jax.Array
  log_1m_p_target: jax.Array


def log_probs(stats: RowStats) -> LogProbs:
  """The log-normaliser and the target's log-probabilities (module docstring)."""
  shift = jax.lax.stop_gradient(stats.shift)
  margin = stats.target_logit - shift
  log_sum = _common.log_scaled_sum(stats.exp_sum)
  return LogProbs(lse=shift + jnp.logaddexp(margin, log_sum),
                  log_p_target=-jnp.logaddexp(0.0, log_sum - margin),
                  log_1m_p_target=-jnp.logaddexp(0.0, margin - log_sum))


def focal_from_sums(gamma, lse, shift, power_sum, moment):
  r"""``(F, P)`` from :math:`\sum_N c_j u_j^{g}` and :math:`\sum_N c_j u_j^{g} z_j`.

  With :math:`u_j = e^{z_j - m}`, :math:`\ell = \operatorname{lse}(z)` and
  :math:`P = \sum_N c_j p_j^{g}`: :math:`P = e^{-g (\ell - m)} \sum_N c_j u_j^{g}` and
  :math:`F = \sum_N c_j p_j^{g} \log p_j = e^{-g (\ell - m)} \sum_N c_j u_j^{g} z_j - \ell P`.
  Neither sum has a per-row broadcast inside; the absolute rounding, about
  :math:`\epsilon |\ell|` per term, is that of ``z_j - lse`` in a log-softmax.
  """
  scale = jnp.exp(-gamma * (lse - jax.lax.stop_gradient(shift)))
  power = scale * power_sum
  return scale * moment - lse * power, power


def loss_from_row_stats(stats: RowStats, *, xi, gamma_hc, gamma_lc, gamma_neg,
                        label_smoothing, z_loss=0.0):
  r"""The per-example loss ``[...]`` of :func:`cfl_jax.cyclical_focal_loss_with_integer_labels`.

  .. math::
    \ell = -\Big(1 - \epsilon + \frac{\epsilon}{C}\Big) c_t w(p_t) \log p_t
           - \frac{\epsilon}{C} \sum_{j \ne t} c_j v_j \log p_j
           + \lambda_z \operatorname{lse}(z)^2,

  :math:`w(p) = \xi (1 + p)^{\gamma_{hc}} + (1 - \xi)(1 - p)^{\gamma_{lc}}`, and
  :math:`v_j = w(p_j)` (paper form, from ``stats.smoothed``) or
  :math:`v_j = \xi + (1 - \xi) p_j^{\gamma_{neg}}` (reference form), where the
  :math:`\xi` part is :math:`\sum_N c_j z_j - \ell \sum_N c_j` and the rest
  ``stats.focal_log_p_sum``. ``xi`` is a static 0 or 1 (the unused term is skipped) or an
  array broadcasting to the rows.
  """
  logs = log_probs(stats)
  weight = _common.focal_weight(logs.log_p_target, lambda: logs.log_1m_p_target, xi,
                                gamma_hc, gamma_lc)
  target_mass = 1.0 - label_smoothing + label_smoothing / stats.num_classes
  loss = -target_mass * stats.target_weight * weight * logs.log_p_target
  if z_loss:
    loss += lse_penalty(logs.lse, z_loss)
  if stats.smoothed is not None:
    non_target = _smoothed_non_target(stats.smoothed, stats.shift, logs.lse, xi, gamma_hc,
                                      gamma_lc)
  elif gamma_neg is not None and label_smoothing > 0:
    def log_p_sum():
      return stats.non_target_logit - stats.non_target_weight * logs.lse

    focal = stats.focal_log_p_sum  # None at gamma_neg = 0
    non_target = (log_p_sum() if focal is None else
                  _common.mix(xi, log_p_sum, lambda: focal(logs.lse)))
  else:
    return loss
  return loss - (label_smoothing / stats.num_classes) * non_target


def lse_penalty(lse, z_loss):
  r"""PaLM's z-loss, :math:`\lambda_z \operatorname{lse}(z)^2` (``lse`` ``[...]``)."""
  return z_loss * lse**2


def _smoothed_non_target(smoothed: SmoothedSums, shift, lse, xi, gamma_hc, gamma_lc):
  r""":math:`\sum_{j \ne t} c_j w(p_j) \log p_j` from the second pass's sums."""
  shift = jax.lax.stop_gradient(shift)
  log_p_top = smoothed.top_logit - lse
  log_1m_p_top = _common.log_scaled_sum(smoothed.top_rest) + shift - lse
  top_term = log_p_top * _common.focal_weight(log_p_top, lambda: log_1m_p_top, xi, gamma_hc,
                                              gamma_lc)
  if smoothed.top_weight is not None:
    top_term *= smoothed.top_weight
  return _common.mix(xi, lambda: smoothed.high_confidence, lambda: smoothed.focal) + top_term
