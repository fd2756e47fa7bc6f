r"""Cyclical focal loss fused with the output projection, for large vocabularies.

``linear_cyclical_focal_loss_with_integer_labels(h, w, t, xi)`` equals
``cyclical_focal_loss_with_integer_labels(h @ w + b, t, xi)`` but never holds the
``[N, V]`` logits: it streams over chunks of the vocabulary (``lax.scan``).

Every quantity the loss needs is a per-row sum over classes of an elementwise
function of the logits, taken relative to a shift :math:`m` (the row maximum):
the non-target exponential sum :math:`s = \sum_{j \ne t} e^{z_j - m}`, the
target logit :math:`z_t` and, for the reference form with label smoothing,
:math:`\sum_{j \ne t} z_j`, :math:`\sum_{j \ne t} e^{g (z_j - m)}` and
:math:`\sum_{j \ne t} e^{g (z_j - m)} z_j`. The forward pass keeps them as
running sums, rescaling the exponential ones whenever the running maximum
grows (the online log-sum-exp); the loss is then a function of ``[N]`` arrays
only, the one per-example function of these statistics that the dense forms call
too (``cfl_jax.losses._core``). The streamed sums are a ``jax.custom_jvp``: their
JVP is the sum of each chunk's JVP, the chunk's logits recomputed
(``jax.checkpoint``) at the final shift, held fixed. Reverse mode transposes that
scan, accumulating the gradients of the embeddings, the kernel, the bias and the
class weights chunk by chunk; since the rule is plain JAX that calls the sums
again for its primal, forward mode, Hessians and Hessian-vector products are
exact too. Memory beyond inputs and outputs is a few ``[N, chunk_size]`` arrays,
whatever ``V``.

The paper form with label smoothing weights every class by a function of
:math:`p_j` itself, :math:`[\xi (1 + p_j)^{\gamma_{hc}} + (1 - \xi)(1 - p_j)^{\gamma_{lc}}]
\log p_j`, which needs the final :math:`L = \operatorname{lse}(z)`: a second
forward pass sums it over the non-target classes with :math:`L` an input (its
gradient reaches the logits through the first pass's sums). :math:`\log(1 - p_j)`
is ``log1p(-p_j)`` for every class but the row's largest non-target one, :math:`a`
(the others have :math:`p_j \le 1/2`), and comes from the log-sum-exp of the
classes other than :math:`a` for :math:`a`.

Tensor-parallel output projections (the kernel's columns sharded over a mesh
axis, ``vocab_axis``) run vocabulary-parallel in a ``jax.shard_map``: each
device streams over its own columns for its own rows, and the per-row sums are
combined across the axis with ``[N]`` collectives (the maximum shift, then the
sums rescaled to it and added; :math:`a` and the second pass's sums likewise).
Derivatives need no collective of their own: each device differentiates its
columns' part of the sums (the combination is plain JAX); the embeddings'
gradient is summed over the vocabulary shards and the kernel's over the batch shards by the
transposes of ``jax.lax.pcast``.

References:
  Smith, `Cyclical Focal Loss <https://arxiv.org/abs/2202.08978>`_, 2022.
  Wijmans et al., `Cut Your Losses in Large-Vocabulary Language Models
  <https://arxiv.org/abs/2411.09009>`_, 2024.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from cfl_jax.losses import _common, _core

ArrayLike = jax.typing.ArrayLike

__all__ = ["linear_cyclical_focal_loss_with_integer_labels"]

_CHUNK_BYTES = 8192  # default chunk: 2,048 classes in float32, 4,096 in bfloat16


class _Sums(NamedTuple):
  """Per-row sums over classes ``[N]``, relative to the shift (the row maximum)."""
  shift: jax.Array          # m, the running maximum of the logits
  target_logit: jax.Array   # z_t (0 if the label is outside [0, V))
  exp: jax.Array            # sum_{j != t} e^{z_j - m + K}
  logit: jax.Array | None   # sum_{j != t} z_j                (reference form)
  power: jax.Array | None   # sum_{j != t} e^{g (z_j - m)}     (reference form, g > 0)
  power_logit: jax.Array | None  # sum_{j != t} e^{g (z_j - m)} z_j


class _Plan(NamedTuple):
  """Static description of the streamed computation (over one device's vocabulary shard)."""
  num_classes: int      # the kernel's columns here: V, or V / shards rounded up
  vocab_size: int       # V
  chunk_size: int
  sum_logits: bool      # track sum_{j != t} z_j
  gamma_neg: float      # > 0: track the two power sums
  dtype: jnp.dtype      # float32, or float64 for float64 inputs
  # Paper form with label smoothing: the exponents of the second pass's sums
  # (None: that sum is not needed), or both None: no second pass.
  smoothed_gamma_hc: float | None = None
  smoothed_gamma_lc: float | None = None
  vocab_axis: str | None = None  # the mesh axis of the vocabulary shards (inside jax.shard_map)
  logit_soft_cap: float | None = None

  @property
  def smoothed(self) -> bool:
    return self.smoothed_gamma_hc is not None or self.smoothed_gamma_lc is not None


class _RowConstants(NamedTuple):
  """What the backward pass holds fixed per row (from the forward pass)."""
  shift: jax.Array              # m
  top: jax.Array | None         # a, the largest non-target class (second pass)
  lse: jax.Array | None         # lse(z) (second pass; its gradient is added separately)


class _Inputs(NamedTuple):
  """The differentiable inputs of the streamed computation (rows flattened)."""
  embeddings: jax.Array            # [N, D]
  kernel: jax.Array                # [D, V]
  bias: jax.Array | None           # [V]
  class_weights: jax.Array | None  # [V]


class _Chunk(NamedTuple):
  """One chunk of the vocabulary (``c`` classes)."""
  logits: jax.Array         # [N, c]
  start: jax.Array          # the first class index
  columns: jax.Array        # [c] class indices
  is_new: jax.Array         # [c]: not counted by an earlier chunk (the last may overlap),
                            # nor padding (the last vocabulary shards)
  class_weights: jax.Array | None  # [c]


def _weighted(values, chunk: _Chunk):
  return values if chunk.class_weights is None else values * chunk.class_weights


def _chunk_sums(logits, chunk: _Chunk, labels, shift, plan: _Plan) -> _Sums:
  """The sums of one chunk of ``logits`` ``[N, c]``, with ``shift`` held fixed."""
  is_target = (chunk.columns == labels[:, None]) & chunk.is_new
  non_target = chunk.is_new & ~is_target

  def weighted_total(values):
    return jnp.sum(jnp.where(non_target, _weighted(values, chunk), 0.0), axis=-1)

  logit = power = power_logit = None
  if plan.sum_logits:
    logit = weighted_total(logits)
  if plan.gamma_neg > 0:
    powers = jnp.exp(jnp.where(non_target, plan.gamma_neg * (logits - shift[:, None]), -jnp.inf))
    power, power_logit = weighted_total(powers), weighted_total(powers * logits)
  return _Sums(
      shift=shift,
      target_logit=jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1),
      exp=jnp.sum(_common.scaled_exp(logits, shift, non_target), axis=-1),
      logit=logit, power=power, power_logit=power_logit)


