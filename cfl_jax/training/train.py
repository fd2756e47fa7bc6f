"""The train state, the train and eval steps, and ``train_and_evaluate``: one run, end to end.

Read top to bottom: :class:`TrainState` and :func:`create_train_state`; :func:`train_step` and
:func:`eval_step` with their jitted, sharded forms; :class:`Run` (the parts a config builds);
:func:`train_and_evaluate`, the loop that calls the steps, evaluates, logs and checkpoints.

The run is a pure function of the config: batch ``k`` comes from ``(seed, k)``, and every
schedule (xi, the optimizer's learning rate, weight decay and clipping threshold, the temperature)
is read at ``state.step`` inside the step, so one compiled program serves the whole run. Re-running
with the same workdir therefore resumes from the newest checkpoint and ends exactly as an
uninterrupted run would; a SIGTERM saves a checkpoint and returns early.

Random streams: each consumer folds its own constant of :data:`STREAMS` into the run's key
``jax.random.key(seed)`` (JAX's default implementation, the same bits on every backend), then the
step for the per-step ones: the parameters' initialisation uses ``fold_in(key, 0)``, dropout
``fold_in(fold_in(key, 1), step)`` and mixup ``fold_in(fold_in(key, 2), step)``. No stream is
derived from another, so a model that folds numbers into its dropout key never draws mixup's.
"""

from collections.abc import Callable, Mapping
import collections
import contextlib
import dataclasses
import functools
import json
import time
from typing import Any

from absl import logging
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax

from cfl_jax import data as data_lib
from cfl_jax import metrics as metrics_lib
from cfl_jax import models
from cfl_jax import store
from cfl_jax.training import checkpointing
from cfl_jax.training import compilation_cache
from cfl_jax.training import config as config_lib
from cfl_jax.training import mixup as mixup_lib
from cfl_jax.training import recipe
from cfl_jax.training import reporting
from cfl_jax.training import sharding
from cfl_jax.store import agreement
from cfl_jax.store import fenced
from cfl_jax.store import workdir_lock

Batch = Mapping[str, jax.Array]

#: Purpose -> the constant folded into the run's key for that consumer's random stream.
STREAMS = {"init": 0, "dropout": 1, "mixup": 2}


def stream_key(rng: jax.Array, purpose: str, step: jax.Array | int | None = None) -> jax.Array:
  """The key of ``purpose`` (a :data:`STREAMS` name) from the run's key, at ``step`` if given."""
  key = jax.random.fold_in(rng, STREAMS[purpose])
  return key if step is None else jax.random.fold_in(key, step)


class TrainState(train_state.TrainState):
  """``flax.training.train_state.TrainState`` plus ``batch_stats``, the weights' EMA and the
  count of skipped updates.

  ``batch_stats`` is an empty dict for models without BatchNorm; ``ema`` is
  ``{'params', 'batch_stats'}`` averaged over the steps (``config.ema_decay``), or an empty dict
  when the run keeps no average. ``step`` counts the train steps taken, skipped ones included
  (see :func:`train_step`); ``skipped_updates`` counts those whose update was skipped and
  ``nonfinite_in_a_row`` how many of the latest updates in a row were not finite (int32).
  """

  batch_stats: Any
  ema: Any
  skipped_updates: jax.Array
  nonfinite_in_a_row: jax.Array


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...], *, ema: bool = False,
                       variables: Mapping[str, Any] | None = None) -> TrainState:
  """Initialises ``model`` on a dummy batch of one ``image_shape`` image and wraps it.

  Args:
    model: a Linen classifier called as ``model.apply(variables, images, train=...)``.
    tx: the optimizer (see :func:`recipe.build_optimizer`).
    rng: the parameter-initialisation key.
    image_shape: ``(H, W, C)``.
    ema: keep an exponential moving average of the variables, starting at their initial values.
    variables: ``{'params', 'batch_stats'}`` to start from (e.g. pretrained weights from
      :func:`cfl_jax.models.import_weights`) instead of the initialisation from ``rng``.

  Returns:
    A :class:`TrainState` at step 0. Call it under ``jax.jit`` with ``out_shardings`` to place it
    (see :func:`cfl_jax.training.sharding.replicated`).
  """
  if variables is None:
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  return TrainState.create(apply_fn=model.apply, tx=tx, **variables,
                           ema=variables if ema else {}, skipped_updates=jnp.int32(0),
                           nonfinite_in_a_row=jnp.int32(0))


