"""Tests for cfl_jax.losses.linear: the fused projection + cyclical focal loss.

The oracle is the dense loss, ``cfl_jax.cyclical_focal_loss_with_integer_labels(h @ w + b, ...)``
(itself tested against float64 numpy in test_losses.py), and finite differences in float64.
Tolerance: float32 inputs agree with the dense loss to rtol = atol = 1e-5 in value and gradient
(both accumulate in float32; only the summation order differs).
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from jax.test_util import check_grads

import cfl_jax

fused = cfl_jax.linear_cyclical_focal_loss_with_integer_labels
dense = cfl_jax.cyclical_focal_loss_with_integer_labels

# One form per code path. The reference form without smoothing is the paper form's path in both
# losses (gamma_neg is read only with label_smoothing > 0: linear.py's _Plan, _core.py's
# loss_from_row_stats), so it is not listed apart from "paper".
FORMS = {
    "paper": dict(gamma_hc=3.0, gamma_lc=2.0),
    "paper_fractional": dict(gamma_hc=0.5, gamma_lc=0.25),
    "paper_smoothed": dict(gamma_hc=3.0, gamma_lc=2.0, label_smoothing=0.1),
    "paper_smoothed_fractional": dict(gamma_hc=0.5, gamma_lc=0.25, label_smoothing=0.3),
    "reference": dict(gamma_hc=3.0, gamma_lc=2.0, gamma_neg=2.0, label_smoothing=0.1),
    "reference_gneg_1.5": dict(gamma_hc=2.0, gamma_lc=0.0, gamma_neg=1.5, label_smoothing=0.2),
    "reference_gneg_0": dict(gamma_hc=2.0, gamma_lc=2.0, gamma_neg=0.0, label_smoothing=0.1),
}
TOL = dict(rtol=1e-5, atol=1e-5)
# Sharded against dense: float32 sums over other splits of the vocabulary and tokens. The worst
# |fused - dense| / max|dense| of the vocabulary-parallel tests, measured on an AMD EPYC (AVX2):
# 6.8e-7, and 5.1e-7 with XLA_FLAGS=--xla_cpu_max_isa=AVX (kernels for another CPU); atol allows
# about 6 times that, scaled by each array's largest entry (gradients reach 40 here).
SHARDED_ATOL = 4e-6


def make_inputs(batch=(6,), dim=5, vocab=37, dtype=jnp.float32, scale=2.0, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  h = jax.random.normal(keys[0], (*batch, dim), dtype)
  w = (scale * jax.random.normal(keys[1], (dim, vocab))).astype(dtype)
  b = jax.random.normal(keys[2], (vocab,), dtype)
  labels = jax.random.randint(keys[3], batch, 0, vocab)
  return h, w, b, labels


def dense_on_projection(h, w, labels, xi, *, bias=None, **kw):
  logits = jnp.dot(h, w, preferred_element_type=jnp.float32)
  return dense(logits if bias is None else logits + bias, labels, xi, **kw)


def assert_matches_dense(form, chunk_size, class_weights=None):
  """Per-example losses and gradients w.r.t. embeddings, kernel, bias and (when given) class
  weights equal the dense ones (the dense oracle compiled once per form, for every chunk size)."""
  h, w, b, labels = make_inputs()
  xi = jnp.linspace(0.0, 1.0, 6)  # per-example xi, 0 and 1 included
  params, rest = (h, w, b, class_weights), (labels, xi, None)
  got = losses_and_all_grads(functools.partial(fused, chunk_size=chunk_size), form, params, rest)
  expected = losses_and_all_grads(dense_on_projection, form, params, rest)
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, **TOL), got, expected)


@pytest.mark.parametrize("form", FORMS)
def test_value_and_gradients_match_dense(form):
  """37 classes in chunks of 8: the last chunk overlaps the one before it."""
  assert_matches_dense(form, chunk_size=8)


@pytest.mark.parametrize("form", ["paper", "paper_smoothed", "reference", "reference_gneg_1.5"])
def test_class_weights_match_dense(form):
  """Per-class weights on the target term and on every smoothed non-target term; their own
  gradient too."""
  class_weights = jax.random.uniform(jax.random.key(7), (37,), minval=0.2, maxval=2.0)
  assert_matches_dense(form, chunk_size=8, class_weights=class_weights)


@pytest.mark.parametrize("chunk_size", [1, 36, 37, 64, None])
def test_any_chunk_size_gives_the_same_loss(chunk_size):
  assert_matches_dense("reference", chunk_size)


@pytest.mark.parametrize(
    "form", ["paper", "paper_smoothed", "reference", "reference_gneg_1.5"])
def test_gradients_match_finite_differences_in_float64(form):
  """Embeddings, kernel, bias and class weights."""
  with jax.enable_x64(True):
    h, w, b, labels = make_inputs(batch=(3,), dim=4, vocab=11, dtype=jnp.float64)
    c = jax.random.uniform(jax.random.key(7), (11,), jnp.float64, minval=0.2, maxval=2.0)
    fn = lambda h, w, b, c: fused(h, w, labels, 0.4, bias=b, class_weights=c, chunk_size=4,
                                  **FORMS[form])
    assert fn(h, w, b, c).dtype == jnp.float64
    check_grads(fn, (h, w, b, c), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_gamma_zero_is_cross_entropy():
  h, w, b, labels = make_inputs()
  got = fused(h, w, labels, 0.3, bias=b, gamma_hc=0.0, gamma_lc=0.0, chunk_size=8)
  np.testing.assert_allclose(
      got, optax.softmax_cross_entropy_with_integer_labels(h @ w + b, labels), **TOL)


def test_token_batch_with_padding_mask():
  """[B, T, D] tokens: a padded token has loss 0 and gradient 0, even with garbage inputs."""
  h, w, _, labels = make_inputs(batch=(2, 5))
  mask = jnp.array([[True] * 5, [True, True, True, False, False]])
  h = h.at[1, 3].set(jnp.nan).at[1, 4].set(jnp.inf)
  labels = labels.at[1, 4].set(-100)  # an "ignore index" under the mask
  xi = jnp.float32(0.7)

  loss = jax.jit(fused, static_argnames=("chunk_size", *FORMS["reference"]))(
      h, w, labels, xi, where=mask, chunk_size=8, **FORMS["reference"])
  assert loss.shape == (2, 5)
  np.testing.assert_array_equal(loss[1, 3:], 0.0)
  np.testing.assert_allclose(loss[mask], dense_on_projection(
      h[mask], w, labels[mask], xi, **FORMS["reference"]), **TOL)

  grad_h, grad_w = jax.jit(jax.grad(
      lambda h, w: fused(h, w, labels, xi, where=mask, chunk_size=8,
                         **FORMS["reference"]).sum(), argnums=(0, 1)))(h, w)
  np.testing.assert_array_equal(grad_h[1, 3:], 0.0)
  assert np.isfinite(grad_w).all()
  expected_w = jax.jit(jax.grad(lambda w: dense_on_projection(
      h[mask], w, labels[mask], xi, **FORMS["reference"]).sum()))(w)
  np.testing.assert_allclose(grad_w, expected_w, **TOL)


def test_labels_outside_the_vocabulary_give_nan():
  h, w, _, labels = make_inputs()
  labels = labels.at[1].set(-1).at[4].set(37)
  loss = fused(h, w, labels, 0.5, chunk_size=8)
  assert np.isnan(loss[np.array([1, 4])]).all()
  keep = np.array([0, 2, 3, 5])
  np.testing.assert_allclose(loss[keep], dense_on_projection(h[keep], w, labels[keep], 0.5), **TOL)


def test_bfloat16_inputs_accumulate_in_float32():
  """bf16 embeddings and kernel: float32 loss equal to the dense loss on the float32 product."""
  h, w, b, labels = make_inputs(dtype=jnp.bfloat16)
  loss = fused(h, w, labels, 0.3, bias=b, chunk_size=8, **FORMS["reference"])
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, dense_on_projection(
      h.astype(jnp.float32), w.astype(jnp.float32), labels, 0.3, bias=b.astype(jnp.float32),
      **FORMS["reference"]), **TOL)
  grad_h, grad_w = jax.jit(jax.grad(
      lambda h, w: fused(h, w, labels, 0.3, chunk_size=8).sum(), argnums=(0, 1)))(h, w)
  assert grad_h.dtype == grad_w.dtype == jnp.bfloat16
  expected_h, expected_w = jax.jit(jax.grad(
      lambda h, w: dense_on_projection(h, w, labels, 0.3).sum(),
      argnums=(0, 1)))(h.astype(jnp.float32), w.astype(jnp.float32))
  # bf16 rounding of the logit gradient and of the result: about 3 significant digits.
  np.testing.assert_allclose(grad_h.astype(jnp.float32), expected_h, rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(grad_w.astype(jnp.float32), expected_w, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 1.0, 2.0])
def test_finite_at_extreme_logits(gamma):
  """Logits up to +-1e4 (p_t and the top non-target p_j round to 1 or 0): finite value and
  gradient in every form, equal to the dense loss's (relative 1e-4: float32 sums of terms
  of size 1e4 in another order)."""
  h, w, b, labels = make_inputs(scale=1e4)
  for form in (dict(), dict(label_smoothing=0.1), dict(gamma_neg=gamma, label_smoothing=0.1)):
    def value_and_grads(loss, form=form, **kw):
      fn = lambda h, w, b: loss(h, w, labels, 0.5, bias=b, gamma_hc=gamma, gamma_lc=gamma,
                                **form, **kw).sum()
      return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(h, w, b)

    got = value_and_grads(fused, chunk_size=8)
    for array in jax.tree.leaves(got):
      assert np.isfinite(array).all()
    jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-2),
                 got, value_and_grads(dense_on_projection))


@pytest.mark.parametrize("xi", [0, 1])
@pytest.mark.parametrize("form", ["paper_smoothed", "reference"])
def test_static_xi_at_the_ends_skips_a_term_and_still_matches_dense(form, xi):
  h, w, b, labels = make_inputs()
  fn = lambda loss: jax.value_and_grad(
      lambda h: loss(h, w, labels, xi, bias=b, **FORMS[form]).sum())(h)
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, **TOL),
               fn(functools.partial(fused, chunk_size=8)), fn(dense_on_projection))


def test_traced_xi_and_its_gradient_under_jit():
  h, w, b, labels = make_inputs()
  fn = jax.jit(lambda xi: fused(h, w, labels, xi, bias=b, chunk_size=8,
                                **FORMS["reference"]).sum())
  expected = lambda xi: dense_on_projection(h, w, labels, xi, bias=b, **FORMS["reference"]).sum()
  np.testing.assert_allclose(fn(0.25), expected(0.25), **TOL)
  np.testing.assert_allclose(jax.grad(fn)(0.25), jax.jit(jax.grad(expected))(0.25), **TOL)


@pytest.mark.parametrize("form", ["reference", "paper_smoothed"])
@pytest.mark.parametrize("axis_type", [jax.sharding.AxisType.Auto, jax.sharding.AxisType.Explicit])
def test_sharded_batch_matches_unsharded(axis_type, form):
  """Batch over an 8-device ('data',) mesh, kernel replicated: same value and gradients."""
  h, w, b, labels = make_inputs(batch=(16,), dim=8, vocab=50)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
  step = jax.jit(jax.value_and_grad(
      lambda h, w, b, t: fused(h, w, t, 0.3, bias=b, chunk_size=16,
                               **FORMS[form]).mean(), argnums=(0, 1, 2)))
  rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  sharded = step(jax.device_put(h, rows), jax.device_put(w, replicated),
                 jax.device_put(b, replicated), jax.device_put(labels, rows))
  assert sharded[1][0].sharding.is_equivalent_to(rows, 2)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6),
               sharded, step(h, w, b, labels))


AUTO, EXPLICIT = jax.sharding.AxisType.Auto, jax.sharding.AxisType.Explicit


def token_batch(vocab, batch=(4, 4)):
  """``[B, T, 8]`` embeddings and their inputs; the last token of odd rows is padding, its
  label an ignore index."""
  h, w, b, labels = make_inputs(batch=batch, dim=8, vocab=vocab)
  class_weights = jax.random.uniform(jax.random.key(7), (vocab,), minval=0.2, maxval=2.0)
  xi = jnp.linspace(0.0, 1.0, labels.size).reshape(batch)
  where = (jnp.arange(batch[1]) < batch[1] - 1) | (jnp.arange(batch[0])[:, None] % 2 == 0)
  return (h, w, b, class_weights), (jnp.where(where, labels, -100), xi, where)


@functools.partial(jax.jit, static_argnums=(0, 1))
def losses_and_all_grads(loss_fn, form, params, rest):
  """Per-example losses and the gradients of their weighted sum (distinct cotangents per
  example) w.r.t. ``params``."""
  labels, xi, where = rest
  per_example = lambda h, w, b, c: loss_fn(h, w, labels, xi, bias=b, class_weights=c,
                                           where=where, **FORMS[form])
  weights = jnp.arange(1.0, 1.0 + labels.size).reshape(labels.shape)
  return per_example(*params), jax.grad(lambda a: (weights * per_example(*a)).sum())(params)


@functools.cache
def dense_losses_and_grads(form, vocab):
  """The oracle, on one device."""
  return losses_and_all_grads(dense_on_projection, form, *token_batch(vocab))


def assert_vocab_parallel_matches_dense(form, mesh, vocab, kernel_spec, vocab_axis="model"):
  """Fused on ``mesh`` (vocabulary over 'model', tokens over 'data' when the mesh has it) equals
  the dense loss on one device; the gradients keep their inputs' shardings."""
  params, rest = token_batch(vocab)
  rows = P("data") if "data" in mesh.axis_names else P()
  with jax.set_mesh(mesh):
    params = jax.device_put(params, (P(*rows, None, None), kernel_spec, P(*kernel_spec[1:]),
                                     P(*kernel_spec[1:])))
    rest = jax.device_put(rest, (rows, rows, rows))
    got = losses_and_all_grads(
        functools.partial(fused, chunk_size=3, vocab_axis=vocab_axis), form, params, rest)
  for grad, param in zip(got[1], params):
    assert grad.sharding.is_equivalent_to(param.sharding, param.ndim), (grad.sharding, param)
  jax.tree.map(lambda g, e: np.testing.assert_allclose(
      g, e, rtol=TOL["rtol"], atol=SHARDED_ATOL * np.max(np.abs(e))), got,
      dense_losses_and_grads(form, vocab))


