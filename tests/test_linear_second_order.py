"""The fused loss under every transformation: second order, forward mode, shard_map, z-loss.

Oracles: the dense loss on ``h @ w + b`` (float64), finite differences (``check_grads``) and,
for z-loss and soft-capping, plain ``jnp`` formulas written here. Tolerance 1e-6 (float64), far
above the measured spread: over the five forms below the fused Hessians (forward-over-reverse and
reverse-over-reverse) differ from the dense ones by at most 1.4e-14 (max |H| 2.1 to 5.0), and the
Hessian-vector products from central differences (step 1e-5) by at most 1.1e-9; ``check_grads``
compares float64 finite differences at its default tolerances.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import cfl_jax

fused = cfl_jax.linear_cyclical_focal_loss_with_integer_labels
dense = cfl_jax.cyclical_focal_loss_with_integer_labels
TOL = dict(rtol=0, atol=1e-6)

FORMS = {
    "cross_entropy": dict(gamma_hc=0.0, gamma_lc=0.0),
    "paper": dict(gamma_hc=3.0, gamma_lc=2.0),
    "paper_smoothed_weighted": dict(gamma_hc=2.0, gamma_lc=0.5, label_smoothing=0.2,
                                    class_weights=True),
    "reference_weighted": dict(gamma_hc=3.0, gamma_lc=2.0, gamma_neg=2.0, label_smoothing=0.1,
                               class_weights=True),
    "z_loss_soft_cap": dict(gamma_hc=3.0, gamma_lc=2.0, label_smoothing=0.1, z_loss=0.05,
                            logit_soft_cap=4.0),
}


def inputs64(batch=3, dim=4, vocab=7, dtype=jnp.float64):
  keys = jax.random.split(jax.random.key(3), 5)
  h = jax.random.normal(keys[0], (batch, dim), dtype)
  w = 2 * jax.random.normal(keys[1], (dim, vocab), dtype)
  b = jax.random.normal(keys[2], (vocab,), dtype)
  labels = jax.random.randint(keys[3], (batch,), 0, vocab)
  c = jax.random.uniform(keys[4], (vocab,), dtype, minval=0.5, maxval=2.0)
  return h, w, b, labels, c


def total(loss_fn, form, labels, c):
  kw = dict(FORMS[form])
  kw["class_weights"] = c if kw.pop("class_weights", False) else None
  xi = jnp.linspace(0.2, 0.9, labels.shape[0])
  return lambda h, w, b: loss_fn(h, w, labels, xi, bias=b, **kw).sum()


def dense_on_projection(h, w, labels, xi, *, bias, **kw):
  return dense(h @ w + bias, labels, xi, **kw)


def max_error(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                            jax.tree.leaves(b)))


@pytest.mark.parametrize("form", list(FORMS))
def test_hessians_equal_the_dense_form(form):
  """Forward-over-reverse (``jax.hessian``) and reverse-over-reverse Hessians w.r.t. the
  embeddings, kernel and bias equal the dense loss's (measured: at most 6e-15)."""
  with jax.enable_x64(True):
    h, w, b, labels, c = inputs64()
    f = total(functools.partial(fused, chunk_size=3), form, labels, c)
    d = total(dense_on_projection, form, labels, c)
    args = (0, 1, 2)
    expected = jax.jit(jax.hessian(d, argnums=args))(h, w, b)
    assert max_error(jax.jit(jax.hessian(f, argnums=args))(h, w, b), expected) < 1e-6
    assert max_error(jax.jit(jax.jacrev(jax.grad(f, argnums=args), argnums=args))(h, w, b),
                     expected) < 1e-6


@pytest.mark.parametrize("form", ["paper", "paper_smoothed_weighted", "reference_weighted"])
def test_second_order_matches_finite_differences(form):
  """``check_grads(order=2)`` in reverse mode, and a Hessian-vector product (jvp of grad)
  against a central difference of the gradient."""
  with jax.enable_x64(True):
    h, w, b, labels, c = inputs64()
    f = jax.jit(total(functools.partial(fused, chunk_size=3), form, labels, c))
    check_grads(f, (h, w, b), order=2, modes=("rev",))
    grad = jax.jit(jax.grad(f, argnums=(0, 1, 2)))
    v = jax.tree.map(lambda x: jax.random.normal(jax.random.key(9), x.shape, x.dtype), (h, w, b))
    hvp = jax.jvp(lambda *a: grad(*a), (h, w, b), v)[1]
    eps = 1e-5
    plus = grad(*jax.tree.map(lambda x, t: x + eps * t, (h, w, b), v))
    minus = grad(*jax.tree.map(lambda x, t: x - eps * t, (h, w, b), v))
    finite = jax.tree.map(lambda p, m: (p - m) / (2 * eps), plus, minus)
    assert max_error(hvp, finite) < 1e-6


