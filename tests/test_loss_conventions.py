"""The input policy that the three loss families share (cfl_jax/losses/__init__.py), pinned to
optax wherever optax has the convention: where shapes, xi broadcasting, sigmoid alpha, labels
outside their range (NaN there and only there, under jit), and the package layout."""

import ast
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, PartitionSpec as P

import cfl_jax

B, C = 6, 5


@pytest.fixture
def data():
  """Logits [6, 5], integer labels never in class 3, probability labels, a row-and-entry mask."""
  rng = np.random.default_rng(19)
  logits = (3 * rng.normal(size=(B, C))).astype(np.float32)
  labels = rng.choice([0, 1, 2, 4], size=B)
  probabilities = rng.dirichlet(np.ones(C), size=B).astype(np.float32)
  entries = rng.uniform(size=(B, C)) < 0.7
  entries[np.arange(B), labels] = True  # optax and CFL differ on a masked target class
  entries[4] = False                    # a row masked entirely
  return logits, labels, probabilities, entries


def where_of_shape(shape, entries):
  rows = np.array([True, False, True, True, False, True])
  return {(1, C): np.arange(C)[None] != 3, (B, C): entries, (B,): rows,
          (B, 1): rows[:, None]}[shape]


# --------------------------------------------------------------------------
# where: every shape optax takes, at gamma 0 equal to optax's cross-entropy
# --------------------------------------------------------------------------

WHERE_SHAPES = [(1, C), (B, C), (B,), (B, 1)]


@pytest.mark.parametrize("shape", WHERE_SHAPES, ids=str)
def test_where_equals_optax_with_integer_labels(data, shape):
  logits, labels, _, entries = data
  where = where_of_shape(shape, entries)
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels, where=where)
  for loss in (cfl_jax.cyclical_focal_loss_with_integer_labels(
                   logits, labels, 0.0, gamma_lc=0.0, where=where),
               cfl_jax.cyclical_focal_loss_with_integer_labels(
                   logits, labels, 0.4, gamma_hc=0.0, gamma_lc=0.0, where=where),
               cfl_jax.focal_loss_with_integer_labels(logits, labels, gamma=0.0, where=where)):
    np.testing.assert_allclose(loss, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", WHERE_SHAPES, ids=str)
def test_where_equals_optax_with_probability_labels(data, shape):
  logits, _, probabilities, entries = data
  where = where_of_shape(shape, entries)
  expected = optax.softmax_cross_entropy(logits, probabilities, where=where)
  for loss in (cfl_jax.cyclical_focal_loss(logits, probabilities, 0.0, gamma_lc=0.0, where=where),
               cfl_jax.high_confidence_loss(logits, probabilities, gamma=0.0, where=where)):
    np.testing.assert_allclose(loss, expected, rtol=1e-6, atol=1e-6)


def test_where_gradient_equals_optax(data):
  """A class mask [1, C]: same gradient as optax's, exactly 0 on the masked class."""
  logits, labels, _, _ = data
  where = where_of_shape((1, C), None)
  grad = jax.jit(jax.grad(lambda z: cfl_jax.cyclical_focal_loss_with_integer_labels(
      z, labels, 0.0, gamma_lc=0.0, where=where).sum()))(logits)
  expected = jax.jit(jax.grad(lambda z: optax.softmax_cross_entropy_with_integer_labels(
      z, labels, where=where).sum()))(logits)
  np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(grad[:, 3], 0.0)


@pytest.mark.parametrize("shape", [(B,), (B, 1)], ids=str)
def test_fused_where_per_example_equals_optax(shape):
  h, w = jax.random.normal(jax.random.key(0), (B, 4)), jax.random.normal(jax.random.key(1), (4, C))
  labels = jnp.arange(B) % C
  where = where_of_shape(shape, None)
  got = cfl_jax.linear_cyclical_focal_loss_with_integer_labels(
      h, w, labels, 0.0, gamma_lc=0.0, where=where)
  expected = optax.softmax_cross_entropy_with_integer_labels(h @ w, labels, where=where)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="no class mask"):
    cfl_jax.linear_cyclical_focal_loss_with_integer_labels(
        h, w, labels, 0.0, where=where_of_shape((1, C), None))