def _variables(state: TrainState, params) -> dict:
  return {"params": params, "batch_stats": state.batch_stats}


def ema_view(state: TrainState) -> TrainState:
  """``state`` with its averaged variables in place of the raw ones (for evaluation)."""
  return state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"])


def train_step(state: TrainState, batch: Batch, rng: jax.Array, *, loss_fn: recipe.LossFn,
               schedules: Mapping[str, optax.Schedule], ema_decay: float = 0.0,
               mixup: Callable | None = None,
               skip_nonfinite_updates: int = 0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch.

  Args:
    state: the train state; its optimizer comes from :func:`recipe.build_optimizer`.
    batch: ``{'image': [B, H, W, C], 'label': int [B]}``; with a dataset's ``aug_splits``
      views, ``B`` counts every view of every image, each one row of the loss's mean.
    rng: the run's key; dropout and mixup draw from their own streams of it
      (:func:`stream_key` at ``state.step``).
    loss_fn: ``loss_fn(logits, labels, xi) -> [B]`` (see :func:`recipe.get_loss_fn`).
    schedules: ``{'xi': ..., 'learning_rate': ..., and optionally 'temperature', 'weight_decay',
      'grad_clip_norm'}``; each is read at ``state.step`` and returned as a metric. The optimizer's
      hyper-parameters are set from them (:func:`recipe.set_hyperparameters`) and a
      ``'temperature'`` divides the training logits before the loss.
    ema_decay: decay of the weights' moving average, used when ``state.ema`` is kept.
    mixup: optional ``mixup(rng, images, labels) -> (images, probability labels)`` applied to
      the batch before the forward pass (see :mod:`cfl_jax.training.mixup`).
    skip_nonfinite_updates: ``N > 0``: when the loss, the gradient or anything the step would
      write (parameters, ``batch_stats``, EMA, optimizer state) is not finite, the whole state is
      kept as it was, except that ``step`` advances (the batch is used up and every schedule moves
      on) and ``skipped_updates`` counts it; after ``N`` skips in a row such an update is applied,
      so a divergence still shows. 0: every update is applied.

  Returns:
    The new state and ``{'loss', 'accuracy', 'grad_norm', **schedule values}`` (scalars), plus
    the run's ``'skipped_updates'`` so far when skipping non-finite updates. ``loss`` is the mean
    training objective (float32, also under bfloat16 compute); ``accuracy`` is measured on the
    unscaled logits.
  """
  hyper = {name: schedule(state.step) for name, schedule in schedules.items()}
  dropout_rng = stream_key(rng, "dropout", state.step)
  images, targets = batch["image"], batch["label"]
  if mixup is not None:
    images, targets = mixup(stream_key(rng, "mixup", state.step), images, targets)

  def objective(params):
    logits, updates = state.apply_fn(
        _variables(state, params), images, train=True, mutable=["batch_stats"],
        rngs={"dropout": dropout_rng})
    logits = logits.astype(jnp.float32)
    scaled = logits / hyper["temperature"] if "temperature" in hyper else logits
    loss = jnp.mean(loss_fn(scaled, targets, hyper["xi"]))
    return loss, (logits, updates.get("batch_stats", state.batch_stats))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
      state.params)
  new_state = state.replace(opt_state=recipe.set_hyperparameters(state.opt_state, hyper))
  new_state = new_state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if state.ema:
    new_state = new_state.replace(ema=optax.incremental_update(
        _variables(new_state, new_state.params), state.ema, step_size=1.0 - ema_decay))
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == batch["label"])
  metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads), **hyper}
  if skip_nonfinite_updates:
    new_state = _unless_nonfinite(state, new_state, (loss, grads), skip_nonfinite_updates)
    metrics["skipped_updates"] = new_state.skipped_updates
  return new_state, metrics


def _unless_nonfinite(state: TrainState, updated: TrainState, measured, limit: int
                      ) -> TrainState:
  """``updated``, or ``state`` one step on when ``measured`` or ``updated`` is not finite (up
  to ``limit`` times in a row); the skip counters updated."""
  finite = _tree_finite((measured, updated))
  in_a_row = jnp.where(finite, 0, state.nonfinite_in_a_row + 1)
  apply = finite | (in_a_row > limit)
  kept = state.replace(step=updated.step)
  return optax.tree.where(apply, updated, kept).replace(
      skipped_updates=state.skipped_updates + jnp.where(apply, 0, 1), nonfinite_in_a_row=in_a_row)


def _tree_finite(tree) -> jax.Array:
  """True when every floating-point leaf of ``tree`` is finite."""
  leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
            if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def eval_step(state: TrainState, batch: Batch, *, num_classes: int) -> dict[str, jax.Array]:
  """Per-class counts and summed cross-entropy of a padded eval batch.

  Args:
    state: the train state (BatchNorm in inference mode).
    batch: ``{'image', 'label', 'mask': bool [B]}``; masked rows are padding.
    num_classes: length of the count vectors.

  Returns:
    A dict of counts, additive over batches, with ``correct`` and ``total`` (``[C]``),
    ``loss_sum`` (a scalar) and ``bin_count``, ``bin_confidence_sum``, ``bin_correct`` (``[15]``,
    the top-1 confidence histogram of the expected calibration error).
  """
  logits = state.apply_fn(_variables(state, state.params), batch["image"], train=False)
  logits = logits.astype(jnp.float32)
  counts = metrics_lib.class_counts(logits, batch["label"], num_classes, where=batch["mask"])
  calibration = metrics_lib.calibration_counts(logits, batch["label"], where=batch["mask"])
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return {**counts, **calibration,
          "loss_sum": jnp.sum(jnp.where(batch["mask"], cross_entropy, 0.0))}


def jit_train_step(mesh: jax.sharding.Mesh, *, loss_fn: recipe.LossFn,
                   schedules: Mapping[str, optax.Schedule], ema_decay: float = 0.0,
                   mixup: Callable | None = None, skip_nonfinite_updates: int = 0) -> Callable:
  """``train_step`` jitted for ``mesh``: state and rng replicated, batch sharded, state donated."""
  replicated, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return jax.jit(functools.partial(train_step, loss_fn=loss_fn, schedules=dict(schedules),
                                   ema_decay=ema_decay, mixup=mixup,
                                   skip_nonfinite_updates=skip_nonfinite_updates),
                 in_shardings=(replicated, batched, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def jit_eval_step(mesh: jax.sharding.Mesh, *, num_classes: int) -> Callable:
  """``eval_step`` jitted for ``mesh``: state replicated, batch sharded, counts replicated."""
  replicated = sharding.replicated(mesh)
  return jax.jit(functools.partial(eval_step, num_classes=num_classes),
                 in_shardings=(replicated, sharding.batch_sharded(mesh)),
                 out_shardings=replicated)


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a run needs besides its train state, built (and checked) before any compute."""

  config: ml_collections.ConfigDict
  dataset: data_lib.ImageClassificationData
  model: Any
  mesh: jax.sharding.Mesh
  plan: recipe.Plan
  tx: optax.GradientTransformation

  @classmethod
  def create(cls, config: ml_collections.ConfigDict | dict) -> "Run":
    """Validates ``config`` and builds the run's parts; raises before any computation."""
    config = config_lib.resolve_config(config)
    try:
      dataset = data_lib.get_dataset(config.dataset)
      model = models.get_model(config.model.name, num_classes=dataset.num_classes,
                               dtype=config.model.dtype, feature_dim=config.model.feature_dim)
      mesh = sharding.make_data_mesh()
      for key in ("batch_size", "eval_batch_size"):
        sharding.check_batch_size(key, config[key], mesh)
      store.retry_budget()  # a bad CFL_JAX_STORE_RETRY_SECONDS stops the run here
      if config.mixup_alpha:  # mixup pairs the rows of a device: every view of its images
        mixup_lib.check_rows_per_shard(
            config.batch_size * dataset.aug_splits, mesh.shape[sharding.DATA_AXIS],
            name="batch_size" if dataset.aug_splits == 1 else "batch_size x dataset.aug_splits")
      plan = recipe.Plan.create(config,
                                steps_per_epoch=dataset.steps_per_epoch(config.batch_size))
      if config.model.init_from:
        _check_weights_file(config.model)
    except ValueError as error:  # bad values the schema cannot see alone (data, model, mesh)
      raise config_lib.ConfigError(f"Invalid training config:\n  - {error}") from error
    return cls(config, dataset, model, mesh, plan, plan.optimizer(config.optimizer))

  @functools.cached_property
  def config_json(self) -> dict[str, Any]:
    """The resolved config as plain JSON data (saved in the workdir and every checkpoint)."""
    return json.loads(self.config.to_json())

  def mixup(self) -> Callable | None:
    """The train step's mixup function (``config.mixup_alpha``), or None; it pairs rows within
    each device's shard of the batch."""
    if not self.config.mixup_alpha:
      return None
    return functools.partial(mixup_lib.mixup, alpha=self.config.mixup_alpha,
                             num_classes=self.dataset.num_classes,
                             num_shards=self.mesh.shape[sharding.DATA_AXIS])

  @functools.cached_property
  def validation(self) -> data_lib.ImageClassificationData | None:
    """The dataset's validation split, evaluated beside the test set to select an epoch, or None
    (see :meth:`~cfl_jax.data.ImageClassificationData.validation_data`)."""
    return self.dataset.validation_data()

  def evaluate(self, eval_step_fn, state) -> dict[str, Any]:
    """Test-set metrics of ``state``; ``ema_test_accuracy`` / ``ema_test_loss`` of its averaged
    weights when it has them; ``validation_accuracy`` / ``validation_loss`` (of the raw weights)
    when the dataset has a validation split."""
    summary = self._evaluate_once(eval_step_fn, state, self.dataset)
    if state.ema:
      ema = self._evaluate_once(eval_step_fn, ema_view(state), self.dataset)
      summary.update(ema_test_accuracy=ema["test_accuracy"], ema_test_loss=ema["test_loss"])
    if self.validation is not None:
      validation = self._evaluate_once(eval_step_fn, state, self.validation)
      summary.update(validation_accuracy=validation["test_accuracy"],
                     validation_loss=validation["test_loss"])
    return summary

  def _evaluate_once(self, eval_step_fn, state,
                     dataset: data_lib.ImageClassificationData) -> dict[str, Any]:
    """Metrics of ``state`` on the eval set of ``dataset`` (one pass over it)."""
    totals = None
    for batch in dataset.eval_batches(global_batch_size=self.config.eval_batch_size):
      counts = eval_step_fn(state, sharding.shard_batch(batch, self.mesh))
      totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
    totals = jax.device_get(totals)
    summary: dict[str, Any] = metrics_lib.summarize(
        totals["correct"], totals["total"], self.dataset.train_class_counts,
        many_shot_min=self.config.many_shot_min, few_shot_max=self.config.few_shot_max)
    summary["test_accuracy"] = summary.pop("top1_accuracy")
    summary["test_loss"] = float(totals["loss_sum"] / totals["total"].sum())
    summary["expected_calibration_error"] = metrics_lib.expected_calibration_error(totals)
    summary["reliability"] = metrics_lib.reliability_bins(totals)
    return summary

  @functools.cached_property
  def key(self) -> jax.Array:
    """The run's key, root of every random stream (see :data:`STREAMS`)."""
    return jax.random.key(self.config.seed)

  @functools.cached_property
  def _init(self):
    """The jitted state initialiser and its key."""
    init = jax.jit(functools.partial(create_train_state, self.model, self.tx,
                                     image_shape=self.dataset.image_shape,
                                     ema=self.config.ema_decay > 0),
                   out_shardings=sharding.replicated(self.mesh))
    if self.config.init_key == "rbg_v0":
      return init, jax.random.key(self.config.seed, impl="rbg")
    return init, stream_key(self.key, "init")

  def fresh_state(self) -> TrainState:
    """The train state at step 0, replicated over the mesh; from ``model.init_from`` if set."""
    init, rng = self._init
    if not self.config.model.init_from:
      return init(rng)
    with agreement.together(f"reading {self.config.model.init_from}",
                            errors=(store.StoreUnavailable, FileNotFoundError)):
      variables = models.import_weights(
          self.config.model.name, self.config.model.init_from,
          num_classes=self.dataset.num_classes, seed=self.config.seed,
          feature_dim=self.config.model.feature_dim)
    logging.info("Initialised %s from %s.", self.config.model.name, self.config.model.init_from)
    return init(rng, variables=variables)

  def initial_state(self, checkpointer: checkpointing.Checkpointer):
    """A fresh train state, or the newest intact checkpoint's, with its progress record (or
    {})."""
    init, rng = self._init
    abstract = checkpointing.abstract_like(jax.eval_shape(init, rng),
                                           sharding.replicated(self.mesh))
    restored = checkpointer.restore_latest(abstract, self.config_json)
    if restored is None:
      return self.fresh_state(), {}
    logging.info("Resumed from checkpoint step %d in %s.", int(restored[0].step),
                 checkpointer.directory)
    return restored


def _check_weights_file(model_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for ``model.init_from`` on a model without importable weights, or a
  missing file (saying where the model's weights are published)."""
  name, path = model_config.name, model_config.init_from
  if name not in models.IMPORTABLE_MODELS:
    raise ValueError(f"model.init_from is set, but {name!r} has no weights naming; importable "
                     f"models: {', '.join(models.IMPORTABLE_MODELS)}.")
  if not store.as_path(path).is_file():
    raise ValueError(f"model.init_from={path!r} is not a file; {name}'s ImageNet weights are "
                     f"{models.WEIGHTS_SOURCES[name]}.")


class TrainingDiverged(RuntimeError):
  """The training loss, gradient or parameters stopped being finite; the run was stopped."""


_all_finite = jax.jit(_tree_finite)


def _divergence(record: Mapping[str, Any], state: TrainState, skip_limit: int) -> str | None:
  """Why the run has diverged by the end of a logged train window, or None.

  Without skipping, any non-finite loss or gradient norm in the window is divergence; with
  ``optimizer.skip_nonfinite_updates=N``, more than ``N`` non-finite updates in a row are (from
  there on :func:`train_step` applies them, so the count only grows).
  """
  nonfinite = record.get("nonfinite_steps", 0)
  if not skip_limit:
    return (f"{' and '.join(record['nonfinite_metrics'])} not finite in {nonfinite} of the "
            "logging window's steps") if nonfinite else None
  in_a_row = int(state.nonfinite_in_a_row)
  if in_a_row > skip_limit:
    return (f"the last {in_a_row} updates were not finite, more than "
            f"optimizer.skip_nonfinite_updates={skip_limit} in a row")
  return None


def _max_steps_in_flight() -> int | None:
  """Steps dispatched ahead of the host: bounded on CPU only.

  XLA:CPU's in-process collectives can deadlock when hundreds of multi-device steps are queued
  (seen with jax 0.10 on 2 cores); GPU and TPU dispatch runs ahead as usual.
  """
  return 2 if jax.default_backend() == "cpu" else None


def _train(run: Run, state, progress: dict[str, Any], files: reporting.RunFiles,
           checkpointer: checkpointing.Checkpointer, display: reporting.Progress,
           watcher: checkpointing.PreemptionWatcher, clock: "_WallClock",
           lock: workdir_lock.WorkdirLock, best: reporting.BestMetrics):
  """Trains from ``state.step`` to the end (or a preemption), logging and checkpointing;
  every evaluation updates ``best``, which each checkpoint keeps.

  Returns:
    ``(step, last_train, last_eval, preempted)``: the final step, the last train-metrics record
    (or None), the eval of the final state (None after a preemption) and whether a preemption
    notice stopped the loop.

  Raises:
    TrainingDiverged: at the first logging window with a non-finite loss or gradient norm, or
      with ``optimizer.skip_nonfinite_updates=N`` more than ``N`` in a row; or before saving a
      non-finite state.
    CheckpointSaveError: as soon as a checkpoint could not be written.
    WorkdirLockLost: before a checkpoint, when another run has taken the workdir over.
    StoreUnavailable: when the run files cannot be uploaded before a checkpoint (the store
      stayed unreachable past the retry budget); that checkpoint is not saved.
  """
  config, plan, mesh = run.config, run.plan, run.mesh
  train_step_fn = jit_train_step(mesh, loss_fn=recipe.get_loss_fn(config.loss),
                                 schedules=plan.schedules, ema_decay=config.ema_decay,
                                 mixup=run.mixup(),
                                 skip_nonfinite_updates=config.optimizer.skip_nonfinite_updates)
  eval_step_fn = jit_eval_step(mesh, num_classes=run.dataset.num_classes)
  window = reporting.MetricWindow(progress.get("train_window"))
  last_train, last_eval, preempted = progress.get("last_train"), None, False
  step = int(state.step)
  batches = run.dataset.train_batches(global_batch_size=config.batch_size, seed=config.seed,
                                      start_step=step)
  in_flight: collections.deque[jax.Array] = collections.deque()
  max_in_flight = _max_steps_in_flight()
  views, first_step = run.dataset.aug_splits, step
  while step < plan.total_steps and not preempted:
    batch = sharding.shard_batch(next(batches), mesh, views=views)
    if step == first_step:
      logging.info("Each step trains on %d rows (batch_size %d x %d view(s) per image), "
                   "images %s.", batch["label"].shape[0], config.batch_size, views,
                   batch["image"].shape)
    state, step_metrics = train_step_fn(state, batch, run.key)
    step += 1
    window.add(step_metrics)
    if max_in_flight is not None:
      in_flight.append(step_metrics["loss"])
      if len(in_flight) > max_in_flight:
        in_flight.popleft().block_until_ready()
    display.advance()
    epoch = step / plan.steps_per_epoch
    logged = step % config.log_every_steps == 0 or step == plan.total_steps
    checkpointer.check_for_errors(all_processes=logged)  # with several, where all meet
    if logged:
      means = window.flush()
      last_train = {"step": step, "epoch": epoch, "split": "train", **means}
      files.append_metrics(last_train)
      display.train(step, means)
      problem = _divergence(means, state, config.optimizer.skip_nonfinite_updates)
      if problem:
        raise TrainingDiverged(f"Training diverged by step {step}: {problem}. "
                               f"{checkpointer.describe_latest()}")
    if step == plan.total_steps or (plan.eval_every_steps
                                    and step % plan.eval_every_steps == 0):
      last_eval = run.evaluate(eval_step_fn, state)
      record = {"step": step, "epoch": epoch, "split": "eval", **last_eval}
      files.append_metrics(record)
      best.update(record)
      files.append_best(step, best)
      display.eval(step, last_eval)
    preempted = watcher.reached(step) and step < plan.total_steps
    periodic = config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
    if periodic or preempted or step == plan.total_steps:
      if not _all_finite(state):  # a non-finite state is never saved
        raise TrainingDiverged(f"Training diverged by step {step}: the parameters or optimizer "
                               f"state are not finite. {checkpointer.describe_latest()}")
      lock.check()
      with agreement.together(f"uploading the run files of step {step}"):
        files.sync()  # the records up to `step` are in the workdir before its checkpoint exists
      checkpointer.save(step, state, {"config": run.config_json,
                                      "train_window": window.snapshot(),
                                      "last_train": last_train,
                                      "best": best.snapshot(),
                                      "wall_seconds": clock.total()})
  if last_eval is None and not preempted:  # resumed from the final checkpoint (best has it)
    last_eval = run.evaluate(eval_step_fn, state)
  return step, last_train, last_eval, preempted


class _WallClock:
  """Wall time of a run across resumes: the time recorded before plus this session's."""

  def __init__(self, before: float, started: float):
    self.before, self.started = before, started

  def total(self) -> float:
    return self.before + time.time() - self.started


def train_and_evaluate(config: ml_collections.ConfigDict | dict,
                       workdir: store.PathLike) -> dict[str, Any]:
  """Trains and evaluates the model of ``config``, writing everything to ``workdir``.

  Args:
    config: a config over the schema of :func:`cfl_jax.training.config.default_config`.
    workdir: a local directory or a bucket (``gs://...``; see :mod:`cfl_jax.store`); gets
      ``config.json``, ``metrics.jsonl``, ``tensorboard/``, ``checkpoints/``, ``summary.json``
      and, by default, ``compilation_cache/`` (see :mod:`cfl_jax.training.compilation_cache`);
      a workdir holding checkpoints of the same config is resumed. It is locked for the run
      (:mod:`cfl_jax.store.workdir_lock`): a second run in the same workdir stops at once.

  Returns:
    The summary (also written to ``summary.json``, strict JSON): ``status`` (``'completed'``),
    test metrics of the final state (and ``ema_test_accuracy`` / ``ema_test_loss`` of its
    averaged weights when ``ema_decay > 0``, ``validation_accuracy`` / ``validation_loss`` when
    the dataset has a validation split); the best evaluation of the run
    (:class:`~cfl_jax.training.reporting.BestMetrics`): ``best_test_accuracy`` with
    ``best_epoch`` and ``best_step``, the same for ``best_ema_test_accuracy`` with an EMA, and
    with a validation split ``best_validation_accuracy``, its epoch and step and the test
    metrics of that evaluation (``test_accuracy_at_best_validation``, ...); ``loss`` (mean
    training objective over the last logging window), ``train_steps``, ``wall_seconds`` (all
    sessions of a resumed run), ``session_wall_seconds``, ``seed`` and run facts. After a
    preemption (SIGTERM) it returns early with ``status='preempted'``, no test metrics of the
    final state and the best ones so far, having saved a checkpoint to resume from.

  Raises:
    ConfigError: for a bad config, before any computation.
    WorkdirLocked: when another run holds ``workdir``.
    WorkdirLockLost: when another run took ``workdir`` over (the run stops before its next
      checkpoint and writes nothing more there).
    CheckpointError: for an incompatible checkpoint in ``workdir`` (damaged ones are moved aside
      and the newest intact one is resumed).
    CheckpointSaveError: when a checkpoint cannot be written (the run stops at once).
    StoreUnavailable: when a bucket workdir stays unreachable past the retry budget
      (:data:`cfl_jax.store.RETRY_SECONDS`); running again resumes from the newest checkpoint.
    TrainingDiverged: when the loss, gradients or parameters stop being finite; ``summary.json``
      then records ``status='diverged'`` and the reason, and no non-finite checkpoint exists.
  """
  session_started = time.time()
  run = Run.create(config)
  store.use_runner_clients()  # the tested gcsfs and TensorStore configuration, before any I/O
  is_writer = jax.process_index() == 0
  with (workdir_lock.WorkdirLock(workdir, enabled=is_writer) as lock,
        fenced.fencing_requests(lock.fence),  # orbax's own gcsfs writes too
        compilation_cache.persistent_compilation_cache(run.config.compilation_cache, workdir,
                                                       lock.fence)):
    return _train_and_evaluate_locked(run, workdir, is_writer, session_started, lock)


def _train_and_evaluate_locked(run: Run, workdir: store.PathLike, is_writer: bool,
                               session_started: float,
                               lock: workdir_lock.WorkdirLock) -> dict[str, Any]:
  # Each phase in which one process may fail alone ends on every process alike (see
  # cfl_jax.store.agreement): none is left waiting for the others in a collective.
  with agreement.together(f"creating the workdir {workdir}"):
    files = reporting.RunFiles(workdir, enabled=is_writer, fence=lock.fence)
  checkpointer = checkpointing.Checkpointer(store.as_path(workdir) / "checkpoints",
                                            max_to_keep=run.config.max_to_keep, fence=lock.fence)
  summary = {"name": run.config.name, "seed": run.config.seed,
             "total_steps": run.plan.total_steps, "steps_per_epoch": run.plan.steps_per_epoch,
             "num_devices": run.mesh.devices.size, "num_processes": jax.process_count(),
             "device_kind": jax.devices()[0].device_kind}
  # SIGTERM from here on (compilation included) stops the run after its next step, saved.
  with (checkpointing.PreemptionWatcher() as watcher, contextlib.closing(checkpointer),
        _closed_together(files, workdir)):
    state, progress = run.initial_state(checkpointer)
    start_step = int(state.step)
    clock = _WallClock(progress.get("wall_seconds", 0.0), session_started)
    summary["resumed_from_step"] = start_step or None
    with agreement.together(f"writing the run files in {workdir}"):
      files.write_config(run.config_json)
      kept_records = files.keep_metrics_until(start_step)
    # A checkpoint written before the best metrics were kept in it: rebuilt from the records.
    best = (reporting.BestMetrics(progress["best"]) if "best" in progress
            else reporting.BestMetrics.from_records(kept_records))
    display = reporting.Progress(total_steps=run.plan.total_steps, start_step=start_step,
                                 enabled=is_writer)
    try:
      with contextlib.closing(display):
        step, last_train, last_eval, preempted = _train(
            run, state, progress, files, checkpointer, display, watcher, clock, lock, best)
    except workdir_lock.WorkdirLockLost:
      files.abandon()  # the workdir is another run's now
      raise
    except TrainingDiverged as error:
      with agreement.together(f"writing the summary in {workdir}"):
        files.write_summary({**summary, **best.summary(), "status": "diverged",
                             "error": str(error), "wall_seconds": clock.total(),
                             "session_wall_seconds": time.time() - session_started})
      raise
  summary.update(train_steps=step, loss=last_train["loss"] if last_train else None,
                 skipped_updates=(last_train or {}).get("skipped_updates"),
                 wall_seconds=clock.total(), session_wall_seconds=time.time() - session_started)
  if preempted:
    logging.warning("Preempted after step %d: checkpoint saved in %s; run again to resume.",
                    step, checkpointer.directory)
    return {**summary, **best.summary(), "status": "preempted", "preempted": True}
  summary.update(last_eval, **best.summary(), status="completed", preempted=False,
                 train_class_counts=run.dataset.train_class_counts.tolist())
  with agreement.together(f"writing the summary in {workdir}"):
    files.write_summary(summary)
  return summary


@contextlib.contextmanager
def _closed_together(files: reporting.RunFiles, workdir: store.PathLike):
  """Closes ``files`` on leaving (process 0 uploads them a last time), as a phase every process
  ends alike."""
  try:
    yield files
  finally:
    with agreement.together(f"uploading the run files to {workdir}"):
      files.close()
