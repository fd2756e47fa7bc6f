"""Tests for cfl_jax.losses.softmax, in the manner of optax's _classification_test.py.

The expected values come from an independent float64 numpy implementation of
both forms (docs/method.md §1, §3), written here from the formulas.
"""

import functools
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import cfl_jax
from cfl_jax import losses
from cfl_jax.losses import _core, softmax

GAMMAS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0)


# --------------------------------------------------------------------------
# Independent float64 references
# --------------------------------------------------------------------------


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  shifted = z - z.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def np_paper_form(z, q, xi, gamma_hc, gamma_lc, class_weights=None):
  """-sum_j q_j [xi (1 + p_j)^ghc + (1 - xi)(1 - p_j)^glc] log p_j."""
  log_p = np_log_softmax(z)
  p = np.exp(log_p)
  xi = np.asarray(xi, np.float64)[..., None] if np.ndim(xi) else xi
  weight = xi * (1 + p) ** gamma_hc + (1 - xi) * (1 - p) ** gamma_lc
  cw = 1.0 if class_weights is None else np.asarray(class_weights)
  return -(np.asarray(q) * cw * weight * log_p).sum(-1)


def np_reference_form(z, t, xi, gamma_hc, gamma_pos, gamma_neg, eps,
                      class_weights=None):
  """The authors' code: asymmetric weights, smoothing inside the sum."""
  log_p = np_log_softmax(z)
  p = np.exp(log_p)
  num_classes = z.shape[-1]
  onehot = np.eye(num_classes)[t]
  q = (1 - eps) * onehot + eps / num_classes
  xi = np.asarray(xi, np.float64)[..., None] if np.ndim(xi) else xi
  w_target = (1 - xi) * (1 - p) ** gamma_pos + xi * (1 + p) ** gamma_hc
  w_other = (1 - xi) * p ** gamma_neg + xi
  weight = np.where(onehot == 1, w_target, w_other)
  cw = 1.0 if class_weights is None else np.asarray(class_weights)
  return -(q * cw * weight * log_p).sum(-1)


def np_one_hot(t, num_classes):
  return np.eye(num_classes)[t]


def _data():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, size=6)
  return logits, labels


@pytest.fixture
def data():
  return _data()


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------


def test_hand_computed_value():
  # p_t = softmax([2, 0])_0 = e^2 / (e^2 + 1); CE = log(1 + e^-2) = 0.126928.
  ce = np.log1p(np.exp(-2.0))
  p_t = np.exp(-ce)
  expected = 0.3 * (1 + p_t) ** 3 * ce + 0.7 * (1 - p_t) ** 2 * ce
  got = cfl_jax.cyclical_focal_loss_with_integer_labels(
      jnp.array([[2.0, 0.0]]), jnp.array([0]), 0.3, gamma_hc=3.0, gamma_lc=2.0)
  np.testing.assert_allclose(got, [expected], rtol=1e-6)
  assert got.shape == (1,) and got.dtype == jnp.float32


