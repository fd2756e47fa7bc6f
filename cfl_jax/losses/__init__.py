r"""The cyclical focal losses, in the manner of ``optax.losses``.

Three families, one module each, all re-exported here and at ``cfl_jax.*``:

* :mod:`cfl_jax.losses.softmax`: one class per example (``cyclical_focal_loss`` and
  ``cyclical_focal_loss_with_integer_labels``, their components ``focal_loss`` and
  ``high_confidence_loss``), beside :func:`optax.softmax_cross_entropy`;
* :mod:`cfl_jax.losses.sigmoid`: independent binary predictions (multi-label),
  beside :func:`optax.sigmoid_focal_loss`;
* :mod:`cfl_jax.losses.linear`: the softmax loss fused with the output projection,
  for large vocabularies.

Input policy, the same for all three:

* **Outputs.** One loss per example, never reduced over the batch: ``[batch...]``
  for the softmax and fused losses, ``logits.shape`` for the elementwise sigmoid
  losses. The caller takes the mean, the sum or a masked mean.
* **Dtype.** Computed in float32, or float64 for float64 inputs, and returned in
  that dtype: bfloat16 and float16 logits give float32 losses (docs/method.md §6);
  gradients come back in the inputs' dtype.
* **where**, as in optax: a boolean mask (any other dtype raises ``ValueError``, as
  in optax; to weight examples, multiply the returned losses by the weights, which
  gives the weighted gradient). One with one axis fewer than the logits is one flag
  per example (``[batch...]``); one with as many axes broadcasts to the logits:
  ``[B, C]`` entries, ``[B, 1]`` examples, ``[1, C]`` classes left out of every
  row's softmax (the fused loss takes the per-example forms only). Masked entries
  contribute nothing; an example masked entirely has loss 0 and gradient 0, also
  when its logits or labels are garbage (NaN, inf, out of range). So does an
  example whose target class is masked, as optax's probability-label loss gives;
  optax's integer-label loss gives :math:`\operatorname{lse}_{kept}(z) - z_t`
  there instead, the log of a ratio that is no probability (it can exceed 1, the
  loss turning negative), which the focal weights cannot take.
* **xi**: a number in [0, 1], a scalar or one per example, broadcast as ``where``
  is: ``[batch...]`` or any shape that broadcasts to it, or the logits' rank
  with a class axis of 1 (``[B, 1]`` for ``[B, C]`` logits); the sigmoid
  losses share an example's xi over its labels. A concrete xi outside [0, 1],
  not a number, or ``None`` raises ``ValueError`` (xi is the third positional
  argument, where optax's losses take ``axis`` or ``alpha``: pass it by
  keyword). A traced xi, e.g. ``cfl_jax.xi_schedule(...)(state.step)`` inside
  ``jit``, is not checked, as its value is unknown when the loss is traced (so
  the deliberate overshoot of :func:`cfl_jax.reference_xi_schedule` past 1, with
  ``first_epoch=1``, reaches the loss in a jitted step, as in the authors' code).
  A Python 0 or 1 skips the unused term.
* **Labels outside their range** give NaN in exactly the affected outputs, eagerly
  and under ``jit``, checked on the device (no host copy): integer class indices
  outside ``[0, C)`` (softmax and fused losses) and sigmoid targets outside
  ``[0, 1]``. Masked entries are exempt, so padding labelled -1 is fine under a
  mask. Class-probability labels of the softmax losses are weights, as in optax,
  and not checked; integer or boolean one-hot labels are accepted there, as in
  optax. Labels of the logits' shape given to an integer-label loss raise an error
  that names one-hot labels as the likely cause.
* **Hyper-parameters** (the exponents, ``label_smoothing``, ``clip``, ``alpha``)
  are static Python numbers, checked when the loss is called (``ValueError``
  naming the argument); only ``xi`` may be traced.

Values, gradients and Hessians are finite for every exponent :math:`\gamma \ge 0`
(:math:`0 < \gamma < 1` included) at any finite logits: :math:`\log(1 - p)` comes
from a log-sum-exp or a softplus, never from the log of a rounded probability.
"""

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