# Every form under Auto axes; under Explicit axes one form: the axis type changes only how the
# vocabulary and batch axes are found and resharded before the shard_map (linear.py's
# _vocab_sharding, _batch_spec, _vocab_parallel), never the form's per-shard code.
@pytest.mark.parametrize("axis_type, form", [(AUTO, "paper"), (AUTO, "paper_smoothed"),
                                             (AUTO, "reference"), (EXPLICIT, "paper_smoothed")])
def test_vocab_parallel_matches_dense_on_one_device(axis_type, form):
  """(data 2, model 4) mesh: 40 classes, 10 per device in chunks of 3 (the last overlaps);
  class weights, bias, per-token xi, a padding mask; kernel gradient on P(None, 'model').
  Explicit axes name the vocabulary axis in the kernel's sharding: no argument needed."""
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
  assert_vocab_parallel_matches_dense(form, mesh, 40, P(None, "model"),
                                      vocab_axis="model" if axis_type == AUTO else None)


@pytest.mark.parametrize("axis_type, form", [(AUTO, "paper_smoothed"), (EXPLICIT, "reference")])
def test_vocab_parallel_pads_a_vocabulary_the_axis_does_not_divide(axis_type, form):
  """('model' 8) mesh, 33 classes: 5 per device, 3 on the seventh, none on the last (an array
  cannot be sharded unevenly, so the kernel comes in replicated)."""
  mesh = jax.make_mesh((8,), ("model",), axis_types=(axis_type,))
  assert_vocab_parallel_matches_dense(form, mesh, 33, P())


