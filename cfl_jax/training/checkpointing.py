"""Orbax checkpoints of a run: the train state plus a small JSON ``progress`` record.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact and the partial one is never restored. The JSON
record carries the resolved config (checked on resume: a checkpoint written by a different
config is refused) and the host-side state needed to make a resumed run end exactly like an
uninterrupted one (the partially averaged logging window).
"""

from collections.abc import Mapping
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


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
      config: the current resolved config as a dict; it must equal the one saved in ``progress``.

    Returns:
      ``(state, progress)``.

    Raises:
      CheckpointError: if the checkpoint cannot be read, was written by a different config, or
        does not match ``abstract_state``.
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
    differences = _config_differences(saved_config, config)
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
