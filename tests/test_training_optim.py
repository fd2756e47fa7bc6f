"""Tests of cfl_jax.training.optim: optimizers, learning-rate and cyclical schedules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cfl_jax
from cfl_jax.models import get_model
from cfl_jax.training import optim, resolve_config

_STEPS, _PER_EPOCH = 100, 10


@functools.cache
def _params():
  model = get_model("digits_cnn", num_classes=10)
  init = jax.jit(functools.partial(model.init, train=False))
  return init(jax.random.key(0, impl="rbg"), jnp.zeros((1, 8, 8, 1)))["params"]


def _optimizer_config(**overrides):
  return resolve_config({"optimizer": overrides}).optimizer


def _run(tx, params, grads, steps):
  """Updates of ``steps`` successive steps of ``tx`` for fixed ``grads``."""
  opt_state, updates, step = tx.init(params), [], jax.jit(tx.update)
  for _ in range(steps):
    update, opt_state = step(grads, opt_state, params)
    updates.append(update)
  return updates


def test_weight_decay_mask_selects_kernels_only():
  mask = optim.weight_decay_mask(_params())
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
  tx = optim.build_optimizer(_optimizer_config(name=name, weight_decay=1e-2), learning_rate=0.1)
  expected = reference(0.1, 1e-2, optim.weight_decay_mask)
  for ours, theirs in zip(_run(tx, params, grads, 3), _run(expected, params, grads, 3)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs)


def test_cyclical_weight_decay_follows_xi_on_weights_only():
  params = _params()
  xi = cfl_jax.xi_schedule(_STEPS, cyclical_factor=4.0)
  schedules = optim.cyclical_schedules(
      resolve_config({"cyclical": {"weight_decay": {"enabled": True, "min": 1e-4, "max": 1e-2}}}
                     ).cyclical, xi)
  assert set(schedules) == {"weight_decay"}
  tx = optim.build_optimizer(_optimizer_config(momentum=0.0, weight_decay=0.0),
                             learning_rate=1.0, schedules=schedules)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates = _run(tx, params, zeros, _STEPS // 4 + 1)
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
  tx = optim.build_optimizer(_optimizer_config(momentum=0.0, weight_decay=0.0),
                             learning_rate=1.0, schedules={"grad_clip_norm": clip})
  huge = jax.tree.map(lambda p: jnp.full_like(p, 10.0), params)
  updates = _run(tx, params, huge, _STEPS // 2 + 1)
  for step, threshold in ((0, 0.5), (_STEPS // 2, 5.0)):
    assert float(optax.tree.norm(updates[step])) == pytest.approx(threshold, rel=1e-5)


def test_constant_clipping_from_the_config():
  params = _params()
  tx = optim.build_optimizer(_optimizer_config(momentum=0.0, weight_decay=0.0,
                                               grad_clip_norm=2.0), learning_rate=1.0)
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
  schedules = optim.cyclical_schedules(config, xi)
  assert set(schedules) == {"temperature"}
  assert float(schedules["temperature"](0)) == pytest.approx(0.5)
  assert float(schedules["temperature"](_STEPS // 4)) == pytest.approx(2.0)


@pytest.mark.parametrize("overrides, expected", [
    ({"lr_schedule": "constant"}, {0: 0.1, 50: 0.1, 99: 0.1}),
    ({"lr_schedule": "cosine"}, {0: 0.1, 50: 0.05, 100: 0.0}),
    ({"lr_schedule": "step", "lr_decay_epochs": (4, 8)}, {39: 0.1, 40: 0.01, 80: 0.001}),
    ({"lr_schedule": "constant", "warmup_epochs": 2.0, "warmup_init_learning_rate": 0.01},
     {0: 0.01, 10: 0.055, 20: 0.1, 90: 0.1}),
    ({"lr_schedule": "cosine", "warmup_epochs": 2.0}, {0: 0.0, 20: 0.1, 60: 0.05, 100: 0.0}),
])
def test_learning_rate_schedules(overrides, expected):
  schedule = optim.learning_rate_schedule(_optimizer_config(learning_rate=0.1, **overrides),
                                          total_steps=_STEPS, steps_per_epoch=_PER_EPOCH)
  for step, value in expected.items():
    assert float(schedule(step)) == pytest.approx(value, abs=1e-7), step


def test_warmup_must_end_before_training():
  with pytest.raises(ValueError, match="warm-up"):
    optim.learning_rate_schedule(_optimizer_config(warmup_epochs=10.0), total_steps=_STEPS,
                                 steps_per_epoch=_PER_EPOCH)