def test_forward_mode_jacobian_equals_reverse_mode():
  with jax.enable_x64(True):
    h, w, b, labels, c = inputs64()
    fn = lambda w: fused(h, w, labels, 0.4, bias=b, chunk_size=3, label_smoothing=0.1)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(fn))(w), jax.jit(jax.jacrev(fn))(w), **TOL)


def test_vocab_parallel_hessian_vector_product_equals_the_dense_form():
  """('model' 4) mesh, 12 classes: a Hessian-vector product (jvp of grad) w.r.t. the
  embeddings and the kernel, through the vocabulary-parallel shard_map."""
  mesh = jax.make_mesh((4,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
  with jax.enable_x64(True), jax.set_mesh(mesh):
    h, w, b, labels, c = inputs64(vocab=12)
    kw = dict(gamma_hc=3.0, gamma_lc=2.0, label_smoothing=0.1, z_loss=0.01)
    f = lambda h, w: fused(h, w, labels, 0.3, chunk_size=2, vocab_axis="model", **kw).sum()
    d = lambda h, w: dense(h @ w, labels, 0.3, **kw).sum()
    v = (jnp.ones_like(h), jnp.ones_like(w))
    hvp = lambda g: jax.jit(lambda h, w: jax.jvp(jax.grad(g, argnums=(0, 1)), (h, w), v)[1])(h, w)
    assert max_error(hvp(f), hvp(d)) < 1e-6


def user_shard_map(loss, mesh, specs):
  """The caller's data-parallel step: per-shard losses and gradients inside ``jax.shard_map``
  (default ``check_vma``); the kernel's gradient summed over 'data'."""
  def local(h, w, t):
    grads = jax.grad(lambda h, w: loss(h, w, t).sum(), argnums=(0, 1))(h, w)
    return loss(h, w, t), grads[0], jax.lax.psum(grads[1], "data")
  h_spec, w_spec, t_spec = specs
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=specs,
                               out_specs=(t_spec, h_spec, w_spec)))


@pytest.mark.parametrize("form", ["paper", "paper_smoothed_weighted", "reference_weighted"])
def test_gradient_inside_a_data_parallel_shard_map(form):
  """Batch over 8 devices, kernel replicated: the caller's shard_map gives the dense values
  and gradients (float32 sums in another order: 1e-5)."""
  h, w, b, labels, c = inputs64(batch=16, dim=8, vocab=10, dtype=jnp.float32)
  kw = dict(FORMS[form])
  kw["class_weights"] = c if kw.pop("class_weights", False) else None
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  specs = (P("data"), P(), P("data"))
  got = user_shard_map(lambda h, w, t: fused(h, w, t, 0.3, chunk_size=4, **kw), mesh,
                       specs)(h, w, labels)
  expected = user_shard_map(lambda h, w, t: dense(h @ w, t, 0.3, **kw), mesh,
                            specs)(h, w, labels)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5),
               got, expected)


def test_vocab_axis_inside_the_callers_shard_map():
  """(data 2, model 4): the caller's shard_map hands each device 10 of the 40 columns; with
  ``vocab_axis='model'`` the loss combines the shards and the gradients equal the dense ones."""
  h, w, b, labels, c = inputs64(batch=8, dim=8, vocab=40, dtype=jnp.float32)
  kw = dict(gamma_hc=3.0, gamma_lc=2.0, label_smoothing=0.1, logit_soft_cap=5.0)
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  got = user_shard_map(
      lambda h, w, t: fused(h, w, t, 0.3, chunk_size=3, vocab_axis="model", **kw), mesh,
      (P("data"), P(None, "model"), P("data")))(h, w, labels)
  expected = user_shard_map(lambda h, w, t: dense(h @ w, t, 0.3, **kw), mesh,
                            (P("data"), P(), P("data")))(h, w, labels)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5),
               got, expected)


def oracle(logits, labels, xi, *, gamma_hc, gamma_lc, z_loss, cap):
  """The paper form, z-loss and soft-cap in plain jnp (float64)."""
  z = cap * jnp.tanh(logits / cap)
  lse = jax.scipy.special.logsumexp(z, axis=-1)
  p = jnp.exp(z - lse[:, None])
  log_p = z - lse[:, None]
  weight = xi * (1 + p)**gamma_hc + (1 - xi) * (1 - p)**gamma_lc
  per_class = -weight * log_p
  return per_class[jnp.arange(len(labels)), labels] + z_loss * lse**2


