"""Tests for cfl_jax.losses.sigmoid, the multi-label (sigmoid) cyclical focal loss.

Expected values come from float64 numpy written here from the formulas: the
loss's own definition and a transcription of the asymmetric loss's (ASL)
reference code; the paper-form limits are checked against optax itself.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import cfl_jax
from cfl_jax.losses import sigmoid

GAMMAS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0)


# --------------------------------------------------------------------------
# Independent float64 references
# --------------------------------------------------------------------------


def np_log_sigmoid(z):
  return -np.logaddexp(0.0, -np.asarray(z, np.float64))


def np_sigmoid_cfl(z, y, xi, gamma_hc, gamma_lc, gamma_neg=None, clip=0.0):
  """[xi (1 + p_t)^ghc + (1 - xi)(1 - p_t)^g_t] * BCE, negatives shifted by the margin."""
  y = np.asarray(y, np.float64)
  p, q = np.exp(np_log_sigmoid(z)), np.exp(np_log_sigmoid(-np.asarray(z)))
  p_m = np.maximum(p - clip, 0.0)
  p_t = y * p + (1 - y) * (1 - p_m)
  bce = -y * np_log_sigmoid(z) - (1 - y) * np.log1p(-p_m)
  gamma_t = y * gamma_lc + (1 - y) * (gamma_lc if gamma_neg is None else gamma_neg)
  xi = np.asarray(xi, np.float64)[..., None] if np.ndim(xi) else xi
  return (xi * (1 + p_t) ** gamma_hc + (1 - xi) * (y * q + (1 - y) * p_m) ** gamma_t) * bce


def np_asymmetric_loss(z, y, gamma_pos, gamma_neg, clip):
  """ASL's reference forward pass (Ben-Baruch et al. 2020), per element, unsummed."""
  y = np.asarray(y, np.float64)
  xs_pos = 1 / (1 + np.exp(-np.asarray(z, np.float64)))
  xs_neg = 1 - xs_pos
  if clip > 0:
    xs_neg = np.minimum(xs_neg + clip, 1.0)
  loss = y * np.log(xs_pos) + (1 - y) * np.log(xs_neg)
  pt = xs_pos * y + xs_neg * (1 - y)
  one_sided_gamma = gamma_pos * y + gamma_neg * (1 - y)
  return -loss * (1 - pt) ** one_sided_gamma


@pytest.fixture
def data():
  """Logits [6, 5], hard multi-hot labels and soft labels (with some exact 0s and 1s)."""
  rng = np.random.default_rng(0)
  logits = (3 * rng.normal(size=(6, 5))).astype(np.float32)
  hard = (rng.uniform(size=(6, 5)) < 0.4).astype(np.float32)
  soft = rng.uniform(size=(6, 5)).astype(np.float32)
  soft[0, :2] = [0.0, 1.0]
  return logits, hard, soft


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------


def test_hand_computed_value():
  # z = 2, y = 1: p_t = sigmoid(2), -log p_t = log(1 + e^-2). z = 2, y = 0: p_t = sigmoid(-2).
  bce_pos, bce_neg = np.log1p(np.exp(-2.0)), np.log1p(np.exp(2.0))
  p_pos, p_neg = np.exp(-bce_pos), np.exp(-bce_neg)
  expected = [(0.3 * (1 + p) ** 3 + 0.7 * (1 - p) ** 2) * bce
              for p, bce in [(p_pos, bce_pos), (p_neg, bce_neg)]]
  got = cfl_jax.sigmoid_cyclical_focal_loss(
      jnp.array([2.0, 2.0]), jnp.array([1.0, 0.0]), 0.3, gamma_hc=3.0, gamma_lc=2.0)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert got.shape == (2,) and got.dtype == jnp.float32


