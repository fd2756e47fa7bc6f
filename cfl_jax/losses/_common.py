"""What the three loss families share: the input policy of :mod:`cfl_jax.losses` and the
numerically safe pieces of the softmax and fused losses (docs/method.md §6)."""

from __future__ import annotations

import functools
import math
import numbers
from typing import NoReturn

import jax
import jax.numpy as jnp
import numpy as np

# ----------------------------------------------------------------------------
# Hyper-parameters: static Python numbers, checked when the loss is called
# ----------------------------------------------------------------------------


def static_number(name: str, value) -> float:
  if isinstance(value, jax.core.Tracer):
    raise TypeError(
        f"{name} must be a static Python number, got a traced value; only `xi` "
        "may be traced (schedule it with cfl_jax.xi_schedule).")
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise TypeError(f"{name} must be a real number, got {value!r}.") from None
  if not np.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value}.")
  return value


def exponent(name: str, value) -> float:
  """A focusing exponent, a static number >= 0."""
  value = static_number(name, value)
  if value < 0:
    raise ValueError(f"{name} must be >= 0, got {value}.")
  return value


def fraction(name: str, value, *, one: bool = False) -> float:
  """A static number in [0, 1), or in [0, 1] with ``one``."""
  value = static_number(name, value)
  if not (0.0 <= value <= 1.0 if one else 0.0 <= value < 1.0):
    raise ValueError(f"{name} must be in [0, {'1]' if one else '1)'}, got {value}.")
  return value


def static_xi(xi):
  """Python 0 or 1, kept static (the unused term is skipped); ``None`` for any other xi."""
  return xi if isinstance(xi, numbers.Real) and xi in (0, 1) else None


def check_xi(xi) -> None:
  """A concrete ``xi`` must be real numbers in [0, 1] (``ValueError`` naming xi otherwise).

  A traced xi (e.g. a schedule read inside ``jit``) is not checked: its values are unknown
  until the program runs; nor is an array spread over other hosts' devices.
  """
  if isinstance(xi, jax.core.Tracer) or (isinstance(xi, jax.Array)
                                         and not xi.is_fully_addressable):
    return
  hint = ("; xi is the third positional argument, where optax's losses take axis or alpha: "
          "pass it by keyword (xi=...)")
  try:
    values = np.asarray(xi)
  except (TypeError, ValueError):
    values = None
  if values is None or not (jnp.issubdtype(values.dtype, jnp.integer)
                            or jnp.issubdtype(values.dtype, jnp.floating)):
    raise ValueError(f"xi must be a real number or array in [0, 1], got {xi!r}{hint}.")
  if not np.all((values >= 0) & (values <= 1)):
    shown = values if values.ndim == 0 else f"values in [{values.min():g}, {values.max():g}]"
    raise ValueError(f"xi must be in [0, 1], got {shown}{hint}.")


# ----------------------------------------------------------------------------
# Arrays: dtypes, where, xi, labels
# ----------------------------------------------------------------------------


def check_float(name: str, array: jax.Array):
  if not jnp.issubdtype(array.dtype, jnp.floating):
    raise ValueError(f"{name} must be floating point, got dtype {array.dtype}.")


def compute_dtype(*arrays) -> jnp.dtype:
  """float32, or float64 for float64 inputs: the dtype every loss computes and returns in."""
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def class_vector(name: str, value, num_classes: int) -> jax.Array | None:
  """An optional ``[num_classes]`` argument (class weights, a bias), its shape checked."""
  if value is None:
    return None
  value = jnp.asarray(value)
  if value.shape != (num_classes,):
    raise ValueError(f"{name} must have shape ({num_classes},), got {value.shape}.")
  return value


def mask(where, shape: tuple[int, ...], axis: int = -1) -> jax.Array | None:
  """``where`` as a boolean array of ``len(shape)`` axes, the class ``axis`` moved last.

  As in optax: a mask with one axis fewer than the logits (``shape``) has one flag per
  example and gets a class axis of 1; one with as many axes broadcasts to the logits
  (``[B, C]``, ``[B, 1]``, ``[1, C]``). The result is not broadcast: a class axis of 1
  means a per-example mask.
  """
  if where is None:
    return None
  flags = jnp.asarray(where)
  if flags.dtype != bool:
    raise ValueError(
        f"where must be a boolean mask, got dtype {flags.dtype} (as in optax); to weight "
        "examples, multiply the returned per-example losses by the weights.")
  if not shape:  # scalar logits (sigmoid losses)
    return flags if not flags.ndim else _mask_error(where, shape, axis)
  if flags.ndim == len(shape) - 1:
    flags = jnp.expand_dims(flags, axis)
  if flags.ndim != len(shape) or not _broadcasts_to(flags.shape, shape):
    _mask_error(where, shape, axis)
  return jnp.moveaxis(flags, axis, -1)


