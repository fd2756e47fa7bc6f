"""Tests of the jitted train/eval steps and their sharding (8 fake CPU devices, see conftest)."""

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cfl_jax import metrics
from cfl_jax.training import ConfigError, recipe, sharding, train
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
  """(final params on host, list of host metrics, the step, the optimizer's final
  hyper-parameters) after ``num_steps`` jitted steps."""
  train_step = train.jit_train_step(run.mesh, loss_fn=recipe.get_loss_fn(run.config.loss),
                                    schedules=schedules or run.plan.schedules)
  state, history = run.fresh_state(), []
  for batch in _batches(run, num_steps):
    previous = state
    state, step_metrics = train_step(state, batch, jax.random.key(1))
    history.append(step_metrics)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(previous.params))  # donated
  return (jax.device_get(state.params), jax.device_get(history), train_step,
          jax.device_get(state.opt_state.hyperparams))


@pytest.fixture(scope="module")
def trajectories():
  """Four steps on one device and on eight, from the same seed and batches."""
  return {devices: (run, *_trajectory(run, 4))
          for devices, run in ((1, _run(jax.devices()[:1])), (8, _run()))}


def test_schedules_are_read_at_state_step_inside_one_compiled_step(trajectories):
  run, _, history, train_step, hyperparams = trajectories[8]
  assert train_step._cache_size() == 1  # one program for every step: no retracing on step
  for step, step_metrics in enumerate(history):
    for name in ("xi", "learning_rate", "weight_decay", "grad_clip_norm"):
      assert step_metrics[name] == pytest.approx(float(run.plan.schedules[name](step))), name
  # The optimizer applied the last step's values: the same schedules at the same step.
  assert set(hyperparams) == {"learning_rate", "weight_decay", "grad_clip_norm"}
  for name, value in hyperparams.items():
    assert value == pytest.approx(float(run.plan.schedules[name](len(history) - 1))), name
  assert {"loss", "accuracy", "grad_norm"} <= set(history[0])
  assert history[0]["xi"] == 1.0 and history[1]["xi"] < 1.0


def test_sharded_equals_unsharded(trajectories):
  (single, params_1, history_1, *_), (sharded, params_8, history_8, *_) = (
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
  _, history, *_ = _trajectory(run, 1, schedules)
  assert history[0]["loss"] == pytest.approx(float(expected), rel=1e-5)
  assert history[0]["temperature"] == 2.0


def test_bfloat16_compute_keeps_float32_params_and_loss():
  run = _run(model={"name": "digits_cnn", "dtype": "bfloat16"})
  params, history, *_ = _trajectory(run, 2)
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


@pytest.mark.parametrize("devices", [8, 1])
def test_shard_batch_gives_each_device_the_views_of_its_images(devices):
  """Host rows [view 0 | view 1 | view 2] of 16 images: device d holds [view 0 | view 1 |
  view 2] of images 2d, 2d + 1 (16 / 8 per device), in this order; nothing crosses devices."""
  mesh = sharding.make_data_mesh(jax.devices()[:devices])
  rows = 100 * np.repeat(np.arange(3), 16) + np.tile(np.arange(16), 3)  # 100 * view + image
  batch = {"label": rows.astype(np.int32), "image": np.stack([rows, -rows], 1).astype(np.float32)}
  sharded = sharding.shard_batch(batch, mesh, views=3)
  per_device = 16 // devices
  for key, value in sharded.items():
    assert value.shape == batch[key].shape and value.sharding == sharding.batch_sharded(mesh)
    for shard in value.addressable_shards:
      d = mesh.devices.tolist().index(shard.device)
      images = np.arange(d * per_device, (d + 1) * per_device)
      expected = (100 * np.arange(3)[:, None] + images).ravel()
      np.testing.assert_array_equal(np.asarray(shard.data)[..., 0] if key == "image"
                                    else shard.data, expected)
  # The regrouping compiles to a copy within each device, no collective.
  arrays = {key: jax.make_array_from_process_local_data(
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding.DATA_AXIS)),
      value.reshape(3, 16, *value.shape[1:])) for key, value in batch.items()}
  compiled = sharding._views_within_devices(mesh).lower(arrays).compile().as_text()
  for collective in ("all-to-all", "all-gather", "collective-permute", "all-reduce"):
    assert collective not in compiled


class _DropoutNet(nn.Module):
  """Dropout then a dense layer: a model that draws from the dropout stream."""

  @nn.compact
  def __call__(self, x, train):
    x = nn.Dropout(0.5, deterministic=not train)(x.reshape(x.shape[0], -1))
    return nn.Dense(10)(x)