@pytest.mark.parametrize("soft_labels", [False, True])
@pytest.mark.parametrize("xi", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("form", [
    dict(gamma_hc=2.0, gamma_lc=2.0),
    dict(gamma_hc=3.0, gamma_lc=0.5),
    dict(gamma_hc=0.25, gamma_lc=1.0, gamma_neg=4.0),
    dict(gamma_hc=2.0, gamma_lc=0.0, gamma_neg=4.0, clip=0.05),
    dict(gamma_hc=3.0, gamma_lc=2.0, clip=0.2),
])
def test_matches_numpy(data, soft_labels, xi, form):
  logits, hard, soft = data
  labels = soft if soft_labels else hard
  got = cfl_jax.sigmoid_cyclical_focal_loss(logits, labels, xi, **form)
  expected = np_sigmoid_cfl(logits, labels, xi, **form)
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


def test_per_example_xi_is_shared_by_the_example_labels(data):
  logits, hard, _ = data
  xi = np.linspace(0, 1, 6)
  got = cfl_jax.sigmoid_cyclical_focal_loss(logits, hard, xi, gamma_hc=3.0, gamma_lc=0.5)
  np.testing.assert_allclose(got, np_sigmoid_cfl(logits, hard, xi, 3.0, 0.5),
                             rtol=2e-5, atol=1e-6)
  # Broadcastable batch shapes work too: [1] broadcasts to the batch [6].
  chex.assert_trees_all_close(
      cfl_jax.sigmoid_cyclical_focal_loss(logits, hard, np.array([0.3])),
      cfl_jax.sigmoid_cyclical_focal_loss(logits, hard, 0.3))


def test_labels_broadcast_to_logits(data):
  logits, _, _ = data
  row = np.array([1.0, 0.0, 1.0, 0.0, 0.5], np.float32)
  got = cfl_jax.sigmoid_cyclical_focal_loss(logits, row, 0.4)
  expected = cfl_jax.sigmoid_cyclical_focal_loss(logits, np.tile(row, (6, 1)), 0.4)
  chex.assert_trees_all_close(got, expected)
  chex.assert_shape(got, logits.shape)


def test_integer_and_boolean_labels_equal_float_labels(data):
  logits, hard, _ = data
  expected = cfl_jax.sigmoid_cyclical_focal_loss(logits, hard, 0.4)
  for labels in (hard.astype(np.int32), hard.astype(bool)):
    chex.assert_trees_all_close(
        cfl_jax.sigmoid_cyclical_focal_loss(logits, labels, 0.4), expected)


# --------------------------------------------------------------------------
# Limits and equivalences
# --------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("soft_labels", [False, True])
def test_xi_zero_is_optax_sigmoid_focal_loss(data, gamma, soft_labels):
  logits, hard, soft = data
  labels = soft if soft_labels else hard
  expected = optax.sigmoid_focal_loss(logits, labels, alpha=None, gamma=gamma)
  for xi in (0.0, jnp.float32(0.0)):  # static and traced-style xi
    got = cfl_jax.sigmoid_cyclical_focal_loss(logits, labels, xi, gamma_hc=3.0, gamma_lc=gamma)
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("soft_labels", [False, True])
def test_zero_exponents_give_binary_cross_entropy(data, soft_labels):
  logits, hard, soft = data
  labels = soft if soft_labels else hard
  bce = optax.sigmoid_binary_cross_entropy(logits, labels)
  cfl = functools.partial(cfl_jax.sigmoid_cyclical_focal_loss, logits, labels)
  chex.assert_trees_all_close(cfl(0.0, gamma_hc=3.0, gamma_lc=0.0), bce, rtol=1e-6)
  chex.assert_trees_all_close(cfl(1.0, gamma_hc=0.0, gamma_lc=2.0), bce, rtol=1e-6)
  chex.assert_trees_all_close(cfl(0.6, gamma_hc=0.0, gamma_lc=0.0), bce, rtol=1e-6)
  chex.assert_trees_all_close(
      cfl_jax.sigmoid_high_confidence_loss(logits, labels, gamma=0.0), bce, rtol=1e-6)


def test_limits(data):
  logits, _, soft = data
  cfl = functools.partial(cfl_jax.sigmoid_cyclical_focal_loss, logits, soft,
                          gamma_hc=3.0, gamma_lc=1.5)
  hc = cfl_jax.sigmoid_high_confidence_loss(logits, soft, gamma=3.0)
  fl = optax.sigmoid_focal_loss(logits, soft, gamma=1.5)
  chex.assert_trees_all_close(cfl(1.0), hc, rtol=1e-6)
  chex.assert_trees_all_close(cfl(0.0), fl, rtol=1e-5)
  # A traced xi (as from a schedule inside jit) reaches the same limits.
  jitted = jax.jit(cfl)
  chex.assert_trees_all_close(jitted(1.0), hc, rtol=1e-6)
  chex.assert_trees_all_close(jitted(0.0), fl, rtol=1e-5)
  # The components differ from the binary cross-entropy (the checks above can fail).
  bce = np.asarray(optax.sigmoid_binary_cross_entropy(logits, soft))
  assert np.all(np.asarray(hc) > bce) and np.all(np.asarray(fl) < bce)


@pytest.mark.parametrize("soft_labels", [False, True])
@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [
    (0.0, 4.0, 0.05), (1.0, 4.0, 0.0), (0.0, 2.0, 0.2), (2.0, 0.5, 0.1), (1.0, 0.0, 0.3)])
