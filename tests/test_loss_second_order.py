"""The dense losses are right to second order (issue 32): in float64, the gradient (reverse
mode), reverse over reverse and forward over reverse (a Hessian-vector product) agree with
central finite differences along random directions, the checks of
``jax.test_util.check_grads(..., order=2)`` with each derivative compiled once. For the softmax
losses with integer and probability labels and for the sigmoid losses, each test checks one
function that stacks several forms' per-example losses under a random cotangent (label
smoothing, class weights, the reference form with integer and fractional gamma_neg, gamma > 0,
a per-example xi in (0, 1)), so a wrong form shows in the one check. The fused loss is checked
beside its dense form elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfl_jax

B, C = 3, 4
EPS = 1e-4  # the finite-difference step of jax.test_util.check_grads
# Every check passes at atol = rtol = 1e-8 (measured on these inputs); 1e-6 is the bound.
TOL = 1e-6


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


@pytest.fixture
def data():
  rng = np.random.default_rng(32)
  logits = jnp.asarray(2 * rng.normal(size=(B, C)))
  labels = jnp.asarray([0, 2, 3])
  probabilities = jnp.asarray(rng.dirichlet(np.ones(C), size=B))
  class_weights = jnp.asarray(rng.uniform(0.5, 2.0, size=C))
  xi = jnp.asarray([0.3, 0.6, 0.8])  # per example, inside (0, 1): both terms and their mix
  return logits, labels, probabilities, class_weights, xi


def central_difference(fn, args, directions):
  """``(fn(args + EPS d) - fn(args - EPS d)) / (2 EPS)``."""
  step = lambda sign: fn(*(a + sign * EPS * d for a, d in zip(args, directions)))
  return jax.tree.map(lambda up, down: (up - down) / (2 * EPS), step(1), step(-1))


def check_second_order(fn, *args):
  """Reverse mode, reverse over reverse and forward over reverse, along random directions."""
  rng = np.random.default_rng(0)
  random_like = lambda tree: jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), tree)
  v, u = random_like(args), random_like(args)
  cotangent = random_like(jax.eval_shape(fn, *args))
  argnums = tuple(range(len(args)))
  value = lambda *a: jnp.vdot(cotangent, fn(*a))
  grad = jax.grad(value, argnums)
  along_v = lambda *a: sum(jnp.vdot(g, d) for g, d in zip(grad(*a), v))
  # Two compilations: the first-order quantities (differenced along v and u) and the second.
  first = jax.jit(lambda *a: (value(*a), grad(*a), along_v(*a)))
  second = jax.jit(lambda *a: (jax.grad(along_v, argnums)(*a), jax.jvp(grad, a, v)[1]))

  def close(got, expected, what):
    jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, atol=TOL, rtol=TOL, err_msg=what),
                 got, expected)

  _, _, along_v_at_args = first(*args)
  value_along_v, grad_along_v, _ = central_difference(first, args, v)
  _, _, along_v_along_u = central_difference(first, args, u)
  rev_over_rev, fwd_over_rev = second(*args)
  close(along_v_at_args, value_along_v, "gradient")
  close(sum(jnp.vdot(g, d) for g, d in zip(rev_over_rev, u)), along_v_along_u,
        "reverse over reverse")
  close(fwd_over_rev, grad_along_v, "forward over reverse")


def test_integer_labels(data):
  """Paper form (gamma 3 and 0.5; smoothed, weighted) and reference form (gamma_neg 2, whose
  custom JVP is differentiated again, and 2.5; also with a class mask and z-loss), in the
  logits and the class weights."""
  logits, labels, _, _, xi = data
  loss = cfl_jax.cyclical_focal_loss_with_integer_labels
  class_mask = jnp.arange(C)[None] != 1  # a non-target class left out of every row

  def stacked(z, weights):
    return jnp.stack([
        loss(z, labels, xi, gamma_hc=3.0, gamma_lc=0.5),
        loss(z, labels, xi, label_smoothing=0.1, class_weights=weights),
        loss(z, labels, xi, gamma_hc=3.0, gamma_neg=2.0, label_smoothing=0.1,
             class_weights=weights),
        loss(z, labels, xi, gamma_hc=1.5, gamma_lc=0.5, gamma_neg=2.5, label_smoothing=0.2),
        loss(z, labels, xi, gamma_neg=2.0, label_smoothing=0.1, class_weights=weights,
             where=class_mask, z_loss=0.05),
    ])

  check_second_order(stacked, logits, data[3])


def test_probability_labels(data):
  """Paper form over soft labels (smoothed, weighted, gamma 0.5) and the reference form (soft
  labels collapsed to their argmax), in the logits and the class weights."""
  logits, _, probabilities, _, xi = data

  def stacked(z, weights):
    return jnp.stack([
        cfl_jax.cyclical_focal_loss(z, probabilities, xi, gamma_lc=0.5, label_smoothing=0.1,
                                    class_weights=weights),
        cfl_jax.cyclical_focal_loss(z, probabilities, xi, gamma_hc=3.0, gamma_neg=4.0,
                                    label_smoothing=0.1, class_weights=weights),
        cfl_jax.focal_loss(z, probabilities, gamma=1.5),
    ])

  check_second_order(stacked, logits, data[3])


def test_sigmoid(data):
  """Symmetric form (hard labels, integer exponents) and the asymmetric form (soft labels,
  fractional exponents, gamma_neg, clip, alpha)."""
  logits, labels, probabilities, _, xi = data
  hard = jax.nn.one_hot(labels, C, dtype=jnp.float64)

  def stacked(z):
    return jnp.stack([
        cfl_jax.sigmoid_cyclical_focal_loss(z, hard, xi),
        cfl_jax.sigmoid_cyclical_focal_loss(z, probabilities, xi, gamma_hc=1.5, gamma_lc=0.5,
                                            gamma_neg=4.0, clip=0.05, alpha=0.25),
        cfl_jax.sigmoid_high_confidence_loss(z, hard, gamma=2.5),
    ])

  check_second_order(stacked, logits)
