"""Orbax checkpoints of a run, and preemption notices turned into a saved, clean stop.

Orbax writes each step to a temporary directory and renames it when complete (on an object store,
where there is no rename, it writes a commit marker last), so a run killed mid-save leaves the
previous checkpoint intact and the partial one is never restored. The directory may be local or in
a bucket (``gs://``); every process of a multi-host run writes its shards into it. The JSON
``progress`` record beside the state carries the resolved config (checked on resume: a
checkpoint whose trajectory keys, all but :data:`NON_TRAJECTORY_KEYS`, differ is refused) and
the host-side state needed to make a resumed run end exactly like an uninterrupted one (the
partially averaged logging window).

Reading a checkpoint retries transient store errors (:func:`cfl_jax.store.retrying`): a
checkpoint is set aside as damaged only when its bytes were read and do not decode or a part of
it is missing, never because the store or the machine failed (unreachable, timed out,
unauthorised, forbidden, out of memory: :func:`cfl_jax.store.failure_cause`), and all processes
of a run agree on that verdict.

Fencing: the commit of every step (orbax's rename, or its commit marker in a bucket) and the
deletion of old steps go through the run's fence (:mod:`cfl_jax.store.fenced`). A save still
being written when the run's lease runs out is therefore never committed, and the clean-up
beyond ``max_to_keep`` (done here, not by orbax) deletes only steps this run knows: those listed
when it started and those it committed itself, never a step another run wrote since.

Preemption (SIGTERM, as on TPU VMs and most schedulers): with one process a signal handler sets
a flag that the loop reads after each step; with several (after ``jax.distributed.initialize()``)
JAX's preemption sync manager receives the SIGTERM and agrees across hosts on one step at which
every process stops, so all of them save the same step.
"""

from collections.abc import Mapping
import os
import re
import signal
import threading
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.path import atomicity_defaults

from cfl_jax import store
from cfl_jax.store import agreement
from cfl_jax.store import fenced
from cfl_jax.store import workdir_lock

#: Config keys that do not change the training trajectory. They may differ on resume (the new
#: values apply from there on, and the differences are logged); every other key must match.
NON_TRAJECTORY_KEYS = frozenset({
    "name", "eval_batch_size", "eval_every_epochs", "log_every_steps",
    "checkpoint_every_steps", "max_to_keep", "many_shot_min", "few_shot_max",
    "compilation_cache",
})


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be used: corrupted, or written by another config/model."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (full disk, no permission, ...); the run must stop."""


def _root_cause(error: BaseException) -> str:
  """The first line of the operating-system error behind ``error`` (orbax and TensorStore wrap
  them), else of its message."""
  for cause in store.error_chain(error):
    if isinstance(cause, OSError):
      return (str(cause).strip().splitlines() or [type(cause).__name__])[0]
  message = str(error).strip()
  # TensorStore appends the code as a payload, in no fixed order among its others (the spec's
  # JSON among them): the code is read, and its description is the operating system's own.
  tensorstore = re.search(r"\[os_error_code='(\d+)'\]", message)
  if tensorstore:
    code = int(tensorstore.group(1))
    return f"[Errno {code}] {os.strerror(code)}"
  return (message.splitlines() or [type(error).__name__])[0]


class _DamagedCheckpoint(CheckpointError):
  """A checkpoint that was read and cannot be decoded; :meth:`Checkpointer.restore_latest`
  skips it."""


# How often the processes of a run compare their saves while waiting for them to finish.
_SAVE_POLL_SECONDS = 0.1
# A process's verdict on a checkpoint, in increasing severity: the worst one is applied by all.
_INTACT, _DAMAGED, _UNAVAILABLE = 0, 1, 2


def _verdict(problem: BaseException | None) -> int:
  if problem is None:
    return _INTACT
  return _UNAVAILABLE if isinstance(problem, store.StoreUnavailable) else _DAMAGED


def _worst_of_all_processes(verdict: int) -> int:
  """The most severe of every process's ``verdict`` (each process passes its own)."""
  if jax.process_count() == 1:
    return verdict
  return int(np.max(multihost_utils.process_allgather(np.int32(verdict))))


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