def test_xi_zero_is_the_asymmetric_loss(data, soft_labels, gamma_pos, gamma_neg, clip):
  logits, hard, soft = data
  labels = soft if soft_labels else hard
  got = cfl_jax.sigmoid_cyclical_focal_loss(
      logits, labels, 0.0, gamma_lc=gamma_pos, gamma_neg=gamma_neg, clip=clip)
  expected = np_asymmetric_loss(logits, labels, gamma_pos, gamma_neg, clip)
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_gamma_neg_equal_to_gamma_lc_is_the_symmetric_form(data, gamma):
  logits, _, soft = data
  for clip in (0.0, 0.1):
    kwargs = dict(gamma_hc=3.0, gamma_lc=gamma, clip=clip)
    chex.assert_trees_all_close(
        cfl_jax.sigmoid_cyclical_focal_loss(logits, soft, 0.3, gamma_neg=gamma, **kwargs),
        cfl_jax.sigmoid_cyclical_focal_loss(logits, soft, 0.3, **kwargs), rtol=1e-5)


def test_integer_exponents_agree_with_the_log_space_path(data):
  """gamma 2 (products) and gamma 2 + 1e-6 (exp-log) give the same loss."""
  logits, _, soft = data
  products = cfl_jax.sigmoid_cyclical_focal_loss(logits, soft, 0.3, gamma_hc=2.0, gamma_lc=2.0)
  log_space = cfl_jax.sigmoid_cyclical_focal_loss(
      logits, soft, 0.3, gamma_hc=2.0 + 1e-6, gamma_lc=2.0 + 1e-6)
  chex.assert_trees_all_close(products, log_space, rtol=2e-5)


def test_margin_only_changes_negatives(data):
  logits, hard, _ = data
  plain = np.asarray(cfl_jax.sigmoid_cyclical_focal_loss(logits, hard, 0.3))
  shifted = np.asarray(cfl_jax.sigmoid_cyclical_focal_loss(logits, hard, 0.3, clip=0.1))
  positives = hard == 1
  np.testing.assert_array_equal(shifted[positives], plain[positives])
  assert np.all(shifted[~positives] < plain[~positives])


# --------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------


@pytest.mark.parametrize("form", [dict(), dict(gamma_lc=0.5), dict(gamma_neg=4.0, clip=0.05)])
def test_masked_entries_have_zero_loss_and_gradient_even_with_garbage(data, form):
  logits, _, soft = data
  logits, labels = logits.copy(), soft.copy()
  where = np.ones((6, 5), bool)
  where[1, 2] = where[4, 0] = where[5, :] = False
  logits[1, 2], logits[4, 0], logits[5, 3] = np.nan, np.inf, -np.inf
  labels[1, 2], labels[5, 1] = np.nan, -1.0  # padding labels are not range-checked

  def total(z):
    return cfl_jax.sigmoid_cyclical_focal_loss(z, labels, 0.4, where=where, **form).sum()

  value, grad = jax.value_and_grad(total)(jnp.asarray(logits))
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[~where], 0.0)
  loss = cfl_jax.sigmoid_cyclical_focal_loss(logits, labels, 0.4, where=where, **form)
  np.testing.assert_array_equal(loss[~where], 0.0)
  clean = cfl_jax.sigmoid_cyclical_focal_loss(
      np.where(where, logits, 0.0), np.where(where, labels, 0.0), 0.4, **form)
  np.testing.assert_allclose(loss[where], clean[where], rtol=1e-6)


def test_example_mask_broadcasts_over_labels(data):
  logits, hard, _ = data
  keep = np.array([True, False, True, True, False, True])
  loss = cfl_jax.sigmoid_high_confidence_loss(logits, hard, where=keep[:, None])
  np.testing.assert_array_equal(loss[~keep], 0.0)
  chex.assert_trees_all_close(
      loss[keep], cfl_jax.sigmoid_high_confidence_loss(logits[keep], hard[keep]))


# --------------------------------------------------------------------------
# Gradients and numerics
# --------------------------------------------------------------------------

FORMS = {
    "paper": dict(gamma_hc=3.0, gamma_lc=2.0),
    "paper_fractional": dict(gamma_hc=2.5, gamma_lc=0.5),
    "asymmetric": dict(gamma_hc=3.0, gamma_lc=0.5, gamma_neg=4.0),
    "asymmetric_clip": dict(gamma_hc=2.0, gamma_lc=1.0, gamma_neg=0.5, clip=0.05),
}