def _mask_error(where, shape, axis) -> NoReturn:
  batch_shape = shape[:axis] + shape[axis:][1:]
  raise ValueError(
      f"where must have shape {batch_shape} (one flag per example, or a shape that "
      f"broadcasts to it) or broadcast to the logits' shape {shape}; got where shape "
      f"{jnp.shape(where)}.")


def batch_xi(xi, batch_shape: tuple[int, ...], dtype, axis: int = -1):
  """xi checked (:func:`check_xi`), as a static 0 or 1, a scalar array or a ``batch_shape`` array.

  xi broadcasts as ``where`` does (:func:`mask`): an array with the batch's rank broadcasts
  to ``batch_shape``; one with the logits' rank (one axis more) has a class ``axis`` of 1
  (e.g. ``[B, 1]`` for ``[B, C]`` logits), one xi per example.
  """
  check_xi(xi)
  if static_xi(xi) is not None:
    return xi
  xi = jnp.asarray(xi, dtype)
  if not xi.ndim:
    return xi
  shape = xi.shape
  if xi.ndim == len(batch_shape) + 1 and xi.shape[axis] == 1:
    xi = jnp.squeeze(xi, axis)
  if not _broadcasts_to(xi.shape, batch_shape):
    raise ValueError(
        f"xi must be a scalar or have the batch shape {batch_shape} (or a shape that "
        f"broadcasts to it, or the logits' rank with a class axis of 1, as where), got shape "
        f"{shape}.")
  return jnp.broadcast_to(xi, batch_shape)


def check_index_shape(labels: jax.Array, batch_shape: tuple[int, ...], num_classes: int, *,
                      expected: str, alternative: str = "") -> None:
  """Integer labels must have the batch shape; the error names one-hot labels as the likely
  cause when they have one axis more with ``num_classes`` entries per example."""
  if labels.shape == tuple(batch_shape):
    return
  one_hot = (labels.ndim == len(batch_shape) + 1
             and labels.size == math.prod(batch_shape) * num_classes)
  hint = (f"; labels of the logits' shape look one-hot: pass class indices (e.g. "
          f"jnp.argmax(labels, axis=-1)){alternative}" if one_hot else "")
  raise ValueError(
      f"labels shape {labels.shape} does not match {expected} ({batch_shape}){hint}.")


def _broadcasts_to(shape, target) -> bool:
  try:
    return jnp.broadcast_shapes(shape, target) == tuple(target)
  except ValueError:
    return False


def valid_classes(labels: jax.Array, num_classes: int) -> jax.Array:
  """Where the integer ``labels`` index one of ``num_classes`` classes."""
  return (labels >= 0) & (labels < num_classes)


def valid_targets(labels: jax.Array) -> jax.Array:
  """Where the binary targets are in [0, 1] (NaN is not)."""
  return (labels >= 0) & (labels <= 1)


def nan_unless(valid: jax.Array, loss: jax.Array) -> jax.Array:
  """``loss``, NaN where the labels are not ``valid``: checked on device, under jit too."""
  return jnp.where(valid, loss, jnp.nan)


# ----------------------------------------------------------------------------
# Numerics of the softmax and fused losses
# ----------------------------------------------------------------------------

EXP_OFFSET = 60.0  # e^60 ~ 1e26: sums over up to 1e12 classes stay finite
SUM_FLOOR = 1e-18  # 1 / floor^2 is finite in float32: a bounded Hessian


def pow_exp(log_x: jax.Array, gamma: float) -> jax.Array:
  """``x ** gamma`` from ``log x``, with ``x ** 0 == 1`` even where ``x == 0``."""
  if gamma == 0:
    return jnp.ones_like(log_x)
  return jnp.exp(gamma * log_x)


def mix(xi, hard_term, easy_term):
  r"""``xi * hard_term() + (1 - xi) * easy_term()``, skipping a term when xi is 0 or 1."""
  if isinstance(xi, numbers.Real):
    if xi == 1:
      return hard_term()
    if xi == 0:
      return easy_term()
  return xi * hard_term() + (1 - xi) * easy_term()


def focal_weight(log_p, log_1m_p, xi, gamma_hc, gamma_lc):
  r""":math:`\xi (1 + p)^{\gamma_{hc}} + (1 - \xi)(1 - p)^{\gamma_{lc}}`, elementwise.

  ``log_1m_p`` is a thunk returning :math:`\log(1 - p)`: it is only evaluated
  when the focal term is used (not at a static ``xi = 1``).
  """
  return mix(xi,
             lambda: pow_exp(jnp.log1p(jnp.exp(log_p)), gamma_hc),
             lambda: pow_exp(log_1m_p(), gamma_lc))


