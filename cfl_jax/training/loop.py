"""``train_and_evaluate(config, workdir)``: the whole run, resumable and data-parallel.

The run is a pure function of the config: batch ``k`` comes from ``(seed, k)``, the step's
randomness from ``fold_in(key(seed), step)``, and every schedule from ``state.step``. Re-running
with the same workdir therefore resumes from the newest checkpoint and ends exactly as an
uninterrupted run would; a SIGTERM saves a checkpoint and returns early.
"""

import collections
import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax

from cfl_jax import data as data_lib
from cfl_jax import metrics as metrics_lib
from cfl_jax import models
from cfl_jax.training import checkpointing
from cfl_jax.training import config as config_lib
from cfl_jax.training import objective
from cfl_jax.training import optim
from cfl_jax.training import preemption
from cfl_jax.training import reporting
from cfl_jax.training import sharding
from cfl_jax.training import state as state_lib
from cfl_jax.training import steps

# Steps dispatched ahead of the host. Bounded because XLA:CPU's in-process collectives can
# deadlock when hundreds of multi-device steps are queued (seen with jax 0.10 on 2 cores).
_MAX_STEPS_IN_FLIGHT = 2


@dataclasses.dataclass(frozen=True)
class Plan:
  """The run's durations, in steps, and its schedules (all read at ``state.step``)."""

  steps_per_epoch: int
  total_steps: int
  eval_every_steps: int  # 0: only at the end
  schedules: dict[str, optax.Schedule]

  @classmethod
  def create(cls, config: ml_collections.ConfigDict,
             dataset: data_lib.ImageClassificationData) -> "Plan":
    steps_per_epoch = dataset.steps_per_epoch(config.batch_size)
    total_steps = (config.num_train_steps if config.num_train_steps > 0
                   else config.num_epochs * steps_per_epoch)
    xi = objective.xi_schedule(config.loss, total_steps=total_steps,
                               steps_per_epoch=steps_per_epoch)
    learning_rate = optim.learning_rate_schedule(config.optimizer, total_steps=total_steps,
                                                 steps_per_epoch=steps_per_epoch)
    schedules = {"xi": xi, "learning_rate": learning_rate,
                 **optim.cyclical_schedules(config.cyclical, xi)}
    return cls(steps_per_epoch, total_steps, config.eval_every_epochs * steps_per_epoch,
               schedules)


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a run needs besides its train state, built (and checked) before any compute."""

  config: ml_collections.ConfigDict
  dataset: data_lib.ImageClassificationData
  model: Any
  mesh: jax.sharding.Mesh
  plan: Plan
  tx: optax.GradientTransformation

  @classmethod
  def create(cls, config: ml_collections.ConfigDict | dict) -> "Run":
    """Validates ``config`` and builds the run's parts; raises before any computation."""
    config = config_lib.resolve_config(config)
    dataset = data_lib.get_dataset(config.dataset)
    model = models.get_model(config.model.name, num_classes=dataset.num_classes,
                             dtype=config.model.dtype)
    mesh = sharding.make_data_mesh()
    for key in ("batch_size", "eval_batch_size"):
      sharding.check_batch_size(key, config[key], mesh)
    plan = Plan.create(config, dataset)
    tx = optim.build_optimizer(config.optimizer, learning_rate=plan.schedules["learning_rate"],
                               schedules=plan.schedules)
    return cls(config, dataset, model, mesh, plan, tx)

  @functools.cached_property
  def config_json(self) -> dict[str, Any]:
    """The resolved config as plain JSON data (saved in the workdir and every checkpoint)."""
    return json.loads(self.config.to_json())

  def evaluate(self, eval_step, state) -> dict[str, Any]:
    """Test-set metrics of ``state`` (one pass over the eval set)."""
    totals = None
    for batch in self.dataset.eval_batches(global_batch_size=self.config.eval_batch_size):
      counts = eval_step(state, sharding.shard_batch(batch, self.mesh))
      totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
    totals = jax.device_get(totals)
    summary = metrics_lib.summarize(
        totals["correct"], totals["total"], self.dataset.train_class_counts,
        many_shot_min=self.config.many_shot_min, few_shot_max=self.config.few_shot_max)
    summary["test_accuracy"] = summary.pop("top1_accuracy")
    summary["test_loss"] = float(totals["loss_sum"] / totals["total"].sum())
    return summary

  @functools.cached_property
  def _init(self):
    """The jitted state initialiser and its key."""
    init = jax.jit(functools.partial(state_lib.create_train_state, self.model, self.tx,
                                     image_shape=self.dataset.image_shape),
                   out_shardings=sharding.replicated(self.mesh))
    # RngBitGenerator keys: the init compiles in ~1 s on CPU instead of ~3.5 s with threefry,
    # and is still a pure function of the seed.
    return init, jax.random.key(self.config.seed, impl="rbg")

  def fresh_state(self) -> state_lib.TrainState:
    """The train state at step 0, replicated over the mesh."""
    init, rng = self._init
    return init(rng)

  def initial_state(self, checkpointer: checkpointing.Checkpointer):
    """A fresh train state, or the newest checkpoint's, with its progress record (or {})."""
    latest = checkpointer.latest_step()
    if latest is None:
      return self.fresh_state(), {}
    logging.info("Resuming from checkpoint step %d in %s.", latest, checkpointer.directory)
    init, rng = self._init
    abstract = checkpointing.abstract_like(jax.eval_shape(init, rng),
                                           sharding.replicated(self.mesh))
    return checkpointer.restore(latest, abstract, self.config_json)