def test_vocab_parallel_labels_outside_the_vocabulary_give_nan():
  h, w, _, labels = make_inputs(batch=(8,), dim=8, vocab=40)
  labels = labels.at[1].set(-1).at[4].set(40)
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AUTO, AUTO))
  with jax.set_mesh(mesh):
    loss = jax.jit(functools.partial(fused, xi=0.5, chunk_size=4, vocab_axis="model"))(
        jax.device_put(h, P("data")), jax.device_put(w, P(None, "model")), labels)
  assert np.isnan(loss[np.array([1, 4])]).all()
  keep = np.array([0, 2, 3, 5, 6, 7])
  np.testing.assert_allclose(loss[keep], dense_on_projection(h[keep], w, labels[keep], 0.5), **TOL)


@pytest.mark.parametrize("axis_type", [AUTO, EXPLICIT])
def test_vocab_parallel_never_gathers_the_kernel(axis_type):
  """N 256, D 64, V 32,768 on (data 2, model 4), compiled: no all-gather with V columns, the
  kernel's gradient on P(None, 'model'), per-device temporaries at most 1/8 of the dense
  loss's on one device."""
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
  vocab = 32768
  step = lambda loss: jax.jit(jax.value_and_grad(
      lambda h, w, t: loss(h, w, t, 0.3, **FORMS["paper"]).mean(), argnums=(0, 1)))
  specs = (P("data", None), P(None, "model"), P("data"))
  shapes = [jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))
            for shape, dtype, spec in zip([(256, 64), (64, vocab), (256,)],
                                          [jnp.float32, jnp.float32, jnp.int32], specs)]
  with jax.set_mesh(mesh):
    compiled = step(functools.partial(fused, vocab_axis="model")).lower(*shapes).compile()
  gathered = re.findall(r"= \w+\[([\d,]*)\][^\n]* all-gather(?:-start)?\(", compiled.as_text())
  assert not [shape for shape in gathered if str(vocab) in shape.split(",")], gathered
  kernel_grad = compiled.output_shardings[1][1]
  assert kernel_grad.is_equivalent_to(NamedSharding(mesh, P(None, "model")), 2), kernel_grad
  dense_temp = step(dense_on_projection).lower(*[
      jax.ShapeDtypeStruct(s.shape, s.dtype) for s in shapes]).compile().memory_analysis()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp <= dense_temp.temp_size_in_bytes / 8, (temp, dense_temp.temp_size_in_bytes)