def _fenced_commit(directory: store.PathLike, fence: fenced.Fence) -> type:
  """Orbax's way of committing a step in ``directory`` (a rename, or a commit marker in a
  bucket), admitted by ``fence`` first."""
  commit = atomicity_defaults.get_default_temporary_path_class(store.as_path(directory))

  class FencedCommit(commit):  # type: ignore[valid-type,misc]
    async def finalize(self, *args, **kwargs):
      fence.check()
      return await super().finalize(*args, **kwargs)

  return FencedCommit


def _lease_lost(error: BaseException) -> Exception | None:
  """The lost lease behind ``error`` (orbax wraps what its commit raised), if any."""
  for cause in store.error_chain(error):
    if isinstance(cause, workdir_lock.WorkdirLockLost):
      return cause
  return None


class Checkpointer:
  """Saves and restores ``(state, progress)`` pairs under one directory.

  Every process must call :meth:`save` and :meth:`restore` (orbax coordinates multi-host writes).

  Args:
    directory: where the step directories go (created if missing).
    max_to_keep: most recent checkpoints kept on disk (of those this run knows, see the module
      docstring).
    fence: admits the commits and deletions (see :mod:`cfl_jax.store.fenced`).
  """

  def __init__(self, directory: store.PathLike, *, max_to_keep: int,
               fence: fenced.Fence = fenced.UNFENCED):
    self.directory = store.as_path(directory)
    self._fence = fence
    self._max_to_keep = max_to_keep
    # Every process reaches the store before orbax lists the steps: orbax's listing ends in a
    # broadcast from process 0 (and its create=True in a barrier), which a process whose store
    # failed first would never reach. Process 0 creates the directory, the others look at it.
    probe = ((lambda: self.directory.mkdir(parents=True, exist_ok=True))
             if jax.process_index() == 0 else self.directory.exists)
    with agreement.together(f"listing the checkpoints in {self.directory}"):
      store.retrying(f"listing the checkpoints in {self.directory}", probe)
    self._manager = store.retrying(
        f"listing the checkpoints in {self.directory}", lambda: ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                create=False, temporary_path_class=_fenced_commit(self.directory, fence)),
            item_names=("state", "progress")))
    self._known = set(self._manager.all_steps())  # steps this run may delete
    self._saving_step: int | None = None
    self._failed = False

  def latest_step(self) -> int | None:
    """The newest completely written step, or None if there is none."""
    return self._manager.latest_step()

  def describe_latest(self) -> str:
    """A sentence naming the newest intact checkpoint kept on disk (for error messages)."""
    latest = self.latest_step()
    if latest is None:
      return "No checkpoint was written."
    return f"The last finite checkpoint, step {latest}, is kept in {self.directory}."

  def save(self, step: int, state: Any, progress: Mapping[str, Any]) -> None:
    """Starts saving ``state`` and the JSON-serialisable ``progress`` as ``step``.

    Writing continues in the background; the device arrays are copied before this returns, so
    ``state`` may be donated right after. Orbax writes into a temporary directory and renames
    it when complete (the commit, admitted by the fence); old checkpoints (beyond
    ``max_to_keep``) are deleted only once a newer one is committed, so a failed save never
    touches the previous checkpoint.

    Raises:
      CheckpointSaveError: if this save, or the previous one still being written, failed.
      WorkdirLockLost: when the lease ran out (see :mod:`cfl_jax.store.fenced`): nothing more is
        saved, and a save still being written is not committed.
      StoreUnavailable: when deleting the checkpoints beyond ``max_to_keep`` failed past the
        retry budget.
    """
    self._finish_saving()  # the previous save must have succeeded, on every process
    # The lease is process 0's; every process stops alike when it has run out (orbax's save
    # ends in barriers that a process stopping alone would leave the others waiting in).
    with agreement.together(f"saving checkpoint {self.directory / str(step)}",
                            errors=(workdir_lock.WorkdirLockLost,)):
      self._fence.check()
    self._saving_step = step
    # Orbax's save waits at barriers of its own: a process failing in it stops every process.
    with agreement.stop_all_on(CheckpointSaveError, workdir_lock.WorkdirLockLost):
      try:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(dict(progress))))
      except Exception as error:  # orbax raises many types; all mean the same here
        raise self._save_error(error) from error

  def check_for_errors(self, *, all_processes: bool = False) -> bool:
    """Raises CheckpointSaveError as soon as a background save has failed (cheap while a save
    is still being written; call it every step).

    With several processes a failure must stop all of them together, so it is only looked for
    where all processes call this at the same point with ``all_processes=True`` (a collective):
    a failure on any one raises the same error on every process.

    Returns:
      True when no save is in flight any more (on any process, when ``all_processes``).
    """
    if jax.process_count() > 1 and not all_processes:
      return False
    try:
      with agreement.together(f"saving checkpoint {self.directory / str(self._saving_step)}",
                              errors=(CheckpointSaveError,)):
        finished = self._save_finished()
    except CheckpointSaveError:
      self._failed = True  # this process's own save may still be waiting for the failed one's
      raise
    return all(agreement.gather("1" if finished else ""))

  def _save_finished(self) -> bool:
    """True when this process has no save in flight; raises CheckpointSaveError if its last save
    failed. Never waits."""
    if self._saving_step is None:
      return True
    if self._manager.is_saving_in_progress():
      return False
    try:
      self._manager.wait_until_finished()  # returns at once; raises what the save raised
    except Exception as error:  # orbax raises many types; all mean the same here
      raise self._save_error(error) from error
    self._committed()
    return True

  def _finish_saving(self) -> None:
    """Waits until no save is in flight on any process; raises CheckpointSaveError on every
    process as soon as one process's save has failed (a process whose save waits for the failed
    one's would otherwise wait for orbax's time-out)."""
    if jax.process_count() == 1:
      if self._saving_step is None:
        return
      try:
        self._manager.wait_until_finished()
      except Exception as error:  # orbax raises many types; all mean the same here
        raise self._save_error(error) from error
      self._committed()
      return
    while not self.check_for_errors(all_processes=True):
      time.sleep(_SAVE_POLL_SECONDS)

  def _committed(self) -> None:
    """Records the save just finished as this run's and deletes the steps it knows beyond
    ``max_to_keep``, oldest first, through the fence (process 0; the others only forget them)."""
    assert self._saving_step is not None
    self._known.add(self._saving_step)
    self._saving_step = None
    for step in sorted(self._known)[:-self._max_to_keep]:
      if jax.process_index() == 0:
        self._fence.remove_tree(self.directory / str(step))
      self._known.discard(step)

  def _save_error(self, error: BaseException) -> Exception:
    self._failed = True
    lost = _lease_lost(error)
    if lost is not None:  # the commit was refused: the lease ran out during the save
      return workdir_lock.WorkdirLockLost(str(lost))
    where = self.directory / str(self._saving_step)
    latest = self.latest_step()
    kept = ("no earlier checkpoint exists" if latest is None else
            f"the previous checkpoint, step {latest}, is intact in {self.directory}")
    return CheckpointSaveError(
        f"Could not save checkpoint {where}: {_root_cause(error)}. The run stopped; {kept}.")

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
      CheckpointError: if the checkpoint cannot be decoded, was written with different
        trajectory keys (any key but :data:`NON_TRAJECTORY_KEYS`), or does not match
        ``abstract_state``.
      StoreUnavailable: if the store stays unreachable (transient errors, retried) for longer
        than the retry budget (see :func:`cfl_jax.store.retrying`).
    """
    where = self.directory / str(step)
    advice = "Restore the original config, or start afresh in a new workdir."
    progress = self._read(step, ocp.args.Composite(progress=ocp.args.JsonRestore()),
                          "is unreadable (corrupted or not written by cfl_jax)").progress
    saved_config = progress.get("config") if isinstance(progress, Mapping) else None
    if not isinstance(saved_config, Mapping):
      raise _DamagedCheckpoint(f"Checkpoint {where} holds no config in its progress record "
                               "(corrupted or not written by cfl_jax).")
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
    state = self._read(step, ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)),
                       "does not hold a train state matching this model and optimizer "
                       "(corrupted or incompatible)").state
    return state, progress

  def _read(self, step: int, args: ocp.args.Composite, damage: str) -> Any:
    """``self._manager.restore(step, args=args)``, retried through transient store errors.

    Raises:
      StoreUnavailable: when the store stays unreachable past the retry budget, or the read
        failed for a cause that is not the checkpoint's (:func:`cfl_jax.store.failure_cause`:
        unauthorised, forbidden, out of memory, ...).
      _DamagedCheckpoint: for any other error: the checkpoint's bytes were read and it
        ``damage`` (a phrase such as "is unreadable"), or a part of it is missing.
    """
    where = self.directory / str(step)
    # Orbax's restore ends at a barrier: a process whose store failed stops every process.
    with agreement.stop_all_on(store.StoreUnavailable):
      try:
        return store.retrying(f"reading checkpoint {where}",
                                lambda: self._manager.restore(step, args=args))
      except store.StoreUnavailable:
        raise
      except Exception as error:  # orbax raises many types; classified by what they mean
        cause = store.failure_cause(error)
        if cause is not None:  # the store or the machine failed, not the checkpoint
          raise store.StoreUnavailable(
              f"Could not read checkpoint {where}: {cause} ({_root_cause(error)}). It is left "
              "in place: run again once the cause is mended.") from error
        raise _DamagedCheckpoint(f"Checkpoint {where} {damage}: {_root_cause(error)}") from error

  def restore_latest(self, abstract_state: Any,
                     config: Mapping[str, Any]) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest intact checkpoint, or returns None when there is none.

    A checkpoint is damaged only when it was read and failed to decode or has missing or
    inconsistent parts (not a train state of this shape); then it is moved aside to
    ``damaged_checkpoints/`` beside the checkpoint directory, with a warning naming it and why,
    and the next older one is tried. A store that stays unreachable past the retry budget, or a
    read that fails for another cause than the checkpoint (unauthorised, forbidden, out of
    memory: :func:`cfl_jax.store.failure_cause`), moves nothing: the run stops with
    StoreUnavailable, and a later run finds every checkpoint. With
    several processes each one reads the checkpoint and the worst verdict of all (unavailable,
    then damaged) is applied by all; process 0 moves. A checkpoint written by a different config
    is not damaged: it stops the run (see :meth:`restore`).

    Raises:
      CheckpointError: if a checkpoint was written with different trajectory keys.
      StoreUnavailable: if the store (for any process) stays unreachable past the retry budget
        or fails a read for a cause that is not the checkpoint's.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      restored, problem = None, None
      try:
        restored = self.restore(step, abstract_state, config)
      except (_DamagedCheckpoint, store.StoreUnavailable) as error:
        problem = error
      verdict = _worst_of_all_processes(_verdict(problem))
      if verdict == _UNAVAILABLE:
        raise (problem if isinstance(problem, store.StoreUnavailable) else
               store.StoreUnavailable(f"Another process could not read checkpoint "
                                        f"{self.directory / str(step)}; run again to resume."))
      if verdict == _DAMAGED:
        self._move_aside(step, problem or "damaged, as another process read it")
        continue
      return restored
    return None

  def _move_aside(self, step: int, reason: BaseException | str) -> None:
    damaged = self.directory / str(step)
    # Every process must agree on the name: process 0's clock decides.
    stamp = int(multihost_utils.broadcast_one_to_all(np.int64(time.time())))
    target = self.directory.parent / "damaged_checkpoints" / f"{step}-{stamp}"
    with agreement.together(f"moving the damaged checkpoint {damaged} aside"):
      if jax.process_index() == 0:
        self._fence.check()
        store.move_tree(damaged, target)
    self._known.discard(step)
    logging.warning("Skipped the damaged checkpoint %s (%s); moved it to %s and resuming from "
                    "the next older one, if any.", damaged, reason, target)
    with agreement.together(f"listing the checkpoints in {self.directory}"):
      store.retrying(f"listing the checkpoints in {self.directory}", self._manager.reload)

  def close(self) -> None:
    """Waits for pending saves and releases the manager.

    After a failed save, or once the lease has run out, the manager is left as it is: its
    background writers are broken or their commit will be refused, the failure has been raised,
    and the process is about to stop.
    """
    if self._failed:
      return
    admitted = self._fence.admits()
    if not all(agreement.gather("1" if admitted else "")):  # process 0's lease
      self._failed = True
      if self._saving_step is not None and not admitted:  # its commit is refused
        self._fence.check()
      return
    self._finish_saving()
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