def test_sigmoid_where_per_example_and_per_label(data):
  logits, _, probabilities, _ = data
  loss = functools.partial(cfl_jax.sigmoid_cyclical_focal_loss, logits, probabilities, 0.3)
  full = np.asarray(loss())
  rows = where_of_shape((B,), None)
  np.testing.assert_array_equal(loss(where=rows), loss(where=rows[:, None]))
  np.testing.assert_array_equal(loss(where=rows), np.where(rows[:, None], full, 0.0))
  labels_kept = where_of_shape((1, C), None)
  np.testing.assert_array_equal(loss(where=labels_kept), np.where(labels_kept, full, 0.0))


# --------------------------------------------------------------------------
# xi: a scalar or one per example, broadcast to the batch shape
# --------------------------------------------------------------------------


def test_xi_broadcasts_to_the_batch_shape_in_every_family():
  """Batch [2, 3]: xi [2, 1] equals xi tiled to [2, 3]."""
  key = jax.random.split(jax.random.key(2), 3)
  logits = jax.random.normal(key[0], (2, 3, C))
  labels = jax.random.randint(key[1], (2, 3), 0, C)
  h, w = logits, jnp.eye(C)  # the fused loss on the same logits
  xi = jnp.array([[0.2], [0.7]])
  tiled = jnp.broadcast_to(xi, (2, 3))
  for loss in (
      functools.partial(cfl_jax.cyclical_focal_loss_with_integer_labels, logits, labels),
      functools.partial(cfl_jax.cyclical_focal_loss, logits, jax.nn.one_hot(labels, C)),
      functools.partial(cfl_jax.sigmoid_cyclical_focal_loss, logits, jax.nn.one_hot(labels, C)),
      functools.partial(cfl_jax.linear_cyclical_focal_loss_with_integer_labels, h, w, labels)):
    np.testing.assert_allclose(loss(xi), loss(tiled), rtol=1e-6)
    with pytest.raises(ValueError, match="xi must be a scalar or have the batch shape"):
      loss(jnp.ones(2))


def families(logits, labels):
  """Each family's loss as a function of xi (and keywords), on the same [B, C] logits."""
  return {
      "integer": functools.partial(cfl_jax.cyclical_focal_loss_with_integer_labels, logits,
                                   labels),
      "probability": functools.partial(cfl_jax.cyclical_focal_loss, logits,
                                       jax.nn.one_hot(labels, C)),
      "sigmoid": functools.partial(cfl_jax.sigmoid_cyclical_focal_loss, logits,
                                   jax.nn.one_hot(labels, C)),
      "fused": functools.partial(cfl_jax.linear_cyclical_focal_loss_with_integer_labels, logits,
                                 jnp.eye(C), labels),
  }


@pytest.mark.parametrize("xi", [-0.5, 2.0, -1, float("nan"), "0.5", None, True,
                                np.array([0.2, 0.5, 1.5, 0.0, 1.0, 0.3])],
                         ids=["negative", "above_one", "optax_axis", "nan", "string", "none",
                              "bool", "array"])
def test_concrete_xi_outside_the_unit_interval_or_not_a_number_is_refused(data, xi):
  logits, labels, _, _ = data
  for name, loss in families(logits, labels).items():
    with pytest.raises(ValueError, match=r"^xi must be .*pass it by keyword"):
      loss(xi)
    if isinstance(xi, float) and np.isfinite(xi):
      # Traced, xi is not checked (its value is unknown when the loss is traced): the loss
      # computes with it, e.g. a negative loss for xi = 2 at confident examples.
      assert np.isfinite(jax.jit(loss)(xi)).all(), name


