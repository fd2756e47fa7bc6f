"""Orbax checkpoints of a run, and preemption notices turned into a saved, clean stop.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact and the partial one is never restored. The JSON
``progress`` record beside the state carries the resolved config (checked on resume: a
checkpoint written with different :data:`TRAJECTORY_KEYS` is refused) and the host-side state
needed to make a resumed run end exactly like an uninterrupted one (the partially averaged
logging window).

Preemption (SIGTERM, as on TPU VMs and most schedulers): with one process a signal handler sets
a flag that the loop reads after each step; with several (after ``jax.distributed.initialize()``)
JAX's preemption sync manager receives the SIGTERM and agrees across hosts on one step at which
every process stops, so all of them save the same step.
"""

from collections.abc import Mapping
import os
import signal
import threading
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

# Config keys that do not change the training trajectory: they may differ on resume (the new
# values apply from there on, and the differences are logged). Every other key must match.
NON_TRAJECTORY_KEYS = frozenset({
    "name", "eval_batch_size", "eval_every_epochs", "log_every_steps",
    "checkpoint_every_steps", "max_to_keep", "many_shot_min", "few_shot_max",
})


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be used: corrupted, or written by another config/model."""


def _config_differences(saved: Mapping, current: Mapping, path: str = "") -> list[str]:
  """``'key: saved -> current'`` for every key whose value differs between two config dicts."""
  differences = []
  for key in sorted(set(saved) | set(current)):
    old, new = saved.get(key, "<missing>"), current.get(key, "<missing>")
    if isinstance(old, Mapping) and isinstance(new, Mapping):
      differences += _config_differences(old, new, f"{path}{key}.")
    elif old != new:
      differences.append(f"{path}{key}: {old!r} -> {new!r}")
  return differences


class Checkpointer:
  """Saves and restores ``(state, progress)`` pairs under one directory.

  Every process must call :meth:`save` and :meth:`restore` (orbax coordinates multi-host writes).

  Args:
    directory: where the step directories go (created if missing).
    max_to_keep: most recent checkpoints kept on disk.
  """

  def __init__(self, directory: str, *, max_to_keep: int):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "progress"))

  def latest_step(self) -> int | None:
    """The newest completely written step, or None if there is none."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, progress: Mapping[str, Any]) -> None:
    """Starts saving ``state`` and the JSON-serialisable ``progress`` as ``step``.

    Writing continues in the background; the device arrays are copied before this returns, so
    ``state`` may be donated right after.
    """
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(dict(progress))))

  def restore(self, step: int, abstract_state: Any,
              config: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Restores checkpoint ``step`` into the structure, shapes and shardings of ``abstract_state``.

    Args:
      step: a step listed by the manager (e.g. :meth:`latest_step`).
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` with shardings (see ``jax.eval_shape``).
      config: the current resolved config as a dict; its trajectory keys must equal the saved
        ones.

    Returns:
      ``(state, progress)``.

    Raises:
      CheckpointError: if the checkpoint cannot be read, was written with different
        trajectory keys (any key but :data:`NON_TRAJECTORY_KEYS`), or does not match
        ``abstract_state``.
    """
    where = os.path.join(self.directory, str(step))
    advice = ("Restore the original config, or start afresh in a new workdir (or delete "
              f"{self.directory}).")
    try:
      progress = self._manager.restore(
          step, args=ocp.args.Composite(progress=ocp.args.JsonRestore())).progress
      saved_config = progress["config"]
    except Exception as error:  # orbax raises many types; all mean the same here
      raise CheckpointError(
          f"Checkpoint {where} is unreadable (corrupted or not written by cfl_jax): "
          f"{error}. {advice}") from error
    differences = _config_differences(
        {k: v for k, v in saved_config.items() if k not in NON_TRAJECTORY_KEYS},
        {k: v for k, v in config.items() if k not in NON_TRAJECTORY_KEYS})
    changed = _config_differences(
        {k: v for k, v in saved_config.items() if k in NON_TRAJECTORY_KEYS},
        {k: v for k, v in config.items() if k in NON_TRAJECTORY_KEYS})
    if changed:
      logging.info("Resuming with changed reporting keys (the trajectory is unaffected): %s",
                   "; ".join(changed))
    if differences:
      raise CheckpointError(
          f"Checkpoint {where} was written by a different config; differing keys:\n  "
          + "\n  ".join(differences) + f"\n{advice}")
    try:
      state = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))).state
    except Exception as error:  # orbax raises many types; all mean the same here
      raise CheckpointError(
          f"Checkpoint {where} does not hold a train state matching this model and optimizer "
          f"(corrupted or incompatible): {error}. {advice}") from error
    return state, progress

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """``jax.ShapeDtypeStruct`` leaves with ``sharding``, for :meth:`Checkpointer.restore`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class PreemptionWatcher:
  """Context manager answering "stop after this step?" once a preemption notice arrived.

  Examples:
    >>> with PreemptionWatcher() as watcher:
    ...   watcher.reached(0)
    False
  """

  def __init__(self):
    self._notified = False
    self._previous_handler = None

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received signal %d: stopping after this step to save a checkpoint.", signum)
    self._notified = True

  def __enter__(self) -> "PreemptionWatcher":
    if jax.process_count() > 1:
      return self  # JAX's preemption sync manager owns SIGTERM; a Python handler would replace it
    if threading.current_thread() is threading.main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM, self._handle)
    else:
      logging.warning("Not on the main thread: SIGTERM will not trigger a checkpoint.")
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  def reached(self, step: int) -> bool:
    """True when the run should save and stop after ``step`` (call it after every step)."""
    return self._notified or multihost_utils.reached_preemption_sync_point(step)
