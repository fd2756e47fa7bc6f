"""Tests of cfl_jax.training.recipe: losses by name, the xi, learning-rate and cyclical
schedules, and the optimizer."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import cfl_jax
from cfl_jax.models import get_model
from cfl_jax.training import LOSS_NAMES, get_loss_fn, recipe, resolve_config

_LOGITS = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32) * 3
_LABELS = np.array([0, 1, 2, 3, 1, 0])
_HYPER = {"gamma_hc": 3.0, "gamma_lc": 1.5, "gamma_neg": 4.0, "label_smoothing": 0.1}


def _loss(name, xi=0.3, **hyper):
  config = resolve_config({"loss": {"name": name, **_HYPER, **hyper}}).loss
  return jax.jit(get_loss_fn(config))(_LOGITS, _LABELS, xi)


@pytest.mark.parametrize("name, expected", [
    ("cross_entropy", lambda: optax.softmax_cross_entropy(
        _LOGITS, optax.smooth_labels(jax.nn.one_hot(_LABELS, 4), 0.1))),
    ("focal", lambda: cfl_jax.focal_loss_with_integer_labels(
        _LOGITS, _LABELS, gamma=1.5, label_smoothing=0.1)),
    ("high_confidence", lambda: cfl_jax.high_confidence_loss_with_integer_labels(
        _LOGITS, _LABELS, gamma=3.0, label_smoothing=0.1)),
    ("cyclical_focal", lambda: cfl_jax.cyclical_focal_loss_with_integer_labels(
        _LOGITS, _LABELS, 0.3, gamma_hc=3.0, gamma_lc=1.5, label_smoothing=0.1)),
    ("cyclical_focal_reference", lambda: cfl_jax.cyclical_focal_loss_with_integer_labels(
        _LOGITS, _LABELS, 0.3, gamma_hc=3.0, gamma_lc=1.5, gamma_neg=4.0, label_smoothing=0.1)),
    ("sigmoid_cyclical_focal", lambda: cfl_jax.sigmoid_cyclical_focal_loss(
        _LOGITS, optax.smooth_labels(jax.nn.one_hot(_LABELS, 4), 0.1), 0.3, gamma_hc=3.0,
        gamma_lc=1.5).sum(-1)),
    ("asymmetric_focal", lambda: cfl_jax.cyclical_focal_loss_with_integer_labels(
        _LOGITS, _LABELS, 0.0, gamma_lc=1.5, gamma_neg=4.0, label_smoothing=0.1)),
])
def test_each_loss_by_name_binds_its_hyperparameters(name, expected):
  np.testing.assert_allclose(_loss(name), jax.jit(expected)(), rtol=1e-6)


def test_every_name_is_tested_and_unknown_names_fail():
  assert set(LOSS_NAMES) == {"cross_entropy", "focal", "high_confidence", "cyclical_focal",
                             "cyclical_focal_reference", "sigmoid_cyclical_focal",
                             "asymmetric_focal"}
  with pytest.raises(ValueError, match="Unknown loss 'x'"):
    get_loss_fn(ml_collections.ConfigDict({"name": "x"}))


def test_cross_entropy_without_smoothing_is_optax():
  np.testing.assert_allclose(
      _loss("cross_entropy", label_smoothing=0.0),
      optax.softmax_cross_entropy_with_integer_labels(_LOGITS, _LABELS), rtol=1e-6)


def test_only_the_cyclical_losses_read_xi():
  for name in LOSS_NAMES:
    changes = not np.allclose(_loss(name, xi=0.0), _loss(name, xi=1.0))
    assert changes == ("cyclical" in name), name


def test_sigmoid_cyclical_focal_at_xi_0_is_optax_sigmoid_focal_over_one_hot_targets():
  np.testing.assert_allclose(
      _loss("sigmoid_cyclical_focal", xi=0.0, label_smoothing=0.0),
      optax.sigmoid_focal_loss(_LOGITS, jax.nn.one_hot(_LABELS, 4), gamma=1.5).sum(-1),
      rtol=1e-5)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_training_loss_is_nan_for_labels_outside_the_classes(name):
  config = resolve_config({"loss": {"name": name, **_HYPER}}).loss
  labels = _LABELS.copy()
  labels[2], labels[4] = -1, 4
  loss = np.asarray(jax.jit(get_loss_fn(config))(_LOGITS, labels, 0.3))
  assert np.isnan(loss[[2, 4]]).all() and np.isfinite(loss[[0, 1, 3, 5]]).all()


def test_cyclical_focal_limits_through_the_config():
  np.testing.assert_allclose(_loss("cyclical_focal", xi=0.0), _loss("focal"), rtol=1e-6)
  np.testing.assert_allclose(_loss("cyclical_focal", xi=1.0), _loss("high_confidence"), rtol=1e-6)


@pytest.mark.parametrize("loss, expected", [
    ({}, cfl_jax.xi_schedule(70, cyclical_factor=4.0)),
    ({"xi_granularity": "epoch", "cyclical_factor": 2.0},
     cfl_jax.xi_schedule(70, cyclical_factor=2.0, steps_per_epoch=7)),
    ({"xi_schedule": "reference", "cyclical_factor": 2.0, "xi_first_epoch": 1},
     cfl_jax.reference_xi_schedule(10, 7, cyclical_factor=2.0, first_epoch=1)),
])
def test_xi_schedule_from_the_config(loss, expected):
  schedule = recipe.xi_schedule(resolve_config({"loss": loss}).loss, total_steps=70,
                                   steps_per_epoch=7)
  for step in range(0, 71, 3):
    assert float(schedule(step)) == pytest.approx(float(expected(step))), step


def test_reference_xi_needs_whole_epochs():
  loss = resolve_config({"loss": {"xi_schedule": "reference"}}).loss
  with pytest.raises(ValueError, match="whole epochs"):
    recipe.xi_schedule(loss, total_steps=71, steps_per_epoch=7)

_STEPS, _PER_EPOCH = 100, 10


@functools.cache
def _params():
  model = get_model("digits_cnn", num_classes=10)
  init = jax.jit(functools.partial(model.init, train=False))
  return init(jax.random.key(0, impl="rbg"), jnp.zeros((1, 8, 8, 1)))["params"]


def _optimizer_config(**overrides):
  return resolve_config({"optimizer": overrides}).optimizer


def _run(tx, params, grads, steps, schedules=None):
  """Updates of ``steps`` successive steps of ``tx`` for fixed ``grads``, its hyper-parameters
  set from ``schedules`` at each step as the train step does (optax's own schedules otherwise)."""
  opt_state, updates, step = tx.init(params), [], jax.jit(tx.update)
  for count in range(steps):
    if schedules:
      opt_state = recipe.set_hyperparameters(
          opt_state, {name: schedule(count) for name, schedule in schedules.items()})
    update, opt_state = step(grads, opt_state, params)
    updates.append(update)
  return updates


def test_weight_decay_mask_selects_kernels_only():
  mask = recipe.weight_decay_mask(_params())
  flat = {"/".join(k.key for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat["conv1/kernel"] and flat["head/dense/kernel"]
  assert not flat["head/dense/bias"] and not flat["bn1/scale"] and not flat["bn1/bias"]


@pytest.mark.parametrize("name, reference", [
    ("sgd", lambda lr, wd, mask: optax.chain(optax.add_decayed_weights(wd, mask),
                                             optax.sgd(lr, momentum=0.9, nesterov=True))),
    ("adamw", lambda lr, wd, mask: optax.adamw(lr, weight_decay=wd, mask=mask)),
])
def test_optimizers_equal_their_optax_counterparts(name, reference):
  params = _params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  tx = recipe.build_optimizer(_optimizer_config(name=name, weight_decay=1e-2, learning_rate=0.1))
  expected = reference(0.1, 1e-2, recipe.weight_decay_mask)
  for ours, theirs in zip(_run(tx, params, grads, 3), _run(expected, params, grads, 3)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs)


def test_cyclical_weight_decay_follows_xi_on_weights_only():
  params = _params()
  xi = cfl_jax.xi_schedule(_STEPS, cyclical_factor=4.0)
  schedules = recipe.cyclical_schedules(
      resolve_config({"cyclical": {"weight_decay": {"enabled": True, "min": 1e-4, "max": 1e-2}}}
                     ).cyclical, xi)
  assert set(schedules) == {"weight_decay"}
  tx = recipe.build_optimizer(_optimizer_config(momentum=0.0, weight_decay=0.0, learning_rate=1.0),
                              scheduled=schedules)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates = _run(tx, params, zeros, _STEPS // 4 + 1, schedules)
  for step in (0, _STEPS // 4):  # xi = 1 (min decay), then xi = 0 (max decay)
    decay = float(schedules["weight_decay"](step))
    np.testing.assert_allclose(updates[step]["head"]["dense"]["kernel"],
                               -decay * params["head"]["dense"]["kernel"],
                               rtol=1e-6)
    assert not np.any(updates[step]["head"]["dense"]["bias"])
    assert not np.any(updates[step]["bn1"]["scale"])
  assert float(schedules["weight_decay"](0)) == pytest.approx(1e-4)
  assert float(schedules["weight_decay"](_STEPS // 4)) == pytest.approx(1e-2)


def test_cyclical_clipping_threshold_follows_xi():
  params = _params()
  xi = cfl_jax.xi_schedule(_STEPS, cyclical_factor=2.0)
  clip = cfl_jax.follow_xi(xi, 0.5, 5.0)
  tx = recipe.build_optimizer(_optimizer_config(momentum=0.0, weight_decay=0.0, learning_rate=1.0),
                              scheduled=["grad_clip_norm"])
  huge = jax.tree.map(lambda p: jnp.full_like(p, 10.0), params)
  updates = _run(tx, params, huge, _STEPS // 2 + 1, {"grad_clip_norm": clip})
  for step, threshold in ((0, 0.5), (_STEPS // 2, 5.0)):
    assert float(optax.tree.norm(updates[step])) == pytest.approx(threshold, rel=1e-5)


def test_constant_clipping_from_the_config():
  params = _params()
  tx = recipe.build_optimizer(_optimizer_config(momentum=0.0, weight_decay=0.0,
                                               grad_clip_norm=2.0, learning_rate=1.0))
  huge = jax.tree.map(lambda p: jnp.full_like(p, 10.0), params)
  assert float(optax.tree.norm(_run(tx, params, huge, 1)[0])) == pytest.approx(2.0, rel=1e-5)


def test_follow_xi_clips_the_reference_overshoot():
  xi = cfl_jax.reference_xi_schedule(30, 1, cyclical_factor=2.0, first_epoch=1)
  assert float(xi(29)) > 1.0
  temperature = cfl_jax.follow_xi(xi, 0.5, 2.0)
  assert float(temperature(29)) == pytest.approx(0.5)


def test_temperature_schedule_is_returned_when_enabled():
  xi = cfl_jax.xi_schedule(_STEPS)
  config = resolve_config({"cyclical": {"temperature": {"enabled": True}}}).cyclical
  schedules = recipe.cyclical_schedules(config, xi)
  assert set(schedules) == {"temperature"}
  assert float(schedules["temperature"](0)) == pytest.approx(0.5)
  assert float(schedules["temperature"](_STEPS // 4)) == pytest.approx(2.0)


@pytest.mark.parametrize("overrides, expected", [
    ({"lr_schedule": "constant"}, {0: 0.1, 50: 0.1, 99: 0.1}),
    ({"lr_schedule": "cosine"}, {0: 0.1, 50: 0.05, 100: 0.0}),
    ({"lr_schedule": "step", "lr_decay_epochs": (4, 8)}, {39: 0.1, 40: 0.01, 80: 0.001}),
    # After a warm-up the decays still fall at their epochs (steps 40 and 80), not 20 later.
    ({"lr_schedule": "step", "lr_decay_epochs": (4, 8), "warmup_epochs": 2.0},
     {0: 0.0, 10: 0.05, 20: 0.1, 39: 0.1, 40: 0.01, 79: 0.01, 80: 0.001}),
    ({"lr_schedule": "constant", "warmup_epochs": 2.0, "warmup_init_learning_rate": 0.01},
     {0: 0.01, 10: 0.055, 20: 0.1, 90: 0.1}),
    ({"lr_schedule": "cosine", "warmup_epochs": 2.0}, {0: 0.0, 20: 0.1, 60: 0.05, 100: 0.0}),
    # timm's CIFAR form: warm-up from 0.01 over 20 steps, cosine over 60 to the floor 0.01,
    # cool-down at the floor over the last 20: 0.01 + 0.09 * (1 + cos(pi * t / 60)) / 2.
    ({"lr_schedule": "cosine", "warmup_epochs": 2.0, "warmup_init_learning_rate": 0.01,
      "min_learning_rate": 0.01, "cooldown_epochs": 2.0},
     {0: 0.01, 10: 0.055, 20: 0.1, 35: 0.01 + 0.045 * (1 + np.cos(np.pi / 4)), 50: 0.055,
      79: 0.01 + 0.045 * (1 + np.cos(np.pi * 59 / 60)), 80: 0.01, 99: 0.01}),
])
def test_learning_rate_schedules(overrides, expected):
  schedule = recipe.learning_rate_schedule(_optimizer_config(learning_rate=0.1, **overrides),
                                          total_steps=_STEPS, steps_per_epoch=_PER_EPOCH)
  for step, value in expected.items():
    assert float(schedule(step)) == pytest.approx(value, abs=1e-7), step


@pytest.mark.parametrize("overrides", [{"warmup_epochs": 10.0},
                                       {"warmup_epochs": 5.0, "cooldown_epochs": 5.0}])
def test_warmup_and_cooldown_must_leave_steps(overrides):
  with pytest.raises(ValueError, match="warm-up"):
    recipe.learning_rate_schedule(_optimizer_config(**overrides), total_steps=_STEPS,
                                 steps_per_epoch=_PER_EPOCH)


def test_weight_decay_on_all_parameters_equals_unmasked_optax():
  params = _params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  tx = recipe.build_optimizer(_optimizer_config(weight_decay=1e-2, weight_decay_on="all",
                                                learning_rate=0.1))
  expected = optax.chain(optax.add_decayed_weights(1e-2),
                         optax.sgd(0.1, momentum=0.9, nesterov=True))
  for ours, theirs in zip(_run(tx, params, grads, 3), _run(expected, params, grads, 3)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs)
  masked = _run(recipe.build_optimizer(_optimizer_config(weight_decay=1e-2, learning_rate=0.1)),
                params, grads, 1)[0]
  assert not np.allclose(masked["head"]["dense"]["bias"], ours["head"]["dense"]["bias"])


def test_parameter_groups_put_the_head_apart():
  groups = jax.tree_util.tree_leaves_with_path(recipe.parameter_groups(_params()))
  heads = {"/".join(k.key for k in path) for path, group in groups if group == "head"}
  assert heads == {"head/dense/kernel", "head/dense/bias"} and len(groups) > len(heads)


@pytest.mark.parametrize("name, decay_on", [("sgd", "kernels"), ("sgd", "all"),
                                            ("adamw", "all")])
def test_head_learning_rate_scales_the_head_schedule_only(name, decay_on):
  """Places-LT: backbone 0.001, classifier 0.1, both following one step schedule, each group
  decayed (kernels only or every parameter) as its own optax optimizer at its own rate."""
  params = jax.tree.map(lambda p: p + 0.5, _params())  # no zero biases: decaying them shows
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  config = _optimizer_config(name=name, learning_rate=0.001, head_learning_rate=0.1,
                             weight_decay=5e-4, weight_decay_on=decay_on, lr_schedule="step",
                             lr_decay_epochs=(1,), nesterov=False)
  schedule = recipe.learning_rate_schedule(config, total_steps=_STEPS, steps_per_epoch=2)
  tx = recipe.build_optimizer(config)
  mask = recipe.weight_decay_mask if decay_on == "kernels" else None
  for rate, group in ((0.001, lambda tree: {k: v for k, v in tree.items() if k != "head"}),
                      (0.1, lambda tree: {"head": tree["head"]})):
    rate = optax.piecewise_constant_schedule(rate, {2: 0.1})
    reference = (optax.chain(optax.add_decayed_weights(5e-4, mask),
                             optax.sgd(rate, momentum=0.9)) if name == "sgd"
                 else optax.adamw(rate, weight_decay=5e-4, mask=mask))
    expected = _run(reference, group(params), group(grads), 4)
    for ours, theirs in zip(_run(tx, params, grads, 4, {"learning_rate": schedule}), expected):
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), group(ours), theirs)


_PROBABILITIES = np.asarray(jax.nn.softmax(np.random.default_rng(1).normal(size=(6, 4))),
                            np.float32)


@pytest.mark.parametrize("name, expected", [
    ("cross_entropy", lambda: optax.softmax_cross_entropy(
        _LOGITS, optax.smooth_labels(_PROBABILITIES, 0.1))),
    ("focal", lambda: cfl_jax.focal_loss(_LOGITS, _PROBABILITIES, gamma=1.5,
                                         label_smoothing=0.1)),
    ("high_confidence", lambda: cfl_jax.high_confidence_loss(
        _LOGITS, _PROBABILITIES, gamma=3.0, label_smoothing=0.1)),
    ("cyclical_focal", lambda: cfl_jax.cyclical_focal_loss(
        _LOGITS, _PROBABILITIES, 0.3, gamma_hc=3.0, gamma_lc=1.5, label_smoothing=0.1)),
    ("sigmoid_cyclical_focal", lambda: cfl_jax.sigmoid_cyclical_focal_loss(
        _LOGITS, optax.smooth_labels(_PROBABILITIES, 0.1), 0.3, gamma_hc=3.0,
        gamma_lc=1.5).sum(axis=-1)),
    # The reference form collapses probability labels to their argmax (docs/method.md §3).
    ("cyclical_focal_reference", lambda: cfl_jax.cyclical_focal_loss_with_integer_labels(
        _LOGITS, _PROBABILITIES.argmax(-1), 0.3, gamma_hc=3.0, gamma_lc=1.5, gamma_neg=4.0,
        label_smoothing=0.1)),
    ("asymmetric_focal", lambda: cfl_jax.cyclical_focal_loss_with_integer_labels(  # as ASL's code
        _LOGITS, _PROBABILITIES.argmax(-1), 0.0, gamma_lc=1.5, gamma_neg=4.0, label_smoothing=0.1)),
])
def test_probability_labels_take_the_probability_variants(name, expected):
  config = resolve_config({"loss": {"name": name, **_HYPER}}).loss
  ours = jax.jit(get_loss_fn(config))(_LOGITS, _PROBABILITIES, 0.3)
  np.testing.assert_allclose(ours, jax.jit(expected)(), rtol=1e-5)
  one_hot = jax.nn.one_hot(_LABELS, 4)
  np.testing.assert_allclose(get_loss_fn(config)(_LOGITS, one_hot, 0.3), _loss(name), rtol=1e-5)