def test_xi_broadcasts_by_the_rules_of_where(data):
  """Per-example xi with the logits' rank and a class axis of 1, as `where` takes it: [B, 1]
  for [B, C] logits, [1, B] with axis=0."""
  logits, labels, _, _ = data
  xi = np.linspace(0.1, 0.9, B)
  for name, loss in families(logits, labels).items():
    expected = np.asarray(loss(xi))
    np.testing.assert_array_equal(loss(xi[:, None]), expected, err_msg=name)
    np.testing.assert_array_equal(loss(xi, where=where_of_shape((B, 1), None)),
                                  loss(xi[:, None], where=where_of_shape((B,), None)))
    with pytest.raises(ValueError, match="xi must be a scalar or have the batch shape"):
      loss(np.full((B, C), 0.5))  # one xi per class is not one per example
  transposed = cfl_jax.cyclical_focal_loss_with_integer_labels(logits.T, labels, xi[None], axis=0)
  np.testing.assert_allclose(transposed, families(logits, labels)["integer"](xi), rtol=1e-6)


# --------------------------------------------------------------------------
# where: boolean as in optax; a class mask that hides the target
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_non_boolean_where_is_refused_as_in_optax(data, dtype):
  logits, labels, probabilities, _ = data
  weights = np.array([1.0, 0.5, 0.0, 1.0, 1.0, 0.0]).astype(dtype)  # lm1b-style weights
  with pytest.raises(ValueError, match="where"):
    optax.softmax_cross_entropy(logits, probabilities, where=jnp.asarray(weights))
  for loss in families(logits, labels).values():
    with pytest.raises(ValueError, match="where must be a boolean mask.*multiply the returned"):
      loss(0.5, where=weights)
    loss(0.5, where=weights.astype(bool))  # the same flags as booleans are fine


def test_a_class_mask_hiding_the_target_masks_the_example(data):
  """Loss 0 and gradient 0 for that example, as optax's probability form gives. optax's
  integer form gives logsumexp over the kept classes minus z_t, -log of a ratio that is no
  probability: it can exceed 1 (a negative loss) and leaves (1 - p_t)^gamma undefined, so it
  is not followed (cfl_jax/losses/__init__.py, input policy)."""
  logits, labels, _, _ = data
  where = np.arange(C)[None] != labels[0]  # hides the first example's target
  hidden = labels == labels[0]
  one_hot = jax.nn.one_hot(labels, C)
  for loss in (cfl_jax.cyclical_focal_loss_with_integer_labels(logits, labels, 0.4, where=where),
               cfl_jax.cyclical_focal_loss(logits, one_hot, 0.4, where=where)):
    np.testing.assert_array_equal(np.asarray(loss)[hidden], 0.0)
    assert np.all(np.asarray(loss)[~hidden] > 0)
  grad = jax.jit(jax.grad(lambda z: cfl_jax.cyclical_focal_loss_with_integer_labels(
      z, labels, 0.4, where=where).sum()))(logits)
  np.testing.assert_array_equal(np.asarray(grad)[hidden], 0.0)
  np.testing.assert_allclose(
      cfl_jax.cyclical_focal_loss_with_integer_labels(
          logits, labels, 0.0, gamma_lc=0.0, where=where),
      optax.softmax_cross_entropy(logits, one_hot, where=where), rtol=1e-6, atol=1e-6)
  confident = jnp.asarray(logits).at[0, labels[0]].set(20.0)
  assert optax.softmax_cross_entropy_with_integer_labels(confident, labels, where=where)[0] < 0


# --------------------------------------------------------------------------
# Labels: integer one-hot labels are probabilities; one-hot labels are no indices
# --------------------------------------------------------------------------