def _chunk_smoothed_sums(logits, chunk: _Chunk, labels, rows: _RowConstants,
                         plan: _Plan) -> _core.SmoothedSums:
  """The second-pass sums of one chunk, with ``rows`` (lse included) held fixed."""
  is_new = chunk.is_new
  is_top = is_new & (chunk.columns == rows.top[:, None])
  others = is_new & ~is_top & (chunk.columns != labels[:, None])
  log_p = logits - rows.lse[:, None]
  p = jnp.exp(jnp.where(others, log_p, -jnp.inf))  # <= 1/2 on `others`

  def weighted_log_p(base, gamma):
    """``sum (base ** gamma) log p`` over ``others``; ``base`` is in [1/2, 3/2] there."""
    if gamma is None:
      return None
    # Small integer exponents (the usual ones) as products: no exp or log per entry.
    power = (jax.lax.integer_pow(base, int(gamma)) if _common.is_small_integer(gamma)
             else jnp.power(base, gamma))
    return jnp.sum(jnp.where(others, _weighted(power * log_p, chunk), 0.0), axis=-1)

  return _core.SmoothedSums(
      high_confidence=weighted_log_p(1 + p, plan.smoothed_gamma_hc),
      focal=weighted_log_p(1 - p, plan.smoothed_gamma_lc),
      top_logit=jnp.sum(jnp.where(is_top, logits, 0.0), axis=-1),
      top_rest=jnp.sum(_common.scaled_exp(logits, rows.shift, is_new & ~is_top), axis=-1),
      top_weight=None if chunk.class_weights is None else jnp.sum(
          jnp.where(is_top, chunk.class_weights, 0.0), axis=-1))


