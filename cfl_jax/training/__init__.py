"""Training: a Flax train state, sharded jitted steps, orbax checkpoints and the run loop.

One job per module, in the order a run uses them:

* ``config``: the config schema (every key, its default: the digits job) and validation.
* ``recipe``: what the config asks for: the loss by name, the xi / learning-rate / cyclical
  schedules, the optimizer, and the run's durations in steps (``Plan``).
* ``train``: ``TrainState``, ``train_step`` / ``eval_step`` and their jitted, sharded forms, and
  ``train_and_evaluate(config, workdir)``, the loop that calls them. Start reading here.
* ``mixup``: mixup within each device's shard of the batch (probability labels), called by the
  train step.
* ``sharding``: the ``('data',)`` mesh, shardings, global batches from host-local data, CPU devices.
* ``checkpointing``: orbax checkpoints and preemption (SIGTERM) handling.
* ``reporting``: workdir files (JSON, metrics.jsonl, TensorBoard), metric window, the best
  evaluation, progress.
* ``compilation_cache``: JAX's persistent compilation cache of a run (default: in its workdir).
"""

from cfl_jax import _extras

_extras.require("cfl_jax.training", "train", ["flax", "orbax.checkpoint", "ml_collections",
                                                "absl", "tqdm", "tensorboardX", "etils"])

# pylint: disable=g-import-not-at-top,wrong-import-position
from cfl_jax.store import StoreUnavailable
from cfl_jax.training.checkpointing import CheckpointError
from cfl_jax.training.checkpointing import CheckpointSaveError
from cfl_jax.training.config import ConfigError
from cfl_jax.training.config import default_config
from cfl_jax.training.config import resolve_config
from cfl_jax.training.recipe import LOSS_NAMES
from cfl_jax.training.recipe import get_loss_fn
from cfl_jax.store.workdir_lock import WorkdirLocked
from cfl_jax.store.workdir_lock import WorkdirLockLost
from cfl_jax.training.train import TrainState
from cfl_jax.training.train import TrainingDiverged
from cfl_jax.training.train import create_train_state
from cfl_jax.training.train import eval_step
from cfl_jax.training.train import train_and_evaluate
from cfl_jax.training.train import train_step

__all__ = [
    "LOSS_NAMES",
    "CheckpointError",
    "CheckpointSaveError",
    "ConfigError",
    "StoreUnavailable",
    "TrainState",
    "TrainingDiverged",
    "WorkdirLockLost",
    "WorkdirLocked",
    "create_train_state",
    "default_config",
    "eval_step",
    "get_loss_fn",
    "resolve_config",
    "train_and_evaluate",
    "train_step",
]