@pytest.mark.parametrize("form", FORMS)
def test_check_grads_order_2_float64(data, form):
  logits, hard, soft = data
  with jax.enable_x64(True):
    z = jnp.asarray(logits, jnp.float64)
    xi = jnp.linspace(0.0, 1.0, 6)
    for labels in (hard, soft):
      check_grads(
          lambda z, labels=labels: cfl_jax.sigmoid_cyclical_focal_loss(
              z, labels, xi, **FORMS[form]),
          (z,), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_gradient_matches_numpy_finite_differences(data):
  logits, _, soft = data
  form = FORMS["asymmetric_clip"]
  grad = jax.grad(lambda z: cfl_jax.sigmoid_cyclical_focal_loss(z, soft, 0.3, **form).sum())(
      jnp.asarray(logits))
  z, h = logits.astype(np.float64), 1e-6
  numeric = (np_sigmoid_cfl(z + h, soft, 0.3, **form)
             - np_sigmoid_cfl(z - h, soft, 0.3, **form)) / (2 * h)  # elementwise loss
  np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-5)


def test_log_term_derivatives_are_exact_at_zero_logits():
  """BCE' = p - y and BCE'' = p (1 - p) for every label, z = 0 included (|z| has a kink there)."""
  z = jnp.array([0.0, 0.0, 3.0, -3.0])
  labels = jnp.array([1.0, 0.3, 0.0, 1.0])
  bce = lambda z, y: cfl_jax.sigmoid_high_confidence_loss(z, y, gamma=0.0)  # noqa: E731
  slope = jax.vmap(jax.grad(bce))(z, labels)
  curvature = jax.vmap(jax.grad(jax.grad(bce)))(z, labels)
  p = 1 / (1 + np.exp(-np.asarray(z, np.float64)))
  np.testing.assert_allclose(slope, p - np.asarray(labels), rtol=1e-6)
  np.testing.assert_allclose(curvature, p * (1 - p), rtol=1e-6)