def compiled_temporaries(vocab, **kw):
  """Temp bytes of value + grad (h, w) of the mean loss at N=256, D=64, chunks of 256."""
  fn = jax.jit(jax.value_and_grad(
      lambda h, w, t: fused(h, w, t, 0.3, chunk_size=256, **kw).mean(), argnums=(0, 1)))
  shapes = (jax.ShapeDtypeStruct((256, 64), jnp.float32),
            jax.ShapeDtypeStruct((64, vocab), jnp.float32),
            jax.ShapeDtypeStruct((256,), jnp.int32))
  return fn.lower(*shapes).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("form", ["paper", "paper_smoothed", "reference"])
def test_compiled_temporaries_do_not_grow_with_the_vocabulary(form):
  small, large = compiled_temporaries(2048, **FORMS[form]), compiled_temporaries(
      16384, **FORMS[form])
  logits_bytes = 256 * 16384 * 4  # one [N, V] float32 array at the larger vocabulary
  # The paper form with smoothing streams twice; the two passes' transposed scans each sum a
  # kernel gradient, so one [D, V] buffer (the kernel's size, not the logits') is added.
  kernel_bytes = lambda vocab: 64 * vocab * 4 if form == "paper_smoothed" else 0
  small, large = small - kernel_bytes(2048), large - kernel_bytes(16384)
  assert abs(large - small) < 16 * 1024, (small, large)
  assert large < logits_bytes / 4, (large, logits_bytes)


