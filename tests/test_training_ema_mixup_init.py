"""Tests of the recipe pieces that live in the train state and step: the weights' EMA (update,
evaluation, checkpoint and resume), mixup, and ``model.init_from`` (loaded at the start, not on
resume)."""

import contextlib
import dataclasses
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy

from cfl_jax.models import import_weights
from cfl_jax.training import ConfigError, checkpointing, recipe, sharding, train
from cfl_jax.training import train_and_evaluate
from cfl_jax.training.mixup import mixup
from cfl_jax.training.train import Run
import checkpoint_fakes
import tfds_fakes
from training_helpers import comparable, tiny_config

_DECAY = 0.9

pytestmark = pytest.mark.usefixtures("module_compilation_cache")


def test_ema_follows_the_numpy_recurrence_under_mixup_and_label_smoothing():
  """ema_0 = initial variables, ema_k = d * ema_{k-1} + (1 - d) * variables_k; the first step's
  loss is cross-entropy on mixup's images against its probability labels smoothed by epsilon
  (mixup's own stream at step 0)."""
  run = dataclasses.replace(
      Run.create(tiny_config(ema_decay=_DECAY, mixup_alpha=0.4,
                             loss={"name": "cross_entropy", "label_smoothing": 0.1})),
      mesh=sharding.make_data_mesh(jax.devices()[:1]))
  step_fn = train.jit_train_step(run.mesh, loss_fn=recipe.get_loss_fn(run.config.loss),
                                 schedules=run.plan.schedules, ema_decay=_DECAY,
                                 mixup=run.mixup())
  state = run.fresh_state()
  variables = lambda s: jax.device_get({"params": s.params, "batch_stats": s.batch_stats})
  expected = variables(state)
  assert jax.tree.structure(jax.device_get(state.ema)) == jax.tree.structure(expected)
  batches = run.dataset.train_batches(global_batch_size=run.config.batch_size, seed=0)
  first = next(batches)
  images, targets = run.mixup()(train.stream_key(run.key, "mixup", 0), first["image"],
                                first["label"])
  assert not np.allclose(targets, jax.nn.one_hot(first["label"], 10))  # mixed
  logits = state.apply_fn(expected, images, train=True, mutable=["batch_stats"])[0]
  first_loss = optax.softmax_cross_entropy(logits, 0.9 * targets + 0.1 / 10).mean()
  losses = []
  for batch in (first, next(batches), next(batches)):
    state, metrics = step_fn(state, batch, run.key)
    losses.append(float(metrics["loss"]))
    expected = jax.tree.map(lambda e, v: _DECAY * np.float64(e) + (1 - _DECAY) * np.float64(v),
                            expected, variables(state))
  assert losses[0] == pytest.approx(float(first_loss), rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.device_get(state.ema), expected)
  assert not np.allclose(state.ema["params"]["head"]["dense"]["kernel"],
                         state.params["head"]["dense"]["kernel"])


def test_without_ema_the_state_holds_none():
  assert Run.create(tiny_config()).fresh_state().ema == {}


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
  config = tiny_config(ema_decay=_DECAY, mixup_alpha=0.2, num_train_steps=8,
                       checkpoint_every_steps=4)
  workdir = str(tmp_path_factory.mktemp("ema"))
  return config, workdir, train_and_evaluate(config, workdir)


def test_ema_is_evaluated_beside_the_raw_weights(ema_run):
  summary = ema_run[2]
  assert 0 <= summary["ema_test_accuracy"] <= 1 and np.isfinite(summary["ema_test_loss"])
  assert summary["ema_test_loss"] != summary["test_loss"]  # two different models evaluated
  assert np.isfinite(summary["loss"])  # trained on mixup's probability labels


