"""Tests of the jitted train/eval steps and their sharding (8 fake CPU devices, see conftest)."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cfl_jax import metrics
from cfl_jax.training import recipe, sharding, train
from cfl_jax.training.train import Run

_CONFIG = {"batch_size": 64, "num_train_steps": 50, "loss": {"name": "cyclical_focal"},
           "cyclical": {"weight_decay": {"enabled": True}, "grad_clip": {"enabled": True}}}


def _run(devices=None, **overrides):
  run = Run.create({**_CONFIG, **overrides})
  return dataclasses.replace(run, mesh=sharding.make_data_mesh(devices))


def _batches(run, count):
  batches = run.dataset.train_batches(global_batch_size=run.config.batch_size, seed=0)
  return [sharding.shard_batch(next(batches), run.mesh) for _ in range(count)]


@functools.partial(jax.jit, static_argnames="train")
def _logits(state, images, train):
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  if train:
    return state.apply_fn(variables, images, train=True, mutable=["batch_stats"])[0]
  return state.apply_fn(variables, images, train=False)


def _trajectory(run, num_steps, schedules=None):
  """(final params on host, list of host metrics, the step) after ``num_steps`` jitted steps."""
  train_step = train.jit_train_step(run.mesh, loss_fn=recipe.get_loss_fn(run.config.loss),
                                    schedules=schedules or run.plan.schedules)
  state, history = run.fresh_state(), []
  for batch in _batches(run, num_steps):
    previous = state
    state, step_metrics = train_step(state, batch, jax.random.key(1))
    history.append(step_metrics)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(previous.params))  # donated
  return jax.device_get(state.params), jax.device_get(history), train_step


@pytest.fixture(scope="module")
def trajectories():
  """Four steps on one device and on eight, from the same seed and batches."""
  return {devices: (run, *_trajectory(run, 4))
          for devices, run in ((1, _run(jax.devices()[:1])), (8, _run()))}


def test_schedules_are_read_at_state_step_inside_one_compiled_step(trajectories):
  run, _, history, train_step = trajectories[8]
  assert train_step._cache_size() == 1  # one program for every step: no retracing on step
  for step, step_metrics in enumerate(history):
    for name in ("xi", "learning_rate", "weight_decay", "grad_clip_norm"):
      assert step_metrics[name] == pytest.approx(float(run.plan.schedules[name](step))), name
  assert {"loss", "accuracy", "grad_norm"} <= set(history[0])
  assert history[0]["xi"] == 1.0 and history[1]["xi"] < 1.0


def test_sharded_equals_unsharded(trajectories):
  (single, params_1, history_1, _), (sharded, params_8, history_8, _) = (
      trajectories[1], trajectories[8])
  assert single.mesh.devices.size == 1 and sharded.mesh.devices.size == 8
  for one, eight in zip(history_1, history_8):
    for name in one:
      assert eight[name] == pytest.approx(one[name], rel=1e-5, abs=1e-6), name
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params_1, params_8)


def test_temperature_divides_the_training_logits():
  run = _run(loss={"name": "cross_entropy"})
  batch = _batches(run, 1)[0]
  state = run.fresh_state()
  logits = _logits(state, batch["image"], train=True)
  expected = optax.softmax_cross_entropy_with_integer_labels(logits / 2.0, batch["label"]).mean()
  schedules = {**run.plan.schedules, "temperature": lambda step: jnp.float32(2.0)}
  _, history, _ = _trajectory(run, 1, schedules)
  assert history[0]["loss"] == pytest.approx(float(expected), rel=1e-5)
  assert history[0]["temperature"] == 2.0


def test_bfloat16_compute_keeps_float32_params_and_loss():
  run = _run(model={"name": "digits_cnn", "dtype": "bfloat16"})
  params, history, _ = _trajectory(run, 2)
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
  assert history[-1]["loss"].dtype == np.float32 and np.isfinite(history[-1]["loss"])


def test_eval_step_counts_match_metrics_and_skip_padding():
  run = _run(eval_batch_size=512)
  state = run.fresh_state()
  eval_step = train.jit_eval_step(run.mesh, num_classes=10)
  (batch,) = list(run.dataset.eval_batches(global_batch_size=512))
  assert batch["mask"].sum() == 500  # 12 padding rows
  counts = jax.device_get(eval_step(state, sharding.shard_batch(batch, run.mesh)))
  logits = _logits(state, batch["image"], train=False)
  expected = metrics.class_counts(logits, batch["label"], 10, where=batch["mask"])
  np.testing.assert_array_equal(counts["correct"], expected["correct"])
  np.testing.assert_array_equal(counts["total"], np.full(10, 50))
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  assert counts["loss_sum"] == pytest.approx(float(cross_entropy[batch["mask"]].sum()), rel=1e-5)
  # The calibration histogram counts the 500 real rows only, each in its confidence bin.
  confidence = np.asarray(jax.nn.softmax(logits).max(-1))[batch["mask"]]
  bins = np.minimum(np.ceil(confidence * 15).astype(int) - 1, 14)
  np.testing.assert_array_equal(counts["bin_count"], np.bincount(bins, minlength=15))
  np.testing.assert_allclose(counts["bin_confidence_sum"],
                             np.bincount(bins, confidence, minlength=15), rtol=1e-5)


def test_shard_batch_builds_a_batch_sharded_global_array():
  mesh = sharding.make_data_mesh()
  batch = sharding.shard_batch({"x": np.arange(16, dtype=np.float32)}, mesh)
  assert batch["x"].shape == (16,) and batch["x"].sharding == sharding.batch_sharded(mesh)
  assert len(batch["x"].addressable_shards) == 8
  with pytest.raises(ValueError, match="batch_size=12 must be divisible by the 8 devices"):
    sharding.check_batch_size("batch_size", 12, mesh)


def test_a_non_finite_update_is_skipped_and_counted_when_asked():
  run = _run(optimizer={"skip_nonfinite_updates": 3})
  step = train.jit_train_step(run.mesh, loss_fn=recipe.get_loss_fn(run.config.loss),
                              schedules=run.plan.schedules)
  clean, = _batches(run, 1)
  poisoned = {**clean, "image": clean["image"].at[0].set(jnp.nan)}
  state = run.fresh_state()
  before = jax.device_get(state.params)
  state, metrics = step(state, poisoned, jax.random.key(1))
  assert int(metrics["skipped_updates"]) == 1 and not np.isfinite(float(metrics["grad_norm"]))
  chex.assert_trees_all_equal(jax.device_get(state.params), before)  # the update was skipped
  state, metrics = step(state, clean, jax.random.key(1))
  assert int(metrics["skipped_updates"]) == 1 and np.isfinite(float(metrics["loss"]))
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.device_get(state.params),
                         before)
  assert all(jax.tree.leaves(changed))