def _rescaled(sums: _Sums, new_shift, plan: _Plan) -> _Sums:
  """The exponential sums re-expressed relative to a larger shift."""
  decay = new_shift - sums.shift
  power_scale = None if sums.power is None else jnp.exp(-plan.gamma_neg * decay)
  return sums._replace(
      shift=new_shift, exp=sums.exp * jnp.exp(-decay),
      power=None if sums.power is None else sums.power * power_scale,
      power_logit=None if sums.power is None else sums.power_logit * power_scale)


def _offset(plan: _Plan):
  """The first class of this device's vocabulary shard (0 unsharded)."""
  if plan.vocab_axis is None:
    return 0
  return jax.lax.axis_index(plan.vocab_axis) * plan.num_classes


def _psum(tree, plan: _Plan):
  """``tree`` summed over the vocabulary shards."""
  return tree if plan.vocab_axis is None else jax.lax.psum(tree, plan.vocab_axis)


def _across_shards(sums: _Sums, plan: _Plan) -> _Sums:
  """The shards' sums as one: the largest shift, the exponential sums rescaled to it, added."""
  if plan.vocab_axis is None:
    return sums
  shift = jax.lax.pmax(jax.lax.stop_gradient(sums.shift), plan.vocab_axis)
  return _psum(_rescaled(sums, shift, plan)._replace(shift=None), plan)._replace(shift=shift)


def _top_across_shards(top_logit, top, plan: _Plan):
  """The largest non-target class of all shards (the lowest among ties), as a local index."""
  top = top.astype(jnp.int32)
  if plan.vocab_axis is None:
    return top
  offset = _offset(plan)
  top_logit = jax.lax.stop_gradient(top_logit)
  is_top = top_logit == jax.lax.pmax(top_logit, plan.vocab_axis)
  return jax.lax.pmin(jnp.where(is_top, top + offset, plan.vocab_size), plan.vocab_axis) - offset


def _row_zeros(inputs: _Inputs, dtype):
  """Zeros ``[N]`` typed like the rows: sharded like them and, inside ``jax.shard_map``,
  varying like the logits, as a scan's carries must keep their type."""
  return jnp.zeros_like(inputs.embeddings[:, 0], dtype)


def _chunk(inputs: _Inputs, index, plan: _Plan) -> _Chunk:
  """Chunk ``index`` of the vocabulary, its logits computed."""
  start = jnp.minimum(index * plan.chunk_size, plan.num_classes - plan.chunk_size)
  columns = start + jnp.arange(plan.chunk_size)

  def columns_of(vector):
    return jax.lax.dynamic_slice_in_dim(vector, start, plan.chunk_size)

  kernel = jax.lax.dynamic_slice_in_dim(inputs.kernel, start, plan.chunk_size, axis=1)
  logits = jnp.dot(inputs.embeddings, kernel, preferred_element_type=plan.dtype)
  if inputs.bias is not None:
    logits += columns_of(inputs.bias).astype(plan.dtype)
  logits = _common.soft_cap(logits, plan.logit_soft_cap)
  is_new = columns >= index * plan.chunk_size
  if plan.vocab_axis is not None:
    is_new &= columns < plan.vocab_size - _offset(plan)
  return _Chunk(logits=logits, start=start, columns=columns, is_new=is_new,
                class_weights=None if inputs.class_weights is None
                else columns_of(inputs.class_weights))