def test_integer_one_hot_labels_are_probability_labels_as_in_optax(data):
  logits, labels, _, _ = data
  expected = cfl_jax.cyclical_focal_loss(logits, jax.nn.one_hot(labels, C), 0.4,
                                         label_smoothing=0.1)
  for dtype in (jnp.int32, jnp.int8, bool):
    one_hot = jax.nn.one_hot(labels, C, dtype=dtype)
    np.testing.assert_array_equal(
        cfl_jax.cyclical_focal_loss(logits, one_hot, 0.4, label_smoothing=0.1), expected)
  one_hot = jax.nn.one_hot(labels, C, dtype=jnp.int32)
  np.testing.assert_allclose(cfl_jax.focal_loss(logits, one_hot, gamma=0.0),
                             optax.softmax_cross_entropy(logits, one_hot), rtol=1e-6)


def test_one_hot_labels_to_an_integer_form_name_one_hot(data):
  logits, labels, _, _ = data
  one_hot = jax.nn.one_hot(labels, C, dtype=jnp.int32)
  for name in ("integer", "fused"):
    loss = families(logits, one_hot)[name]
    with pytest.raises(ValueError, match=r"look one-hot: pass class indices \(e.g. jnp.argmax"):
      loss(0.5)


# --------------------------------------------------------------------------
# Per-example weights: multiply the returned losses
# --------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["integer", "fused"])
def test_per_example_weights_give_the_weighted_gradient(data, family):
  """Integer weights [2, 0, 1, 3, 1, 0] times the returned losses: the gradient of the batch
  with each example repeated that many times."""
  logits, labels, _, _ = data
  weights = np.array([2, 0, 1, 3, 1, 0])
  repeated = np.repeat(np.arange(B), weights)

  def total(z, rows, weights):
    return jnp.sum(weights * families(z, labels[rows])[family](0.4, gamma_neg=2.0,
                                                              label_smoothing=0.1))

  grad = jax.jit(jax.grad(lambda z: total(z, np.arange(B), weights)))(logits)
  repeated_grad = jax.jit(jax.grad(lambda z: total(z[repeated], repeated, 1.0)))(logits)
  np.testing.assert_allclose(grad, repeated_grad, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(grad)[weights == 0], 0.0)


# --------------------------------------------------------------------------
# Sigmoid alpha: optax's class-balance weight
# --------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.25, 0.9])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_sigmoid_alpha_equals_optax(data, alpha, gamma):
  logits, labels, probabilities, _ = data
  hard = jax.nn.one_hot(labels, C)
  for targets in (hard, probabilities):
    np.testing.assert_allclose(
        cfl_jax.sigmoid_cyclical_focal_loss(logits, targets, 0.0, gamma_lc=gamma, alpha=alpha),
        optax.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma),
        rtol=1e-5, atol=1e-7)
  alpha_t = alpha * hard + (1 - alpha) * (1 - hard)
  np.testing.assert_allclose(
      cfl_jax.sigmoid_high_confidence_loss(logits, hard, gamma=gamma, alpha=alpha),
      alpha_t * cfl_jax.sigmoid_high_confidence_loss(logits, hard, gamma=gamma), rtol=1e-6)


def test_sigmoid_alpha_is_checked(data):
  logits, labels, _, _ = data
  with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
    cfl_jax.sigmoid_cyclical_focal_loss(logits, jax.nn.one_hot(labels, C), 0.5, alpha=1.5)


# --------------------------------------------------------------------------
# Labels outside their range: NaN there and only there, under jit and eagerly
# --------------------------------------------------------------------------


def test_sigmoid_labels_outside_the_unit_interval_give_nan_there_only(data):
  logits, labels, _, _ = data
  clean = jax.nn.one_hot(labels, C)
  bad = clean.at[1, 2].set(2.0).at[4, 0].set(-0.5)
  is_bad = np.zeros((B, C), bool)
  is_bad[1, 2] = is_bad[4, 0] = True
  fn = functools.partial(cfl_jax.sigmoid_cyclical_focal_loss, xi=0.3, alpha=0.25)
  expected = np.asarray(fn(logits, clean))
  for loss in (jax.jit(fn)(logits, bad), fn(logits, bad)):
    np.testing.assert_array_equal(np.isnan(loss), is_bad)
    np.testing.assert_allclose(np.asarray(loss)[~is_bad], expected[~is_bad], rtol=1e-6)
  # Masked, they are padding: 0 loss and 0 gradient.
  grad = jax.jit(jax.grad(lambda z: fn(z, bad, where=~is_bad).sum()))(logits)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[is_bad] == 0)