def scaled_exp(logits, shift, kept=None, target=None):
  r""":math:`e^{z_j - m + K}` on the ``kept`` classes other than ``target``, 0 elsewhere.

  ``logits`` ``[..., C]``, ``shift`` (:math:`m`) ``[...]``, ``kept`` a ``[..., C]`` mask or
  None (all), ``target`` ``[...]`` class indices or None (none left out). The exponential
  is taken of the plain logits and the left-out entries are zeroed after it (the target by
  a scatter, not a column-index compare, which costs XLA:CPU about half an exponential);
  the JVP, :math:`e \odot (\dot z - \dot m)`, is written out, so autodiff saves only this
  array and the gradient through a sum of it is one elementwise product.
  """
  return _scaled_exp(logits, shift, kept, target)


@jax.custom_jvp
def _scaled_exp(logits, shift, kept, target):
  values = jnp.exp(logits - shift[..., None] + EXP_OFFSET)
  if kept is not None:
    values = jnp.where(kept, values, 0.0)
  return values if target is None else _zero_at_target(values, target)


@functools.partial(_scaled_exp.defjvp, symbolic_zeros=True)
def _scaled_exp_jvp(primals, tangents):
  logits, shift = primals[:2]
  d_logits, d_shift = tangents[:2]
  values = _scaled_exp(*primals)
  d_exponent = jnp.zeros_like(logits) if is_zero(d_logits) else d_logits
  if not is_zero(d_shift):
    d_exponent = d_exponent - d_shift[..., None]
  return values, values * d_exponent


def is_zero(tangent) -> bool:
  """Whether a custom JVP rule's tangent is a symbolic zero (``symbolic_zeros=True``)."""
  return isinstance(tangent, jax.custom_derivatives.SymbolicZero)


def _zero_at_target(values, target):
  """``values`` ``[..., C]`` with ``values[..., target]`` set to 0 (see :func:`at_target`)."""
  if _class_axis_sharded(values):
    return jnp.where(jnp.arange(values.shape[-1]) != target[..., None], values, 0.0)
  # The leading axes as batching dimensions: a batch-sharded scatter stays local (indexing
  # them with iotas instead makes XLA's partitioner all-gather the rows).
  batch = tuple(range(target.ndim))
  numbers = jax.lax.ScatterDimensionNumbers(
      update_window_dims=(), inserted_window_dims=(target.ndim,),
      scatter_dims_to_operand_dims=(target.ndim,), operand_batching_dims=batch,
      scatter_indices_batching_dims=batch)
  return jax.lax.scatter(values, target[..., None], jnp.zeros(target.shape, values.dtype),
                         numbers, indices_are_sorted=True, unique_indices=True,
                         mode=jax.lax.GatherScatterMode.FILL_OR_DROP)


def log_scaled_sum(scaled_sum):
  r""":math:`\log \sum_j e^{z_j - m}` from the sum of :func:`scaled_exp`, floored."""
  return jnp.log(scaled_sum + SUM_FLOOR) - EXP_OFFSET


def at_target(values, target):
  """``values[..., target]`` per row: ``values`` ``[..., C]`` or ``[C]``, ``target`` ``[...]``.

  A gather, except where the class axis of ``values`` is sharded over Explicit mesh
  axes: there JAX cannot infer the gather's sharding, and a masked sum (local sums, then
  a ``[...]`` all-reduce) never gathers the class axis.
  """
  if _class_axis_sharded(values):
    is_target = jnp.arange(values.shape[-1]) == target[..., None]
    return jnp.sum(jnp.where(is_target, values, 0), axis=-1).astype(values.dtype)
  if values.ndim == 1:
    return values.at[target].get(out_sharding=jax.typeof(target).sharding)
  return jnp.take_along_axis(values, target[..., None], axis=-1)[..., 0]


def _class_axis_sharded(values) -> bool:
  spec = jax.typeof(values).sharding.spec
  return len(spec) == values.ndim and spec[-1] is not None


def is_small_integer(gamma: float) -> bool:
  return gamma == int(gamma) and gamma <= 8


def logit_options(z_loss, logit_soft_cap) -> tuple[float, float | None]:
  """``(z_loss, logit_soft_cap)`` checked: a weight >= 0 and ``None`` or a cap > 0."""
  z_loss = static_number("z_loss", z_loss)
  if z_loss < 0:
    raise ValueError(f"z_loss must be >= 0, got {z_loss}.")
  if logit_soft_cap is not None:
    logit_soft_cap = static_number("logit_soft_cap", logit_soft_cap)
    if logit_soft_cap <= 0:
      raise ValueError(f"logit_soft_cap must be > 0 or None, got {logit_soft_cap}.")
  return z_loss, logit_soft_cap


def soft_cap(logits: jax.Array, cap: float | None) -> jax.Array:
  r""":math:`c \tanh(z / c)`, elementwise (``cap`` None: ``logits`` unchanged)."""
  return logits if cap is None else cap * jnp.tanh(logits / cap)