def test_ema_is_checkpointed_and_resumed(ema_run, tmp_path, monkeypatch):
  """Preempted after step 4 and resumed, the run ends as the uninterrupted one, EMA included."""
  config, workdir, uninterrupted = ema_run
  with monkeypatch.context() as patch:
    patch.setattr(checkpointing.PreemptionWatcher, "reached", lambda self, step: step == 4)
    assert train_and_evaluate(config, str(tmp_path))["status"] == "preempted"
  resumed = train_and_evaluate(config, str(tmp_path))
  assert resumed["resumed_from_step"] == 4
  assert comparable(resumed) == comparable(uninterrupted)
  states = []
  for directory in (workdir, str(tmp_path)):
    with contextlib.closing(checkpointing.Checkpointer(
        os.path.join(directory, "checkpoints"), max_to_keep=2)) as checkpointer:
      run = Run.create(config)
      states.append(run.initial_state(checkpointer)[0])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(states[0].ema),
               jax.device_get(states[1].ema))


@pytest.mark.parametrize("num_shards", [1, 3])
def test_mixup_pairs_each_row_with_its_mirror_in_its_shard(num_shards):
  """Row i of a shard of b rows is mixed with row b - 1 - i of the same shard, images and labels
  alike, with one weight for the whole batch."""
  images = jax.random.uniform(jax.random.key(1), (6, 4, 4, 3))
  mix = jax.jit(functools.partial(mixup, alpha=0.2, num_classes=6, num_shards=num_shards))
  mixed, targets = mix(jax.random.key(2), images, jnp.arange(6))
  rows, size = np.arange(6), 6 // num_shards
  partner = size * (rows // size) + size - 1 - rows % size
  weight = float(targets[0, 0])
  assert 0 < weight < 1
  np.testing.assert_allclose(targets, weight * np.eye(6) + (1 - weight) * np.eye(6)[partner],
                             rtol=1e-6)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(mixed, weight * images + (1 - weight) * images[partner], rtol=1e-5)
  again, other = (mix(jax.random.key(k), images, jnp.arange(6))[1] for k in (2, 3))
  assert np.array_equal(again, targets) and not np.array_equal(other, targets)
  with pytest.raises(ValueError, match="batch=6 does not split into num_shards=4"):
    mixup(jax.random.key(2), images, jnp.arange(6), alpha=0.2, num_classes=6, num_shards=4)


@pytest.mark.parametrize("num_shards, rows, why", [
    (6, 1, "each row would be mixed with itself"),
    (2, 3, "the middle row of each device would not be mixed")])
def test_mixup_refuses_an_odd_count_per_device(num_shards, rows, why):
  """One row per device would be its own partner, and an odd count leaves the middle row
  unmixed."""
  images = jnp.ones((6, 4, 4, 3))
  with pytest.raises(ValueError, match=f"batch=6 over {num_shards} devices is {rows} per "
                                       f"device \\({why}\\)"):
    mixup(jax.random.key(2), images, jnp.arange(6), alpha=0.2, num_classes=6,
          num_shards=num_shards)


def test_run_refuses_mixup_with_an_odd_count_per_device():
  """batch_size over the data mesh's 8 devices, before any compute."""
  with pytest.raises(ConfigError, match="batch_size=24 over 8 devices is 3 per device"):
    Run.create(tiny_config(batch_size=24, mixup_alpha=0.2))
  assert Run.create(tiny_config(batch_size=24)).mixup() is None  # no mixup, no constraint


def test_mixup_moves_no_image_between_devices(ema_run):
  """On 8 devices the compiled train step with mixup has no collective but the all-reduces of
  the gradients and batch statistics: each row's partner is on its own device."""
  run = Run.create(ema_run[0])  # the step ema_run compiled: loaded from the compilation cache
  assert run.mesh.devices.size == 8 and run.config.mixup_alpha
  step = train.jit_train_step(run.mesh, loss_fn=recipe.get_loss_fn(run.config.loss),
                              schedules=run.plan.schedules, ema_decay=_DECAY, mixup=run.mixup())
  batch = next(run.dataset.train_batches(global_batch_size=run.config.batch_size, seed=0))
  compiled = step.lower(run.fresh_state(), sharding.shard_batch(batch, run.mesh),
                        jax.random.key(0)).compile()
  collectives = re.findall(r" (all-reduce|all-gather|all-to-all|collective-permute|"
                           r"reduce-scatter)(?:-start)?\(", compiled.as_text())
  assert set(collectives) == {"all-reduce"}


# model.init_from: ResNet-50 on tiny CIFAR-10 (real TFDS format), from a synthetic torchvision
# checkpoint with the real key list.

@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  root = tmp_path_factory.mktemp("tfds")
  tfds_fakes.prepare_cifar(root, "cifar10", train_size=16, test_size=8)
  return str(root)


def test_init_from_loads_the_file_at_the_start_and_not_on_resume(cifar_dir, tmp_path):
  weights = tmp_path / "resnet50.safetensors"
  safetensors.numpy.save_file(checkpoint_fakes.random_tensors("resnet50"), str(weights))
  run = Run.create(tiny_config(
      dataset={"name": "cifar10", "data_dir": cifar_dir}, batch_size=8, ema_decay=_DECAY,
      model={"name": "resnet50", "dtype": "float32", "init_from": str(weights)}))
  run = dataclasses.replace(run, mesh=sharding.make_data_mesh(jax.devices()[:1]))
  state = run.fresh_state()
  expected = import_weights("resnet50", weights, num_classes=10, seed=0)
  for variables in ({"params": state.params, "batch_stats": state.batch_stats}, state.ema):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables), expected)

  saved = state.replace(step=3, params=jax.tree.map(lambda p: p + 1.0, state.params))
  with contextlib.closing(checkpointing.Checkpointer(str(tmp_path / "checkpoints"),
                                                     max_to_keep=1)) as checkpointer:
    checkpointer.save(3, saved, {"config": run.config_json})
  weights.unlink()  # reading it again would fail
  with contextlib.closing(checkpointing.Checkpointer(str(tmp_path / "checkpoints"),
                                                     max_to_keep=1)) as checkpointer:
    resumed, _ = run.initial_state(checkpointer)
  assert int(resumed.step) == 3
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params),
               jax.device_get(saved.params))