def test_init_dropout_and_mixup_draw_from_their_own_streams():
  """The run's key is ``jax.random.key(seed)`` (default implementation); init folds in 0,
  dropout 1 then the step, mixup 2 then the step: mixup's key is no fold of dropout's."""
  model = _DropoutNet()
  run = dataclasses.replace(_run(jax.devices()[:1], mixup_alpha=0.2, seed=3), model=model)
  root = jax.random.key(3)
  init = jax.jit(functools.partial(model.init, train=False))
  state = run.fresh_state()
  chex.assert_trees_all_equal(
      jax.device_get(state.params),
      jax.device_get(init(jax.random.fold_in(root, 0), jnp.zeros((1, 8, 8, 1)))["params"]))

  seen = {}

  def record(name, key):
    jax.debug.callback(lambda bits: seen.__setitem__(name, bits), jax.random.key_data(key))

  def apply_fn(variables, images, **kwargs):
    record("dropout", kwargs["rngs"]["dropout"])
    return model.apply(variables, images, **kwargs)

  def mixup(rng, images, labels):
    record("mixup", rng)
    return run.mixup()(rng, images, labels)

  step = jax.jit(functools.partial(train.train_step, loss_fn=recipe.get_loss_fn(run.config.loss),
                                   schedules=run.plan.schedules, mixup=mixup))
  batch = {"image": jnp.ones((4, 8, 8, 1)), "label": jnp.arange(4)}
  step(state.replace(step=jnp.int32(5), apply_fn=apply_fn), batch, run.key)
  jax.effects_barrier()
  bits = jax.random.key_data
  for name, purpose in (("dropout", 1), ("mixup", 2)):
    want = jax.random.fold_in(jax.random.fold_in(root, purpose), 5)
    np.testing.assert_array_equal(seen[name], bits(want), err_msg=name)
  dropout_key = jax.random.wrap_key_data(seen["dropout"])
  for folded in range(4):
    assert not np.array_equal(seen["mixup"], bits(jax.random.fold_in(dropout_key, folded)))


def test_init_key_rbg_v0_initialises_as_recorded_runs_did():
  """``init_key='rbg_v0'`` (pinned by the MNIST-1D study) is ``jax.random.key(seed, 'rbg')``."""
  model = _DropoutNet()
  run = dataclasses.replace(_run(jax.devices()[:1], seed=3, init_key="rbg_v0"), model=model)
  init = jax.jit(functools.partial(model.init, train=False))
  chex.assert_trees_all_equal(
      jax.device_get(run.fresh_state().params),
      jax.device_get(init(jax.random.key(3, impl="rbg"), jnp.zeros((1, 8, 8, 1)))["params"]))
  with pytest.raises(ConfigError, match="init_key must be one of stream, rbg_v0; got 'rbg'"):
    Run.create({**_CONFIG, "init_key": "rbg"})


def test_a_skipped_update_keeps_the_whole_state_while_every_schedule_moves_on():
  """A BatchNorm model with EMA, plain SGD warming up (lr(k) = 0.1 k / steps_per_epoch): step 2's
  NaN image makes the gradient, batch_stats and EMA non-finite, so its update is skipped;
  step 3 then applies lr(3) to its own gradient. With N = 1, the second of two non-finite updates
  in a row is applied."""
  run = _run(jax.devices()[:1], ema_decay=0.9,
             cyclical={"weight_decay": {"enabled": False}, "grad_clip": {"enabled": False}},
             optimizer={"momentum": 0.0, "weight_decay": 0.0, "warmup_epochs": 1.0,
                        "skip_nonfinite_updates": 1})
  loss_fn, schedules = recipe.get_loss_fn(run.config.loss), run.plan.schedules
  step = train.jit_train_step(run.mesh, loss_fn=loss_fn, schedules=schedules, ema_decay=0.9,
                              skip_nonfinite_updates=1)
  batches = _batches(run, 4)
  poisoned = {**batches[2], "image": batches[2]["image"].at[0].set(jnp.nan)}
  state = run.fresh_state()
  for batch in batches[:2]:
    state, _ = step(state, batch, run.key)
  before = jax.device_get(state)
  assert before.batch_stats and before.ema  # BatchNorm statistics and an average to keep

  state, metrics = step(state, poisoned, run.key)
  after = jax.device_get(state)
  assert not np.isfinite(metrics["grad_norm"]) and int(metrics["skipped_updates"]) == 1
  assert (int(after.step), int(after.skipped_updates), int(after.nonfinite_in_a_row)) == (3, 1, 1)
  for field in ("params", "batch_stats", "ema", "opt_state"):
    chex.assert_trees_all_equal(getattr(after, field), getattr(before, field))

  learning_rate, xi = schedules["learning_rate"], schedules["xi"]
  assert float(learning_rate(3)) == pytest.approx(1.5 * float(learning_rate(2)))

  @jax.jit
  def gradient(params, batch_stats, batch):
    def objective(params):
      logits, _ = state.apply_fn({"params": params, "batch_stats": batch_stats}, batch["image"],
                                 train=True, mutable=["batch_stats"])
      return jnp.mean(loss_fn(logits, batch["label"], xi(3)))
    return jax.grad(objective)(params)

  grads = jax.device_get(gradient(state.params, state.batch_stats, batches[3]))
  state, metrics = step(state, batches[3], run.key)
  assert metrics["learning_rate"] == pytest.approx(float(learning_rate(3)))
  assert metrics["xi"] == pytest.approx(float(xi(3)))
  expected = jax.tree.map(lambda p, g: p - float(learning_rate(3)) * g, after.params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.device_get(state.params), expected)

  for _ in range(2):
    state, metrics = step(state, poisoned, run.key)
  assert int(state.skipped_updates) == 2 and int(state.nonfinite_in_a_row) == 2
  written = jax.device_get((state.params, state.batch_stats, state.ema))
  assert not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(written))