@pytest.mark.parametrize("integer_labels", [True, False])
def test_z_loss_and_soft_cap_match_the_oracle(integer_labels):
  """Dense (integer and one-hot labels) and fused: values and gradients w.r.t. the logits /
  the kernel equal the oracle's in float64."""
  with jax.enable_x64(True):
    h, w, b, labels, c = inputs64(batch=5, vocab=9)
    kw = dict(gamma_hc=3.0, gamma_lc=2.0)
    options = dict(z_loss=0.1, logit_soft_cap=3.0)

    def expected(w):
      return oracle(h @ w, labels, 0.3, **kw, z_loss=0.1, cap=3.0)
    if integer_labels:
      got = lambda w: dense(h @ w, labels, 0.3, **kw, **options)
    else:
      one_hot = jax.nn.one_hot(labels, 9, dtype=jnp.float64)
      got = lambda w: cfl_jax.cyclical_focal_loss(h @ w, one_hot, 0.3, **kw, **options)
    fused_loss = lambda w: fused(h, w, labels, 0.3, chunk_size=4, **kw, **options)
    value_and_jacobian = lambda fn: jax.jit(lambda w: (fn(w), jax.jacrev(fn)(w)))(w)
    want = value_and_jacobian(expected)
    for fn in (got, fused_loss):
      jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **TOL),
                   value_and_jacobian(fn), want)


def test_per_example_weights_give_the_weighted_gradient():
  """Weights multiplying the returned losses weight each example's gradient: the gradient of
  the weighted sum equals the weighted sum of per-example gradients."""
  with jax.enable_x64(True):
    h, w, b, labels, c = inputs64(batch=4)
    weights = jnp.array([0.0, 0.5, 1.0, 2.0])
    loss = lambda w: fused(h, w, labels, 0.3, chunk_size=3, z_loss=0.01)
    weighted = jax.jit(jax.grad(lambda w: (weights * loss(w)).sum()))(w)
    per_example = jax.jit(jax.jacrev(loss))(w)
    np.testing.assert_allclose(weighted, jnp.einsum("b,bij->ij", weights, per_example), **TOL)


@pytest.mark.parametrize("kwargs, message", [
    (dict(z_loss=-1e-4), "z_loss must be >= 0"),
    (dict(z_loss=float("inf")), "z_loss must be finite"),
    (dict(logit_soft_cap=0.0), "logit_soft_cap must be > 0"),
    (dict(logit_soft_cap=-30.0), "logit_soft_cap must be > 0"),
])
@pytest.mark.parametrize("loss", ["dense", "fused"])
def test_bad_z_loss_and_soft_cap_name_the_argument(loss, kwargs, message):
  h, w, b, labels, c = inputs64(dtype=jnp.float32)
  with pytest.raises(ValueError, match=message):
    if loss == "dense":
      dense(h @ w, labels, 0.3, **kwargs)
    else:
      fused(h, w, labels, 0.3, **kwargs)


@pytest.mark.parametrize("form", ["paper", "reference_weighted", "z_loss_soft_cap"])
def test_export_with_symbolic_batch_and_classes(form):
  """The dense form's gradient exports with symbolic batch and class dimensions; the fused
  form's with a symbolic batch, and a symbolic vocabulary is refused by name."""
  b, c = jax.export.symbolic_shape("b, c")
  kw = {k: v for k, v in FORMS[form].items() if k != "class_weights"}
  grad = lambda loss: jax.jit(jax.grad(lambda *a: loss(*a).sum()))
  labels = jax.ShapeDtypeStruct((b,), jnp.int32)
  exported = jax.export.export(grad(lambda z, t: dense(z, t, 0.3, **kw)))(
      jax.ShapeDtypeStruct((b, c), jnp.float32), labels)
  z = jax.random.normal(jax.random.key(0), (3, 5))
  t = jnp.array([0, 4, 2])
  np.testing.assert_allclose(exported.call(z, t), grad(lambda z, t: dense(z, t, 0.3, **kw))(z, t),
                             rtol=1e-6, atol=1e-6)
  fused_grad = grad(lambda h, w, t: fused(h, w, t, 0.3, chunk_size=4, **kw))
  jax.export.export(fused_grad)(jax.ShapeDtypeStruct((b, 4), jnp.float32),
                                jax.ShapeDtypeStruct((4, 9), jnp.float32), labels)
  with pytest.raises(ValueError, match="V must be concrete"):
    jax.export.export(fused_grad)(jax.ShapeDtypeStruct((b, 4), jnp.float32),
                                  jax.ShapeDtypeStruct((4, c), jnp.float32), labels)