EXTREME_LOGITS = np.array([1e4, -1e4, 1e4, -1e4, 30.0, -30.0, 100.0, 0.0], np.float32)
EXTREME_LABELS = {
    "hard": np.array([1, 1, 0, 0, 1, 0, 1, 1], np.float32),
    "soft": np.array([0.3, 1e-30, 1e-45, 1 - 6e-8, 0.5, 1e-10, 0.9, 0.5], np.float32),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("labels", EXTREME_LABELS)
@pytest.mark.parametrize("form", FORMS)
def test_finite_value_gradient_and_hessian_at_extreme_logits(dtype, labels, form):
  labels = EXTREME_LABELS[labels]
  xi = jnp.array([0.0, 0.5, 1.0, 0.25])
  for gamma in GAMMAS:
    kwargs = dict(FORMS[form], gamma_hc=gamma, gamma_lc=gamma)
    if "gamma_neg" in kwargs:
      kwargs["gamma_neg"] = gamma + 0.5

    def total(z, kwargs=kwargs):
      return cfl_jax.sigmoid_cyclical_focal_loss(z.reshape(4, 2), labels.reshape(4, 2), xi,
                                                 **kwargs).sum()

    z = jnp.asarray(EXTREME_LOGITS, dtype)
    assert np.isfinite(total(z)), (gamma, kwargs)
    assert np.all(np.isfinite(np.asarray(jax.grad(total)(z), np.float32))), (gamma, kwargs)
    hessian = jax.hessian(total)(z.astype(jnp.float32))
    assert np.all(np.isfinite(hessian)), (gamma, kwargs)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_saturated_focal_term_is_zero_with_zero_gradient(gamma):
  """Perfectly classified labels: (1 - p_t)^g log p_t is 0 and so is its gradient."""
  z = jnp.array([1e4, -1e4, 200.0])
  labels = jnp.array([1.0, 0.0, 1.0])
  loss, grad = jax.value_and_grad(lambda z: cfl_jax.sigmoid_cyclical_focal_loss(
      z, labels, 0.0, gamma_lc=gamma, gamma_neg=gamma + 1.0).sum())(z)
  assert loss == 0.0
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_large_margin_value_is_accurate(gamma):
  """At z = 40, 1 - p = e^-40 / (1 + e^-40), far below float32's 1 - p resolution."""
  q = np.exp(-40.0) / (1 + np.exp(-40.0))
  expected = q ** gamma * np.log1p(np.exp(-40.0))
  got = cfl_jax.sigmoid_cyclical_focal_loss(jnp.array([40.0]), jnp.array([1.0]), 0.0,
                                            gamma_lc=gamma)
  np.testing.assert_allclose(got, [expected], rtol=1e-5)


# --------------------------------------------------------------------------
# Precision and transformations
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("form", FORMS)
def test_half_precision_logits_are_computed_in_float32(data, dtype, form):
  logits, _, soft = data
  low = jnp.asarray(logits, dtype)
  got = cfl_jax.sigmoid_cyclical_focal_loss(low, soft, 0.4, **FORMS[form])
  expected = cfl_jax.sigmoid_cyclical_focal_loss(low.astype(jnp.float32), soft, 0.4,
                                                 **FORMS[form])
  assert got.dtype == jnp.float32
  chex.assert_trees_all_close(got, expected, rtol=1e-6)
  grad = jax.grad(lambda z: cfl_jax.sigmoid_cyclical_focal_loss(
      z, soft, 0.4, **FORMS[form]).sum())(low)
  assert grad.dtype == dtype and np.all(np.isfinite(np.asarray(grad, np.float32)))


class TestTransformations(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_eager_numpy(self):
    rng = np.random.default_rng(5)
    logits = (3 * rng.normal(size=(4, 3))).astype(np.float32)
    labels = rng.uniform(size=(4, 3)).astype(np.float32)
    xi = np.array([0.0, 0.3, 0.7, 1.0], np.float32)
    fn = self.variant(functools.partial(cfl_jax.sigmoid_cyclical_focal_loss,
                                        gamma_lc=0.5, gamma_neg=4.0, clip=0.05))
    chex.assert_trees_all_close(
        fn(logits, labels, xi),
        np_sigmoid_cfl(logits, labels, xi, 2.0, 0.5, gamma_neg=4.0, clip=0.05),
        rtol=2e-5, atol=1e-6)

  def test_vmap_over_examples_equals_batch(self):
    rng = np.random.default_rng(6)
    logits = (3 * rng.normal(size=(4, 3))).astype(np.float32)
    labels = (rng.uniform(size=(4, 3)) < 0.5).astype(np.float32)
    xi = jnp.array([0.0, 0.3, 0.7, 1.0])
    per_row = jax.vmap(cfl_jax.sigmoid_cyclical_focal_loss)(logits, labels, xi)
    chex.assert_trees_all_close(
        per_row, cfl_jax.sigmoid_cyclical_focal_loss(logits, labels, xi), rtol=1e-6)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(gamma_hc=-1.0), "gamma_hc must be >= 0"),
    (dict(gamma_lc=-0.5), "gamma_lc must be >= 0"),
    (dict(gamma_neg=-2.0), "gamma_neg must be >= 0"),
    (dict(gamma_lc=float("inf")), "gamma_lc must be finite"),
    (dict(clip=1.0), r"clip must be in \[0, 1\)"),
    (dict(clip=-0.05), r"clip must be in \[0, 1\)"),
    (dict(where=np.ones(4, bool)), "where shape"),
])
def test_bad_arguments(data, kwargs, match):
  logits, hard, _ = data
  with pytest.raises(ValueError, match=match):
    cfl_jax.sigmoid_cyclical_focal_loss(logits, hard, 0.5, **kwargs)


def test_bad_inputs(data):
  logits, hard, _ = data
  fn = cfl_jax.sigmoid_cyclical_focal_loss
  with pytest.raises(ValueError, match="labels shape"):
    fn(logits, hard[:, :4], 0.5)
  with pytest.raises(ValueError, match="labels shape"):
    fn(logits[0], hard, 0.5)  # labels would enlarge the result
  with pytest.raises(ValueError, match="logits must be floating point"):
    fn(logits.astype(np.int32), hard, 0.5)
  with pytest.raises(ValueError, match="xi must be a scalar or have the batch shape"):
    fn(logits, hard, np.ones(5))
  with pytest.raises(ValueError, match=r"^gamma must be >= 0"):
    cfl_jax.sigmoid_high_confidence_loss(logits, hard, gamma=-1.0)


def test_traced_hyper_parameter_is_rejected_with_a_clear_message(data):
  logits, hard, _ = data
  with pytest.raises(TypeError, match="clip must be a static Python number"):
    jax.jit(lambda m: cfl_jax.sigmoid_cyclical_focal_loss(logits, hard, 0.5, clip=m))(0.1)


def test_public_api_is_reexported():
  for name in sigmoid.__all__:
    assert getattr(cfl_jax, name) is getattr(sigmoid, name)
    assert name in cfl_jax.__all__