def _train(run: Run, state, progress: dict[str, Any], files: reporting.RunFiles,
           checkpointer: checkpointing.Checkpointer, display: reporting.Progress,
           watcher: preemption.PreemptionWatcher):
  """Trains from ``state.step`` to the end (or a preemption), logging and checkpointing.

  Returns:
    ``(step, last_train, last_eval, preempted)``: the final step, the last train-metrics record
    (or None), the eval of the final state (None after a preemption) and whether a preemption
    notice stopped the loop.
  """
  config, plan, mesh = run.config, run.plan, run.mesh
  train_step = steps.jit_train_step(mesh, loss_fn=objective.get_loss_fn(config.loss),
                                    schedules=plan.schedules)
  eval_step = steps.jit_eval_step(mesh, num_classes=run.dataset.num_classes)
  step_rng = jax.random.key(config.seed)
  window = reporting.MetricWindow(progress.get("train_window"))
  last_train, last_eval, preempted = progress.get("last_train"), None, False
  step = int(state.step)
  batches = run.dataset.train_batches(global_batch_size=config.batch_size, seed=config.seed,
                                      start_step=step)
  in_flight = collections.deque()
  while step < plan.total_steps and not preempted:
    state, step_metrics = train_step(state, sharding.shard_batch(next(batches), mesh), step_rng)
    step += 1
    window.add(step_metrics)
    in_flight.append(step_metrics["loss"])
    if len(in_flight) > _MAX_STEPS_IN_FLIGHT:
      in_flight.popleft().block_until_ready()
    display.advance()
    epoch = step / plan.steps_per_epoch
    if step % config.log_every_steps == 0 or step == plan.total_steps:
      means = window.flush()
      last_train = {"step": step, "epoch": epoch, "split": "train", **means}
      files.append_metrics(last_train)
      display.train(step, means)
    if step == plan.total_steps or (plan.eval_every_steps
                                    and step % plan.eval_every_steps == 0):
      last_eval = run.evaluate(eval_step, state)
      files.append_metrics({"step": step, "epoch": epoch, "split": "eval", **last_eval})
      display.eval(step, last_eval)
    preempted = watcher.reached(step) and step < plan.total_steps
    periodic = config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
    if periodic or preempted or step == plan.total_steps:
      checkpointer.save(step, state, {"config": run.config_json,
                                      "train_window": window.snapshot(),
                                      "last_train": last_train})
  if last_eval is None and not preempted:  # resumed from the final checkpoint
    last_eval = run.evaluate(eval_step, state)
  return step, last_train, last_eval, preempted


def train_and_evaluate(config: ml_collections.ConfigDict | dict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates the model of ``config``, writing everything to ``workdir``.

  Args:
    config: a config over the schema of :func:`cfl_jax.training.config.default_config`.
    workdir: gets ``config.json``, ``metrics.jsonl``, ``checkpoints/`` and ``summary.json``; a
      workdir holding checkpoints of the same config is resumed.

  Returns:
    The summary (also written to ``summary.json``): test metrics of the final state, ``loss``
    (mean training objective over the last logging window), ``train_steps``, ``wall_seconds``,
    ``seed`` and run facts. After a preemption (SIGTERM) it returns early with
    ``preempted=True`` and no test metrics, having saved a checkpoint to resume from.

  Raises:
    ConfigError: for a bad config, before any computation.
    CheckpointError: for a corrupted or incompatible checkpoint in ``workdir``.
  """
  started = time.time()
  run = Run.create(config)
  is_writer = jax.process_index() == 0
  files = reporting.RunFiles(workdir, enabled=is_writer)
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                            max_to_keep=run.config.max_to_keep)
  # SIGTERM from here on (compilation included) stops the run after its next step, saved.
  with preemption.PreemptionWatcher() as watcher, contextlib.closing(checkpointer):
    state, progress = run.initial_state(checkpointer)
    start_step = int(state.step)
    files.write_config(run.config_json)
    files.keep_metrics_until(start_step)
    display = reporting.Progress(total_steps=run.plan.total_steps, start_step=start_step,
                                 enabled=is_writer)
    with contextlib.closing(display):
      step, last_train, last_eval, preempted = _train(
          run, state, progress, files, checkpointer, display, watcher)
  summary = {"name": run.config.name, "seed": run.config.seed, "train_steps": step,
             "total_steps": run.plan.total_steps, "steps_per_epoch": run.plan.steps_per_epoch,
             "resumed_from_step": start_step or None, "num_devices": run.mesh.devices.size,
             "num_processes": jax.process_count(), "device_kind": jax.devices()[0].device_kind,
             "loss": last_train["loss"] if last_train else None, "preempted": preempted}
  if preempted:
    logging.warning("Preempted after step %d: checkpoint saved in %s; run again to resume.",
                    step, checkpointer.directory)
    return {**summary, "wall_seconds": time.time() - started}
  summary.update(last_eval, train_class_counts=run.dataset.train_class_counts.tolist(),
                 wall_seconds=time.time() - started)
  files.write_summary(summary)
  return summary