def _num_chunks(plan: _Plan) -> int:
  return -(-plan.num_classes // plan.chunk_size)


def _first_pass(inputs: _Inputs, labels, plan: _Plan):
  """The running sums and (second pass only) ``(z_a, a)``, the largest non-target class."""
  def step(carry, index):
    sums, top_logit, top = carry
    chunk = _chunk(inputs, index, plan)
    chunk_max = jnp.max(jnp.where(chunk.is_new, chunk.logits, -jnp.inf), axis=-1)
    if plan.smoothed:
      candidates = jnp.where(chunk.is_new & (chunk.columns != labels[:, None]), chunk.logits,
                             -jnp.inf)
      chunk_top = jnp.argmax(candidates, axis=-1)
      chunk_top_logit = jnp.take_along_axis(candidates, chunk_top[:, None], axis=-1)[:, 0]
      is_larger = chunk_top_logit > top_logit
      top_logit = jnp.where(is_larger, chunk_top_logit, top_logit)
      top = jnp.where(is_larger, (chunk.start + chunk_top).astype(top.dtype), top)
    sums = _rescaled(sums, jnp.maximum(sums.shift, chunk_max), plan)
    chunk_sums = _chunk_sums(chunk.logits, chunk, labels, sums.shift, plan)
    return (jax.tree.map(jnp.add, sums._replace(shift=0.0), chunk_sums), top_logit, top), None

  zeros = _row_zeros(inputs, plan.dtype)
  lowest = jnp.full_like(zeros, jnp.finfo(plan.dtype).min)
  initial = _Sums(
      # Not -inf: the first rescaling would compute e^{-inf - (-inf)}.
      shift=lowest, target_logit=zeros, exp=zeros,
      logit=zeros if plan.sum_logits else None,
      power=zeros if plan.gamma_neg > 0 else None,
      power_logit=zeros if plan.gamma_neg > 0 else None)
  # A label outside [0, V) leaves every class a candidate; one inside leaves V - 1 >= 1.
  (sums, top_logit, top), _ = jax.lax.scan(
      step, (initial, lowest, jnp.zeros_like(zeros, jnp.int32)), jnp.arange(_num_chunks(plan)))
  # The class index as a float (exact below 2^24 classes): a float output's zero tangent has
  # the type of its primal, also inside jax.shard_map, where float0 tangents carry no vma.
  return sums, (top_logit, top.astype(plan.dtype))


def _second_pass(inputs: _Inputs, labels, rows: _RowConstants, plan: _Plan):
  """The second-pass sums, with ``rows`` (shift, top class and lse) held fixed."""
  def step(carry, index):
    chunk = _chunk(inputs, index, plan)
    chunk_sums = _chunk_smoothed_sums(chunk.logits, chunk, labels, rows, plan)
    return jax.tree.map(jnp.add, carry, chunk_sums), None

  zeros = _row_zeros(inputs, plan.dtype)
  initial = _core.SmoothedSums(
      high_confidence=None if plan.smoothed_gamma_hc is None else zeros,
      focal=None if plan.smoothed_gamma_lc is None else zeros,
      top_logit=zeros, top_rest=zeros,
      top_weight=None if inputs.class_weights is None else zeros)
  return jax.lax.scan(step, initial, jnp.arange(_num_chunks(plan)))[0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _streamed(plan: _Plan, inputs: _Inputs, labels, rows: _RowConstants | None):
  """The per-row sums of the logits ``embeddings @ kernel + bias``, streamed over chunks.

  ``rows is None``: the first pass, ``(_Sums, (z_a, a))``; else the second pass's
  ``_core.SmoothedSums`` at the given shift, top class and lse.
  """
  if rows is None:
    return _first_pass(inputs, labels, plan)
  return _second_pass(inputs, labels, rows, plan)


def _streamed_jvp(plan: _Plan, primals, tangents):
  r"""Sums of the chunks' JVPs, each chunk's logits recomputed (``jax.checkpoint``).

  The shift is held fixed (its tangent is zero): every quantity the loss forms from the
  sums is invariant to it, so derivatives of any order taken at a fixed shift are exact.
  The rule is plain JAX and calls :func:`_streamed` for its primal, so reverse mode (the
  transposed scan), forward mode and their compositions (Hessians) all hold to any order,
  and the transposed scan keeps no ``[N, V]`` array.
  """
  inputs, labels, rows = primals
  d_inputs, _, d_rows = tangents
  out = _streamed(plan, inputs, labels, rows)
  first = rows is None
  fixed = _RowConstants(shift=out[0].shift, top=None, lse=None) if first else rows
  # Only the differentiated inputs are traced through the chunks' JVPs.
  leaves, treedef = jax.tree.flatten((inputs, rows))
  d_leaves = jax.tree.leaves((d_inputs, d_rows))
  live = [i for i, d in enumerate(d_leaves)
          if jnp.issubdtype(jnp.result_type(leaves[i]), jnp.inexact)
          and not isinstance(d, jax.custom_derivatives.SymbolicZero)]

  def chunk_sums(live_leaves, index):
    values = list(leaves)
    for i, value in zip(live, live_leaves):
      values[i] = value
    chunk_inputs, chunk_rows = jax.tree.unflatten(treedef, values)
    chunk = _chunk(chunk_inputs, index, plan)
    if first:
      return _chunk_sums(chunk.logits, chunk, labels, fixed.shift, plan)._replace(shift=None)
    return _chunk_smoothed_sums(chunk.logits, chunk, labels, chunk_rows, plan)

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def step(total, index):
    _, d_sums = jax.jvp(lambda *v: chunk_sums(v, index), [leaves[i] for i in live],
                        [d_leaves[i] for i in live])
    return jax.tree.map(jnp.add, total, d_sums), None

  initial = jax.tree.map(jnp.zeros_like, out[0]._replace(shift=None) if first else out)
  d_sums, _ = jax.lax.scan(step, initial, jnp.arange(_num_chunks(plan)))
  if not first:
    return out, d_sums
  sums, top = out
  zeros = jnp.zeros_like(sums.shift)
  return out, (d_sums._replace(shift=zeros), jax.tree.map(jnp.zeros_like, top))


_streamed.defjvp(_streamed_jvp, symbolic_zeros=True)


def _chunk_size(value, num_classes: int, dtype) -> int:
  if value is None:
    return min(num_classes, _CHUNK_BYTES // jnp.dtype(dtype).itemsize)
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"chunk_size must be a positive int or None, got {value!r}.")
  return min(int(value), num_classes)


def _fused_loss(embeddings, kernel, labels, xi, bias, class_weights, where, *, plan: _Plan,
                static_xi, **form):
  """The loss of ``[batch..., D]`` embeddings against a ``[D, plan.num_classes]`` kernel: the
  whole vocabulary, or (inside ``jax.shard_map``) one shard of it; ``form`` holds the
  hyper-parameters of :func:`cfl_jax.losses._core.loss_from_row_stats`."""
  batch_shape = labels.shape
  rows = math.prod(batch_shape)
  if where is not None:
    # Double-where: masked rows may hold garbage; keep their gradient exactly 0.
    embeddings = jnp.where(where[..., None], embeddings, 0)
  labels_in_rows = labels.reshape(rows).astype(jnp.int32)
  shard_labels = labels_in_rows - _offset(plan)  # outside [0, num_classes): another shard's
  inputs = _Inputs(embeddings.reshape(rows, -1), kernel, bias, class_weights)
  sums, top = _streamed(plan, inputs, shard_labels, None)
  # Vocabulary shards: the sums of all shards, relative to the largest shift.
  sums = _across_shards(sums, plan)
  stats = _core.RowStats(shift=sums.shift, target_logit=sums.target_logit, exp_sum=sums.exp,
                         num_classes=plan.vocab_size, non_target_weight=plan.vocab_size - 1,
                         non_target_logit=sums.logit)
  if plan.smoothed:
    fixed = _RowConstants(shift=sums.shift, top=_top_across_shards(*top, plan),
                          lse=_core.log_probs(stats).lse)
    stats = stats._replace(smoothed=_psum(_streamed(plan, inputs, shard_labels, fixed), plan))
  if sums.power is not None:
    stats = stats._replace(focal_log_p_sum=lambda lse: _core.focal_from_sums(
        plan.gamma_neg, lse, sums.shift, sums.power, sums.power_logit)[0])
  if class_weights is not None:
    in_shard = (shard_labels >= 0) & (shard_labels < plan.num_classes)
    target_weight = _psum(jnp.where(
        in_shard, class_weights[jnp.clip(shard_labels, 0, plan.num_classes - 1)], 0.0), plan)
    stats = stats._replace(target_weight=target_weight, non_target_weight=_psum(
        jnp.sum(class_weights), plan) - target_weight)
  if static_xi is None:
    static_xi = xi.reshape(rows) if xi.ndim else xi
  loss = _core.loss_from_row_stats(stats, xi=static_xi, **form).reshape(batch_shape)
  loss = _common.nan_unless(_common.valid_classes(labels, plan.vocab_size), loss)
  return loss if where is None else jnp.where(where, loss, 0.0)


def _vocab_sharding(vocab_axis, kernel):
  """``(vocab_axis, mesh)``: the argument or, under Explicit axes, the kernel's column axis;
  ``(None, None)`` for the unsharded path."""
  if vocab_axis is None:
    sharding = getattr(jax.typeof(kernel), "sharding", None)
    axes = () if sharding is None or len(sharding.spec) < 2 else _axes(sharding.spec[1])
    if not axes or not set(axes) <= set(sharding.mesh.explicit_axes):
      return None, None
    if len(axes) > 1:
      raise ValueError(f"the kernel's vocabulary axis is sharded over {axes}; the fused loss "
                       "shards it over one mesh axis.")
    vocab_axis = axes[0]
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    sharding = getattr(jax.typeof(kernel), "sharding", None)
    mesh = mesh if sharding is None else sharding.mesh
  if not isinstance(vocab_axis, str) or vocab_axis not in mesh.axis_names:
    raise ValueError(f"vocab_axis={vocab_axis!r} must name an axis of the mesh set with "
                     f"jax.set_mesh(mesh); the mesh's axes are {mesh.axis_names}.")
  return vocab_axis, mesh


def _axes(entry) -> tuple[str, ...]:
  """The mesh axes of a partition spec entry (``None``, a name or a tuple of names)."""
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


def _entry(axes: tuple[str, ...]):
  """The partition spec entry of ``axes``."""
  return axes[0] if len(axes) == 1 else axes or None


def _batch_spec(embeddings, mesh, vocab_axis):
  """How the batch axes are sharded (never over ``vocab_axis``): as the embeddings are under
  Explicit axes; under Auto axes the leading one over the mesh's other axes, if they divide it."""
  batch_shape = embeddings.shape[:-1]
  if vocab_axis in mesh.explicit_axes:
    spec = tuple(jax.typeof(embeddings).sharding.spec) + (None,) * embeddings.ndim
    return P(*(_entry(tuple(a for a in _axes(entry) if a != vocab_axis))
               for entry in spec[:len(batch_shape)]))
  others = tuple(a for a in mesh.axis_names if a != vocab_axis)
  size = math.prod(mesh.shape[a] for a in others)
  if not batch_shape or size == 1 or batch_shape[0] % size:
    return P()
  return P(_entry(others))


def _vocab_parallel(loss, args, plan: _Plan, mesh):
  """``loss(*args)`` in a ``jax.shard_map``: each device streams over its vocabulary shard
  (padded to ``plan.num_classes`` columns) for the rows of its batch shard."""
  embeddings, kernel, labels, xi, bias, class_weights, where = args
  padding = plan.num_classes * mesh.shape[plan.vocab_axis] - plan.vocab_size
  if padding:
    kernel = jnp.pad(kernel, ((0, 0), (0, padding)))
    bias, class_weights = (None if v is None else jnp.pad(v, (0, padding))
                           for v in (bias, class_weights))
  batch = _batch_spec(embeddings, mesh, plan.vocab_axis)
  batch_axes = tuple(a for entry in batch for a in _axes(entry))

  def shard_loss(embeddings, kernel, labels, xi, bias, class_weights, where):
    # The differentiable inputs vary like the logits: the casts' transposes sum the
    # embeddings' gradient over the vocabulary shards and the kernel's over the batch shards.
    embeddings = jax.lax.pcast(embeddings, plan.vocab_axis, to="varying")
    kernel, bias, class_weights = jax.lax.pcast((kernel, bias, class_weights), batch_axes,
                                                to="varying")
    return loss(embeddings, kernel, labels, xi, bias, class_weights, where, plan=plan)

  vocab = P(plan.vocab_axis)
  specs = (P(*batch, None), P(None, plan.vocab_axis), batch, batch if xi.ndim else P(),
           vocab, vocab, batch)
  args = (embeddings, kernel, labels, xi, bias, class_weights, where)
  if plan.vocab_axis in mesh.explicit_axes:
    args = tuple(None if a is None else jax.sharding.reshard(a, NamedSharding(mesh, spec))
                 for a, spec in zip(args, specs))
  return jax.shard_map(shard_loss, mesh=mesh, in_specs=specs, out_specs=batch)(*args)


def linear_cyclical_focal_loss_with_integer_labels(
    embeddings: ArrayLike,
    kernel: ArrayLike,
    labels: ArrayLike,
    xi: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    gamma_hc: float = 2.0,
    gamma_lc: float = 2.0,
    gamma_neg: float | None = None,
    label_smoothing: float = 0.0,
    class_weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    chunk_size: int | None = None,
    vocab_axis: str | None = None,
    z_loss: float = 0.0,
    logit_soft_cap: float | None = None,
) -> jax.Array:
  r"""Cyclical focal loss of ``embeddings @ kernel + bias``, without the ``[N, V]`` logits.

  Equals :func:`cfl_jax.cyclical_focal_loss_with_integer_labels` on the logits
  :math:`z = h W + b`,

  .. math::
    \ell = -\Big(1 - \epsilon + \frac{\epsilon}{V}\Big) w(p_t) \log p_t
           \;-\; \frac{\epsilon}{V} \sum_{j \ne t} v_j \log p_j ,

  with :math:`w(p) = \xi (1 + p)^{\gamma_{hc}} + (1 - \xi)(1 - p)^{\gamma_{lc}}`
  and :math:`v_j = w(p_j)` (paper form) or :math:`v_j = \xi + (1 - \xi) p_j^{\gamma_{neg}}`
  (reference form), computed in one streamed pass (two for the paper form with
  :math:`\epsilon > 0`)
  over vocabulary chunks of ``chunk_size`` classes: compiled temporaries are a
  few ``[N, chunk_size]`` float32 arrays whatever the vocabulary size ``V``. The
  backward pass recomputes each chunk's logits. ``gamma_hc = gamma_lc = 0``
  gives a fused cross-entropy. Logits are accumulated in float32 (also for
  bfloat16 inputs); values and gradients are finite for every :math:`\gamma \ge 0`
  at any logits (:math:`\log(1 - p_t)` comes from the non-target log-sum-exp).

  Args:
    embeddings: ``[batch..., D]`` float (e.g. ``[B, T, D]`` token embeddings).
    kernel: ``[D, V]`` float output projection.
    labels: ``[batch...]`` integer class indices; a label outside ``[0, V)``
      gives a NaN loss for its example (mask it with ``where`` to ignore it).
    xi: the mixing weight in [0, 1], a scalar or one per example (``[batch...]``,
      or a shape that broadcasts to it); may be traced.
    bias: optional ``[V]`` float bias.
    gamma_hc: high-confidence exponent :math:`\gamma_{hc} \ge 0`.
    gamma_lc: focal exponent :math:`\gamma_{lc} \ge 0`.
    gamma_neg: ``None`` for the paper form; a number :math:`\ge 0` for the
      reference-code form (non-target weight :math:`\xi + (1 - \xi) p_j^{g}`).
    label_smoothing: :math:`\epsilon \in [0, 1)`, inside the weighted sum. In
      the paper form it costs a second forward pass over the chunks (one more
      matmul); the reference form's smoothed sum comes from the first pass.
    class_weights: optional ``[V]`` weights :math:`c_j` multiplying each class
      term (the target's and, with smoothing, every non-target's), as in
      :func:`cfl_jax.cyclical_focal_loss_with_integer_labels`; differentiable
      (the backward pass accumulates their gradient chunk by chunk).
    where: optional boolean mask, one flag per example: ``[batch...]``,
      ``[batch..., 1]`` or a shape that broadcasts to them (no class mask); a
      masked example (e.g. a padding token) has loss 0 and contributes 0
      gradient, whatever its label.
    chunk_size: classes per chunk; ``None`` picks 2,048 for float32 kernels,
      4,096 for bfloat16 (capped at ``V``, or at the classes per device).
    vocab_axis: for a tensor-parallel output projection, the mesh axis (of the
      mesh set with ``jax.set_mesh``) that the kernel's columns are sharded over:
      each device streams over its ``V / shards`` classes and the per-row sums
      are combined across the axis; no ``[D, V]`` or ``[N, V]`` array is
      gathered. Layouts: kernel ``P(None, vocab_axis)``, bias and class weights
      ``P(vocab_axis)``, the gradients of all three the same; the batch as the
      embeddings are sharded under Explicit axes, under Auto axes its leading
      axis over the mesh's other axes (replicated if they do not divide it).
      Under Explicit axes ``None`` reads the axis from the kernel's sharding. A
      ``V`` the axis does not divide (the kernel is then replicated) is padded.
      Temporaries per device: a few ``[N / batch shards, chunk_size]`` arrays
      and, with the batch sharded, the kernel shard's partial gradient. Inside
      the caller's own ``jax.shard_map`` over ``vocab_axis``, ``kernel`` (and
      ``bias``, ``class_weights``) are this device's ``V / shards`` columns, the
      labels global class indices.
    z_loss: weight of :math:`\operatorname{lse}(z)^2` added to each example's
      loss (PaLM's z-loss), >= 0.
    logit_soft_cap: ``None`` or a cap :math:`c > 0`: the logits become
      :math:`c \tanh(z / c)` before everything else (Gemma 2's soft-capping).

  Returns:
    The loss of each example, ``[batch...]``, float32 (float64 for float64 inputs).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import cfl_jax
    >>> h = jax.random.normal(jax.random.key(0), (2, 3, 8))    # [B, T, D]
    >>> w = jax.random.normal(jax.random.key(1), (8, 100))     # [D, V]
    >>> labels = jnp.array([[5, 7, 0], [99, 3, 0]])
    >>> padding = jnp.array([[True, True, False], [True, True, False]])
    >>> loss = cfl_jax.linear_cyclical_focal_loss_with_integer_labels(
    ...     h, w, labels, xi=0.5, where=padding, chunk_size=32)
    >>> dense = cfl_jax.cyclical_focal_loss_with_integer_labels(
    ...     h @ w, labels, xi=0.5, where=padding)
    >>> print(loss.shape, bool(jnp.allclose(loss, dense, rtol=1e-5, atol=1e-5)))
    (2, 3) True

  References:
    Smith, `Cyclical Focal Loss <https://arxiv.org/abs/2202.08978>`_, 2022.
    Wijmans et al., `Cut Your Losses in Large-Vocabulary Language Models
    <https://arxiv.org/abs/2411.09009>`_, 2024.
  """
  gamma_hc = _common.exponent("gamma_hc", gamma_hc)
  gamma_lc = _common.exponent("gamma_lc", gamma_lc)
  gamma_neg = None if gamma_neg is None else _common.exponent("gamma_neg", gamma_neg)
  label_smoothing = _common.fraction("label_smoothing", label_smoothing)
  z_loss, logit_soft_cap = _common.logit_options(z_loss, logit_soft_cap)
  embeddings, kernel, labels = map(jnp.asarray, (embeddings, kernel, labels))
  _common.check_float("embeddings", embeddings)
  _common.check_float("kernel", kernel)
  if embeddings.ndim < 1:
    raise ValueError("embeddings must have a feature axis [..., D], got a scalar.")
  if kernel.ndim != 2 or kernel.shape[0] != embeddings.shape[-1]:
    raise ValueError(
        f"kernel must have shape [D, V] with D = {embeddings.shape[-1]} (the embeddings' "
        f"last axis), got {kernel.shape}.")
  num_classes = kernel.shape[1]
  if not isinstance(num_classes, int):
    raise ValueError(
        f"the fused loss streams over a static number of vocabulary chunks: V must be "
        f"concrete, got the symbolic {num_classes} (export with a symbolic batch only).")
  if num_classes < 2:
    raise ValueError(f"kernel needs at least 2 classes (V >= 2), got V = {num_classes}.")
  batch_shape = embeddings.shape[:-1]
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}.")
  _common.check_index_shape(labels, batch_shape, num_classes,
                            expected="the embeddings' batch shape")
  bias = _common.class_vector("bias", bias, num_classes)
  if bias is not None:
    _common.check_float("bias", bias)
  dtype = _common.compute_dtype(embeddings, kernel)
  class_weights = _common.class_vector("class_weights", class_weights, num_classes)
  if class_weights is not None:
    class_weights = class_weights.astype(dtype)
  static = _common.static_xi(xi)
  xi = jnp.asarray(_common.batch_xi(xi, batch_shape, dtype), dtype)
  where = _common.mask(where, (*batch_shape, num_classes))
  if where is not None and where.shape[-1] != 1:
    raise ValueError(
        f"where must have shape {batch_shape} (one flag per example, or a shape that "
        f"broadcasts to it): the fused loss has no class mask, got where shape {where.shape}.")
  if where is not None:
    where = jnp.broadcast_to(where[..., 0], batch_shape)
  vocab_axis, mesh = _vocab_sharding(vocab_axis, kernel)
  shards = 1 if vocab_axis is None else mesh.shape[vocab_axis]
  # Inside the caller's jax.shard_map over vocab_axis, the kernel is this device's shard.
  local = vocab_axis is not None and vocab_axis in mesh.manual_axes
  shard_classes = num_classes if local else -(-num_classes // shards)
  smoothed = gamma_neg is None and label_smoothing > 0
  plan = _Plan(num_classes=shard_classes, vocab_size=num_classes * shards if local else num_classes,
               chunk_size=_chunk_size(chunk_size, shard_classes, kernel.dtype),
               sum_logits=gamma_neg is not None and label_smoothing > 0,
               gamma_neg=gamma_neg if gamma_neg is not None and label_smoothing > 0 else 0.0,
               dtype=dtype,
               smoothed_gamma_hc=gamma_hc if smoothed and static != 0 else None,
               smoothed_gamma_lc=gamma_lc if smoothed and static != 1 else None,
               vocab_axis=vocab_axis, logit_soft_cap=logit_soft_cap)
  loss = functools.partial(_fused_loss, static_xi=static, gamma_hc=gamma_hc, gamma_lc=gamma_lc,
                           gamma_neg=gamma_neg, label_smoothing=label_smoothing, z_loss=z_loss)
  if local and vocab_axis not in jax.typeof(embeddings).manual_axis_type.varying:
    # Each shard's rows meet its columns: the cast's transpose sums their gradient over shards.
    embeddings = jax.lax.pcast(embeddings, vocab_axis, to="varying")
  args = (embeddings, kernel, labels, xi, bias, class_weights, where)
  if vocab_axis is None or local:
    return loss(*args, plan=plan)
  return _vocab_parallel(loss, args, plan, mesh)