@pytest.mark.parametrize("xi", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("gamma_hc,gamma_lc", [(2.0, 2.0), (3.0, 0.5), (0.0, 1.0)])
def test_paper_form_matches_numpy(data, xi, gamma_hc, gamma_lc):
  logits, labels = data
  got = cfl_jax.cyclical_focal_loss_with_integer_labels(
      logits, labels, xi, gamma_hc=gamma_hc, gamma_lc=gamma_lc)
  expected = np_paper_form(logits, np_one_hot(labels, 5), xi, gamma_hc, gamma_lc)
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


def test_per_example_xi(data):
  logits, labels = data
  xi = np.linspace(0, 1, 6)
  got = cfl_jax.cyclical_focal_loss_with_integer_labels(logits, labels, xi)
  expected = np_paper_form(logits, np_one_hot(labels, 5), xi, 2.0, 2.0)
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("xi", [0.0, 0.37, 1.0])
@pytest.mark.parametrize("gamma_neg", [0.0, 1.5, 2.0, 4.0])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_reference_form_matches_numpy(data, xi, gamma_neg, eps):
  logits, labels = data
  got = cfl_jax.cyclical_focal_loss_with_integer_labels(
      logits, labels, xi, gamma_hc=3.0, gamma_lc=2.0, gamma_neg=gamma_neg,
      label_smoothing=eps)
  expected = np_reference_form(logits, labels, xi, 3.0, 2.0, gamma_neg, eps)
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


def test_reference_form_with_class_weights_and_per_example_xi(data):
  logits, labels = data
  weights = np.array([1.0, 2.0, 0.5, 3.0, 1.5])
  xi = np.linspace(0, 1, 6)
  got = cfl_jax.cyclical_focal_loss_with_integer_labels(
      logits, labels, xi, gamma_hc=2.0, gamma_lc=0.0, gamma_neg=4.0,
      label_smoothing=0.1, class_weights=weights)
  expected = np_reference_form(logits, labels, xi, 2.0, 0.0, 4.0, 0.1, weights)
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


def test_reference_equals_paper_form_without_smoothing(data):
  logits, labels = data
  reference = cfl_jax.cyclical_focal_loss_with_integer_labels(
      logits, labels, 0.4, gamma_hc=3.0, gamma_lc=2.0, gamma_neg=2.0)
  paper = cfl_jax.cyclical_focal_loss_with_integer_labels(
      logits, labels, 0.4, gamma_hc=3.0, gamma_lc=2.0)
  np.testing.assert_allclose(reference, paper, rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_soft_labels_match_numpy(data, eps):
  logits, _ = data
  rng = np.random.default_rng(1)
  mix = rng.dirichlet(np.ones(5), size=6)
  weights = np.array([1.0, 2.0, 0.5, 3.0, 1.5])
  got = cfl_jax.cyclical_focal_loss(
      logits, mix, 0.6, gamma_hc=3.0, gamma_lc=0.5, label_smoothing=eps,
      class_weights=weights)
  q = mix * (1 - eps) + eps / 5
  expected = np_paper_form(logits, q, 0.6, 3.0, 0.5, weights)
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


def test_integer_labels_with_smoothing_use_paper_form_over_all_classes(data):
  logits, labels = data
  got = cfl_jax.cyclical_focal_loss_with_integer_labels(
      logits, labels, 0.2, gamma_hc=2.0, gamma_lc=2.0, label_smoothing=0.1)
  q = np_one_hot(labels, 5) * 0.9 + 0.1 / 5
  np.testing.assert_allclose(got, np_paper_form(logits, q, 0.2, 2.0, 2.0),
                             rtol=2e-5, atol=1e-6)


def test_reference_form_collapses_soft_labels_to_argmax(data):
  logits, _ = data
  mix = np.random.default_rng(2).dirichlet(np.ones(5), size=6).astype(np.float32)
  kwargs = dict(gamma_hc=3.0, gamma_lc=2.0, gamma_neg=2.0, label_smoothing=0.1)
  soft = cfl_jax.cyclical_focal_loss(logits, mix, 0.5, **kwargs)
  hard = cfl_jax.cyclical_focal_loss_with_integer_labels(
      logits, mix.argmax(-1), 0.5, **kwargs)
  np.testing.assert_allclose(soft, hard, rtol=1e-6)


# --------------------------------------------------------------------------
# Limits and equivalences (docs/method.md §1)
# --------------------------------------------------------------------------


class LimitsTest(chex.TestCase):
  """docs/method.md §1's limits, eagerly and under jit, with xi as a (traced) argument."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_limits(self):
    logits, labels = _data()
    cfl = self.variant(functools.partial(cfl_jax.cyclical_focal_loss_with_integer_labels,
                                         logits, labels), static_argnames=("gamma_hc", "gamma_lc"))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    hc = cfl_jax.high_confidence_loss_with_integer_labels(logits, labels, gamma=3.0)
    fl = cfl_jax.focal_loss_with_integer_labels(logits, labels, gamma=1.5)
    chex.assert_trees_all_close(cfl(1.0, gamma_hc=3.0, gamma_lc=1.5), hc, rtol=1e-6)
    chex.assert_trees_all_close(cfl(0.0, gamma_hc=3.0, gamma_lc=1.5), fl, rtol=1e-6)
    chex.assert_trees_all_close(cfl(0.0, gamma_hc=3.0, gamma_lc=0.0), ce, rtol=1e-6)
    chex.assert_trees_all_close(cfl(1.0, gamma_hc=0.0, gamma_lc=2.0), ce, rtol=1e-6)


def test_limits_are_not_cross_entropy(data):
  logits, labels = data
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  hc = cfl_jax.high_confidence_loss_with_integer_labels(logits, labels, gamma=3.0)
  fl = cfl_jax.focal_loss_with_integer_labels(logits, labels, gamma=1.5)
  # The components differ from CE for gamma > 0 (so the limit checks above can fail).
  assert np.all(np.asarray(hc) > np.asarray(ce))
  assert np.all(np.asarray(fl) < np.asarray(ce))


@pytest.mark.parametrize("gamma_neg", [None, 2.0])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_one_hot_labels_equal_integer_labels(data, gamma_neg, eps):
  logits, labels = data
  kwargs = dict(gamma_hc=3.0, gamma_lc=2.0, gamma_neg=gamma_neg,
                label_smoothing=eps, class_weights=np.arange(1.0, 6.0))
  soft = cfl_jax.cyclical_focal_loss(
      logits, np_one_hot(labels, 5).astype(np.float32), 0.3, **kwargs)
  hard = cfl_jax.cyclical_focal_loss_with_integer_labels(logits, labels, 0.3, **kwargs)
  np.testing.assert_allclose(soft, hard, rtol=1e-5, atol=1e-7)


def test_component_soft_variants_match_integer_variants(data):
  logits, labels = data
  onehot = np_one_hot(labels, 5).astype(np.float32)
  np.testing.assert_allclose(
      cfl_jax.focal_loss(logits, onehot, gamma=0.5),
      cfl_jax.focal_loss_with_integer_labels(logits, labels, gamma=0.5), rtol=1e-5)
  np.testing.assert_allclose(
      cfl_jax.high_confidence_loss(logits, onehot, gamma=3.0),
      cfl_jax.high_confidence_loss_with_integer_labels(logits, labels, gamma=3.0),
      rtol=1e-5)


# --------------------------------------------------------------------------
# Masks and axes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("gamma_neg,eps", [(None, 0.0), (None, 0.1), (2.0, 0.1)])
def test_example_mask_equals_slicing(data, gamma_neg, eps):
  logits, labels = data
  mask = np.array([True, False, True, True, False, True])
  kwargs = dict(gamma_neg=gamma_neg, label_smoothing=eps)
  masked = cfl_jax.cyclical_focal_loss_with_integer_labels(
      logits, labels, 0.5, where=mask, **kwargs)
  sliced = cfl_jax.cyclical_focal_loss_with_integer_labels(
      logits[mask], labels[mask], 0.5, **kwargs)
  np.testing.assert_allclose(masked[mask], sliced, rtol=1e-6)
  np.testing.assert_array_equal(masked[~mask], 0.0)


@pytest.mark.parametrize("integer_labels", [True, False])
def test_masked_rows_have_zero_loss_and_gradient_even_with_garbage(data, integer_labels):
  logits, labels = data
  logits = logits.copy()
  logits[1] = np.nan
  logits[4] = np.inf
  mask = np.ones(6, bool)
  mask[[1, 4]] = False
  targets = labels if integer_labels else np_one_hot(labels, 5).astype(np.float32)
  fn = (cfl_jax.cyclical_focal_loss_with_integer_labels if integer_labels
        else cfl_jax.cyclical_focal_loss)

  def total(z):
    return fn(z, targets, 0.5, gamma_neg=2.0, label_smoothing=0.1, where=mask).sum()

  value, grad = jax.value_and_grad(total)(jnp.asarray(logits))
  assert np.isfinite(value)
  np.testing.assert_array_equal(grad[~mask], 0.0)
  assert np.all(np.isfinite(grad))


def test_entry_mask_excludes_classes_like_optax(data):
  logits, labels = data
  where = np.ones((6, 5), bool)
  where[:, 3] = False
  labels = np.where(labels == 3, 0, labels)
  # gamma 0, xi 0: cross-entropy over the kept classes.
  got = cfl_jax.cyclical_focal_loss_with_integer_labels(
      logits, labels, 0.0, gamma_lc=0.0, where=where)
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels, where=where)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # Paper form over kept classes equals the loss on the logits with the class removed.
  keep = [0, 1, 2, 4]
  remap = np.array([0, 1, 2, -1, 3])
  got = cfl_jax.cyclical_focal_loss_with_integer_labels(
      logits, labels, 0.3, gamma_neg=2.0, label_smoothing=0.1, where=where)
  expected = cfl_jax.cyclical_focal_loss_with_integer_labels(
      logits[:, keep], remap[labels], 0.3, gamma_neg=2.0, label_smoothing=0.1)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  soft = cfl_jax.cyclical_focal_loss(
      logits, np_one_hot(labels, 5).astype(np.float32), 0.3, label_smoothing=0.1,
      where=where)
  soft_expected = cfl_jax.cyclical_focal_loss(
      logits[:, keep], np_one_hot(remap[labels], 4).astype(np.float32), 0.3,
      label_smoothing=0.1)
  np.testing.assert_allclose(soft, soft_expected, rtol=1e-5)


@pytest.mark.parametrize("gamma_neg", [None, 2.0])
def test_axis_equals_moveaxis(gamma_neg):
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(3, 7, 4)).astype(np.float32)
  labels = rng.integers(0, 7, size=(3, 4))
  xi = rng.uniform(size=(3, 4))
  kwargs = dict(gamma_neg=gamma_neg, label_smoothing=0.1)
  along_1 = cfl_jax.cyclical_focal_loss_with_integer_labels(
      logits, labels, xi, axis=1, **kwargs)
  last = cfl_jax.cyclical_focal_loss_with_integer_labels(
      np.moveaxis(logits, 1, -1), labels, xi, **kwargs)
  np.testing.assert_allclose(along_1, last, rtol=1e-6)
  onehot = np.moveaxis(np_one_hot(labels, 7), -1, 1).astype(np.float32)
  soft = cfl_jax.cyclical_focal_loss(logits, onehot, xi, axis=1, **kwargs)
  np.testing.assert_allclose(soft, last, rtol=1e-5)


# --------------------------------------------------------------------------
# Gradients and numerics (docs/method.md §6)
# --------------------------------------------------------------------------

FORMS = {
    "paper": dict(),
    "paper_smoothed": dict(label_smoothing=0.1),
    "reference": dict(gamma_neg=2.0, label_smoothing=0.1),
}


@pytest.mark.parametrize("form", FORMS)
def test_check_grads_float64(data, form):
  logits, labels = data
  with jax.enable_x64(True):
    z = jnp.asarray(logits, jnp.float64)
    xi = jnp.linspace(0.0, 1.0, 6)

    def fn(z):
      return cfl_jax.cyclical_focal_loss_with_integer_labels(
          z, labels, xi, gamma_hc=3.0, gamma_lc=0.5, **FORMS[form])

    check_grads(fn, (z,), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)
    soft = np.random.default_rng(4).dirichlet(np.ones(5), size=6)
    check_grads(lambda z: cfl_jax.cyclical_focal_loss(z, soft, xi, gamma_lc=0.5),
                (z,), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_gradient_matches_numpy_finite_differences(data):
  """Gradient of the reference form against central differences of the numpy form."""
  logits, labels = data
  args = (labels, 0.3, 3.0, 2.0, 2.0, 0.1)
  grad = jax.grad(lambda z: cfl_jax.cyclical_focal_loss_with_integer_labels(
      z, labels, 0.3, gamma_hc=3.0, gamma_lc=2.0, gamma_neg=2.0,
      label_smoothing=0.1).sum())(jnp.asarray(logits))
  z = logits.astype(np.float64)
  numeric = np.zeros_like(z)
  h = 1e-6
  for index in np.ndindex(z.shape):
    up, down = z.copy(), z.copy()
    up[index] += h
    down[index] -= h
    numeric[index] = (np_reference_form(up, *args).sum()
                      - np_reference_form(down, *args).sum()) / (2 * h)
  np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.0])
def test_integer_focal_sum_jvp_matches_autodiff_and_finite_differences(gamma):
  """The custom JVP of the reference form's sum_N c_j p_j^g log p_j (small integer g).

  Against autodiff of the plain formula (both modes) and central differences
  (to second order), in float64, with an entry mask, class weights and a row
  whose logits are 1e4 apart.
  """
  rng = np.random.default_rng(6)
  logits = 3 * rng.normal(size=(4, 6))
  logits[0] = [1e4, -1e4, 0.0, 5.0, 2.0, -3.0]
  target = np.array([0, 2, 5, 1])
  where = np.ones((4, 6), bool)
  where[1, 3] = where[2, 0] = where[2, 4] = False
  non_target = where & (np.arange(6) != target[:, None])

  with jax.enable_x64(True):
    z = jnp.asarray(logits)
    weights = jnp.asarray(rng.uniform(0.5, 1.5, size=6))

    @jax.jit
    def custom(z, weights):
      stats = softmax._row_stats(z, jnp.asarray(target), jnp.asarray(where))
      return softmax._integer_focal_log_p_sum(
          gamma, z, _core.log_probs(stats).lse, stats.shift, jnp.asarray(target),
          jnp.asarray(where), weights)

    @jax.jit
    def plain(z, weights):
      log_p = jax.nn.log_softmax(jnp.where(where, z, 0.0), where=where)
      log_p = jnp.where(non_target, log_p, 0.0)  # -inf at masked entries: NaN gradients
      return jnp.sum(jnp.where(non_target, weights * jnp.exp(gamma * log_p) * log_p, 0.0),
                     axis=-1)

    np.testing.assert_allclose(custom(z, weights), plain(z, weights), rtol=1e-12)
    tangents = (jnp.asarray(rng.normal(size=z.shape)), jnp.asarray(rng.normal(size=6)))
    np.testing.assert_allclose(jax.jvp(custom, (z, weights), tangents)[1],
                               jax.jvp(plain, (z, weights), tangents)[1], rtol=1e-10)
    cotangent = jnp.asarray(rng.normal(size=4))
    got = jax.vjp(custom, z, weights)[1](cotangent)
    expected = jax.vjp(plain, z, weights)[1](cotangent)
    for g, e in zip(got, expected):
      np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)
    check_grads(custom, (z, weights), order=2, modes=["rev"], atol=1e-6, rtol=1e-6)


EXTREME_LOGITS = np.array([
    [1e4, -1e4, 0.0, 5.0],      # target dominates: p_t == 1 in float32
    [-1e4, 1e4, 1e4, 0.0],      # target hopeless, a tie elsewhere
    [30.0, 0.0, 0.0, 0.0],      # margin 30 > 17: p_t rounds to 1
    [0.0, 0.0, 0.0, 0.0],
], np.float32)
EXTREME_LABELS = np.array([0, 0, 0, 2])


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("form", FORMS)
def test_finite_gradient_and_hessian_at_extreme_logits(gamma, form):
  kwargs = dict(gamma_hc=gamma, gamma_lc=gamma, **FORMS[form])
  if "gamma_neg" in kwargs:
    kwargs["gamma_neg"] = gamma
  xi = jnp.array([0.0, 0.5, 1.0, 0.25])

  def total(z):
    return cfl_jax.cyclical_focal_loss_with_integer_labels(
        z, EXTREME_LABELS, xi, **kwargs).sum()

  def total_soft(z):
    return cfl_jax.cyclical_focal_loss(
        z, np_one_hot(EXTREME_LABELS, 4).astype(np.float32), xi, **kwargs).sum()

  for fn in (total, total_soft):
    z = jnp.asarray(EXTREME_LOGITS)
    assert np.isfinite(fn(z))
    assert np.all(np.isfinite(jax.grad(fn)(z)))
    assert np.all(np.isfinite(jax.hessian(fn)(z)))


def test_saturated_focal_gradient_is_zero_not_nan():
  """A perfectly classified example has (1 - p_t)^g log p_t -> 0 and zero gradient."""
  z = jnp.array([[1e4, -1e4, -1e4]])
  for gamma in GAMMAS:
    grad = jax.grad(lambda z, gamma=gamma: cfl_jax.focal_loss_with_integer_labels(
        z, jnp.array([0]), gamma=gamma).sum())(z)
    np.testing.assert_array_equal(grad, 0.0)


def test_large_margin_values_are_accurate():
  """log(1 - p_t) stays exact where 1 - p_t underflows a naive float32 computation."""
  z = jnp.array([[40.0, 0.0, 0.0]])
  # 1 - p_t = 2 e^-40 / (1 + 2 e^-40); FL with gamma 1 = (1 - p_t) * -log p_t.
  one_minus_p = 2 * np.exp(-40.0)
  expected = one_minus_p * np.log1p(one_minus_p)
  got = cfl_jax.focal_loss_with_integer_labels(z, jnp.array([0]), gamma=1.0)
  np.testing.assert_allclose(got, [expected], rtol=1e-5)


# --------------------------------------------------------------------------
# Precision and transformations
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("form", FORMS)
def test_half_precision_logits_are_computed_in_float32(data, dtype, form):
  logits, labels = data
  low = jnp.asarray(logits, dtype)
  got = cfl_jax.cyclical_focal_loss_with_integer_labels(low, labels, 0.4, **FORMS[form])
  expected = cfl_jax.cyclical_focal_loss_with_integer_labels(
      low.astype(jnp.float32), labels, 0.4, **FORMS[form])
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  grad = jax.grad(lambda z: cfl_jax.cyclical_focal_loss_with_integer_labels(
      z, labels, 0.4, **FORMS[form]).sum())(low)
  assert grad.dtype == dtype and np.all(np.isfinite(np.asarray(grad, np.float32)))


@pytest.mark.parametrize("form", FORMS)
def test_jit_and_vmap(data, form):
  logits, labels = data
  fn = functools.partial(cfl_jax.cyclical_focal_loss_with_integer_labels, **FORMS[form])
  eager = fn(logits, labels, 0.7)
  np.testing.assert_allclose(jax.jit(fn)(logits, labels, 0.7), eager, rtol=1e-6)
  per_row = jax.vmap(lambda z, t, x: fn(z[None], t[None], x)[0])(
      jnp.asarray(logits), jnp.asarray(labels), jnp.full(6, 0.7))
  np.testing.assert_allclose(per_row, eager, rtol=1e-6)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(gamma_hc=-1.0), "gamma_hc must be >= 0"),
    (dict(gamma_lc=-0.5), "gamma_lc must be >= 0"),
    (dict(gamma_neg=-2.0), "gamma_neg must be >= 0"),
    (dict(gamma_hc=float("nan")), "gamma_hc must be finite"),
    (dict(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\)"),
    (dict(label_smoothing=-0.1), r"label_smoothing must be in \[0, 1\)"),
    (dict(class_weights=np.ones(3)), r"class_weights must have shape \(5,\)"),
    (dict(where=np.ones(4, bool)), "where must have shape"),
    (dict(axis=2), "axis must be an int"),
])
def test_bad_arguments(data, kwargs, match):
  logits, labels = data
  with pytest.raises(ValueError, match=match):
    cfl_jax.cyclical_focal_loss_with_integer_labels(logits, labels, 0.5, **kwargs)


def test_bad_inputs(data):
  logits, labels = data
  fn = cfl_jax.cyclical_focal_loss_with_integer_labels
  with pytest.raises(ValueError, match="labels shape"):
    fn(logits, labels[:4], 0.5)
  with pytest.raises(ValueError, match="labels must be integer class indices"):
    fn(logits, labels.astype(np.float32), 0.5)
  with pytest.raises(ValueError, match="look one-hot: pass class indices"):
    fn(logits, np_one_hot(labels, 5).astype(np.int32), 0.5)
  with pytest.raises(ValueError, match="look like class indices: use the `_with_integer_labels`"):
    cfl_jax.cyclical_focal_loss(logits, labels, 0.5)
  with pytest.raises(ValueError, match="labels must be class probabilities"):
    cfl_jax.cyclical_focal_loss(logits, np.zeros((6, 5), np.complex64), 0.5)
  with pytest.raises(ValueError, match="labels shape"):
    cfl_jax.cyclical_focal_loss(logits, np.zeros((6, 4), np.float32), 0.5)
  with pytest.raises(ValueError, match="logits must be floating point"):
    fn(logits.astype(np.int32), labels, 0.5)
  with pytest.raises(ValueError, match="xi must be a scalar or have the batch shape"):
    fn(logits, labels, np.ones(5))
  with pytest.raises(ValueError, match="at least 2 classes"):
    fn(logits[:, :1], np.zeros(6, np.int32), 0.5)
  for component in (cfl_jax.focal_loss_with_integer_labels,
                    cfl_jax.high_confidence_loss_with_integer_labels):
    with pytest.raises(ValueError, match=r"^gamma must be >= 0"):
      component(logits, labels, gamma=-1.0)


def test_traced_gamma_is_rejected_with_a_clear_message(data):
  logits, labels = data
  with pytest.raises(TypeError, match="gamma_hc must be a static Python number"):
    jax.jit(lambda g: cfl_jax.cyclical_focal_loss_with_integer_labels(
        logits, labels, 0.5, gamma_hc=g))(2.0)


def test_public_api_is_reexported():
  for name in losses.__all__:
    assert getattr(cfl_jax, name) is getattr(losses, name)


def test_importing_does_not_need_docstrings():
  """``python -OO`` strips docstrings: cfl_jax (training included) imports and computes."""
  code = ("import jax.numpy as jnp, cfl_jax, cfl_jax.training\n"
          "assert cfl_jax.cyclical_focal_loss.__doc__ is None  # really stripped\n"
          "print(float(cfl_jax.cyclical_focal_loss_with_integer_labels(\n"
          "    jnp.array([[2.0, 0.0]]), jnp.array([0]), 0.5)[0]))")
  result = subprocess.run([sys.executable, "-OO", "-c", code], capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  expected = np_paper_form([[2.0, 0.0]], [[1.0, 0.0]], 0.5, 2.0, 2.0)[0]
  assert float(result.stdout) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("fn", [
    functools.partial(cfl_jax.cyclical_focal_loss_with_integer_labels, xi=0.3),
    functools.partial(cfl_jax.cyclical_focal_loss_with_integer_labels, xi=0.3, gamma_neg=2.0,
                      label_smoothing=0.1),
    functools.partial(cfl_jax.cyclical_focal_loss_with_integer_labels, xi=0.3,
                      label_smoothing=0.1),
    cfl_jax.focal_loss_with_integer_labels,
    cfl_jax.high_confidence_loss_with_integer_labels,
], ids=["paper", "reference", "paper_smoothed", "focal", "high_confidence"])
def test_labels_outside_the_classes_give_nan_unless_masked(data, fn):
  logits, labels = data
  bad = labels.copy()
  bad[1], bad[4] = -1, logits.shape[-1]  # below and above [0, C)
  loss = np.asarray(jax.jit(lambda z, t: fn(z, t))(logits, bad))
  good = np.asarray(fn(logits, labels))
  assert np.isnan(loss[[1, 4]]).all()
  keep = np.ones(len(labels), bool)
  keep[[1, 4]] = False
  np.testing.assert_allclose(loss[keep], good[keep], rtol=1e-6)
  # Masked out with `where`, the bad rows are ordinary padding: 0 loss, 0 gradient.
  masked_grad = jax.grad(lambda z: fn(z, bad, where=jnp.asarray(keep)).sum())(logits)
  assert np.isfinite(np.asarray(masked_grad)).all()
  assert np.all(np.asarray(masked_grad)[~keep] == 0)
  assert np.all(np.asarray(fn(logits, bad, where=jnp.asarray(keep)))[~keep] == 0)