@pytest.mark.parametrize("aug_splits, error", [
    (1, "batch_size=8 over 8 devices is 1 per device"),
    (2, None),  # 2 rows per device: the views of each device's one image pair up
    (3, r"batch_size x dataset.aug_splits=24 over 8 devices is 3 per device"),
])
def test_mixup_counts_every_view_of_a_devices_images(cifar_dir, aug_splits, error):
  """Mixup pairs rows within a device's shard, so its even-count rule counts rows: views x
  images per device. Epochs count images: 16 images at batch 8 are 2 steps, views or not."""
  config = tiny_config(batch_size=8, mixup_alpha=0.2, dataset={
      "name": "cifar10", "data_dir": cifar_dir, "random_erasing": 0.5, "aug_splits": aug_splits})
  if error is None:
    run = Run.create(config)
    assert (run.dataset.aug_splits, run.plan.steps_per_epoch) == (aug_splits, 2)
  else:
    with pytest.raises(ConfigError, match=error):
      Run.create(config)


@pytest.mark.parametrize("model, message", [
    ("resnet152", r"'/nowhere/r152.safetensors' is not a file; resnet152's ImageNet weights are "
                  r"torchvision's ResNet152_Weights.IMAGENET1K_V1 \(https://download.pytorch.org"),
    ("resnet10", "'resnet10' has no weights naming; importable models: tresnet_m, resnet50"),
])
def test_init_from_errors_before_any_compute(model, message):
  config = tiny_config(model={"name": model, "init_from": "/nowhere/r152.safetensors"})
  with pytest.raises(ConfigError, match=message):
    Run.create(config)


def test_new_keys_are_validated():
  with pytest.raises(ConfigError) as error:
    Run.create(tiny_config(ema_decay=1.0, mixup_alpha=-1.0,
                           optimizer={"weight_decay_on": "biases", "min_learning_rate": 1.0,
                                      "lr_schedule": "step", "cooldown_epochs": 1.0}))
  for message in ("ema_decay must be in [0, 1)", "mixup_alpha must be >= 0.0",
                  "weight_decay_on must be one of kernels, all",
                  "min_learning_rate (1.0) must be below",
                  "apply to optimizer.lr_schedule='cosine' only"):
    assert message in str(error.value)
