"""Training: a Flax train state, sharded jitted steps, orbax checkpoints and the run loop.

One job per module, in the order a run uses them:

* ``config``: the config schema (every key, its default) and validation before any compute.
* ``objective``: losses picked by name; the xi schedule.
* ``optim``: optimizer, learning-rate schedule, cyclical weight decay / clipping / temperature.
* ``state``: ``TrainState`` with ``batch_stats``; ``create_train_state``.
* ``steps``: ``train_step`` / ``eval_step`` and their jitted, sharded forms.
* ``sharding``: the ``('data',)`` mesh, shardings and global batches from host-local data.
* ``checkpointing`` and ``preemption``: orbax checkpoints, SIGTERM handling.
* ``reporting``: workdir files, metric window, progress bar or log lines.
* ``loop``: ``train_and_evaluate(config, workdir)``.
"""

from cfl_jax.training.checkpointing import CheckpointError
from cfl_jax.training.config import ConfigError
from cfl_jax.training.config import default_config
from cfl_jax.training.config import resolve_config
from cfl_jax.training.loop import train_and_evaluate
from cfl_jax.training.objective import LOSS_NAMES
from cfl_jax.training.objective import get_loss_fn
from cfl_jax.training.state import TrainState
from cfl_jax.training.state import create_train_state
from cfl_jax.training.steps import eval_step
from cfl_jax.training.steps import train_step

__all__ = [
    "LOSS_NAMES",
    "CheckpointError",
    "ConfigError",
    "TrainState",
    "create_train_state",
    "default_config",
    "eval_step",
    "get_loss_fn",
    "resolve_config",
    "train_and_evaluate",
    "train_step",
]
