"""Preemption notices (SIGTERM, as on TPU VMs and most schedulers) turned into a clean stop.

Single process: a SIGTERM handler sets a flag that the loop reads after each step. Multi-process
(after ``jax.distributed.initialize()``): JAX's preemption sync manager receives the SIGTERM and
agrees across hosts on one step at which every process stops, so all of them save the same step.
"""

import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils


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