@pytest.mark.parametrize("kwargs, message", [
    (dict(chunk_size=0), "chunk_size"),
    (dict(chunk_size=2.5), "chunk_size"),
    (dict(chunk_size=True), "chunk_size"),
    (dict(bias=jnp.zeros(36)), "bias"),
    (dict(class_weights=jnp.ones((37, 1))), "class_weights"),
    (dict(where=jnp.ones(5, bool)), "where"),
    (dict(gamma_lc=-1.0), "gamma_lc"),
    (dict(gamma_neg=2.0, label_smoothing=1.0), "label_smoothing"),
    (dict(vocab_axis="model"), "vocab_axis"),
])
def test_bad_arguments_name_the_problem(kwargs, message):
  h, w, _, labels = make_inputs()
  with pytest.raises(ValueError, match=message):
    fused(h, w, labels, 0.5, **kwargs)


@pytest.mark.parametrize("args, message", [
    ((jnp.ones((6, 4)), jnp.ones((5, 37)), jnp.zeros(6, int)), "kernel must have shape"),
    ((jnp.ones((6, 5)), jnp.ones((5, 37, 1)), jnp.zeros(6, int)), "kernel must have shape"),
    ((jnp.ones((6, 5)), jnp.ones((5, 1)), jnp.zeros(6, int)), "at least 2 classes"),
    ((jnp.ones((6, 5)), jnp.ones((5, 37)), jnp.zeros(6)), "integer"),
    ((jnp.ones((6, 5)), jnp.ones((5, 37)), jnp.zeros(5, int)), "labels shape"),
    ((jnp.ones((6, 5), int), jnp.ones((5, 37)), jnp.zeros(6, int)), "embeddings must be floating"),
    ((jnp.ones((6, 5)), jnp.ones((5, 37), int), jnp.zeros(6, int)), "kernel must be floating"),
])
def test_bad_shapes_and_dtypes_name_the_problem(args, message):
  with pytest.raises(ValueError, match=message):
    fused(*args, 0.5)