@pytest.mark.parametrize("family", ["softmax", "softmax_reference", "fused"])
def test_integer_labels_outside_the_classes_give_nan_there_only(data, family):
  logits, labels, _, _ = data
  bad = jnp.asarray(labels).at[1].set(-1).at[4].set(C)
  is_bad = np.isin(np.arange(B), [1, 4])
  fn = {"softmax": functools.partial(cfl_jax.cyclical_focal_loss_with_integer_labels, logits),
        "softmax_reference": functools.partial(
            cfl_jax.cyclical_focal_loss_with_integer_labels, logits, gamma_neg=2.0,
            label_smoothing=0.1),
        "fused": functools.partial(cfl_jax.linear_cyclical_focal_loss_with_integer_labels,
                                   logits, jnp.eye(C))}[family]
  expected = np.asarray(fn(labels, 0.3))
  for loss in (jax.jit(fn)(bad, 0.3), fn(bad, 0.3)):
    np.testing.assert_array_equal(np.isnan(loss), is_bad)
    np.testing.assert_allclose(np.asarray(loss)[~is_bad], expected[~is_bad], rtol=1e-5)


# --------------------------------------------------------------------------
# Dense loss with the class axis sharded (Explicit mesh axes)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    dict(),
    dict(gamma_neg=2.5, label_smoothing=0.1, class_weights=np.linspace(0.5, 2.0, 16)),
    dict(label_smoothing=0.1, where=np.arange(16)[None] != 3),
], ids=["paper", "reference_weighted", "paper_smoothed_masked"])
def test_dense_loss_on_logits_sharded_over_classes(options):
  """(data 2, model 4) mesh, logits P('data', 'model'): the same values and gradients as
  unsharded, and the gradient keeps the logits' sharding."""
  logits = np.asarray(jax.random.normal(jax.random.key(3), (8, 16)))
  labels = (3 * np.arange(8) + 1) % 16  # class 3 included: masked out in the last case

  def loss_and_grad(z, t):
    return jax.value_and_grad(lambda z: cfl_jax.cyclical_focal_loss_with_integer_labels(
        z, t, 0.4, **options).sum())(z)

  expected = jax.jit(loss_and_grad)(logits, labels)
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  with jax.set_mesh(mesh):
    got = jax.jit(loss_and_grad)(jax.device_put(logits, P("data", "model")),
                                 jax.device_put(labels, P("data")))
  assert got[1].sharding.spec == P("data", "model")
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6),
               got, expected)


# --------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------


def test_losses_are_one_package_whose_modules_share_only_the_common_modules():
  """The families share only _common (input policy, numerics) and _core (the softmax and
  fused losses' one per-example loss, which itself uses only _common)."""
  package = pathlib.Path(cfl_jax.losses.__file__).parent
  assert package.name == "losses" and (package / "__init__.py").exists()
  shared = {"softmax": {"_common", "_core"}, "sigmoid": {"_common"},
            "linear": {"_common", "_core"}, "_core": {"_common"}}
  for module, allowed in shared.items():
    for node in ast.walk(ast.parse((package / f"{module}.py").read_text())):
      if isinstance(node, ast.Import):
        assert not any(a.name.startswith("cfl_jax") for a in node.names), module
      elif isinstance(node, ast.ImportFrom) and node.module.startswith("cfl_jax"):
        assert node.module == "cfl_jax.losses", (module, node.module)
        assert {a.name for a in node.names} == allowed, module
  for name in cfl_jax.losses.__all__:
    assert getattr(cfl_jax, name) is getattr(cfl_jax.losses, name)
