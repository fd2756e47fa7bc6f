"""Every process of a run reaches the same verdict: one failure of the store ends them all alike.

In a multi-host run, some store work is done by one process (process 0 writes the run files and
moves damaged checkpoints) and some by each (its checkpoint shards). A process whose store call
fails must not stop alone: the others would wait for it in their next collective. So each phase
in which a process may fail alone runs inside :func:`together`, which every process enters and
leaves at the same point: on leaving, the processes exchange their outcomes (one all-gather of a
short message), and if any failed, every process raises the same error with the same message, the
first failed process's (in process order). With one process it costs nothing.

A phase then ends on every process when its slowest process ends it: for the store's phases,
within the retry budget (:func:`cfl_jax.store.retry_budget`) plus one attempt in flight.
"""

from collections.abc import Iterator
import contextlib

import jax
from jax.experimental import multihost_utils
import numpy as np

from cfl_jax.store.errors import StoreUnavailable
from cfl_jax.store.errors import reason

# Longest message exchanged (bytes of UTF-8); a longer one is cut there.
_MESSAGE_BYTES = 4096


class HostFailed(RuntimeError):
  """Another process of the run failed in a shared phase with an error other than those the
  phase passes on as themselves; this process stopped with it."""


def _encode(message: str) -> np.ndarray:
  buffer = np.zeros(_MESSAGE_BYTES, np.uint8)
  encoded = message.encode()[:_MESSAGE_BYTES]
  buffer[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  return buffer


def _decode(buffer: np.ndarray) -> str:
  return np.asarray(buffer, np.uint8).tobytes().rstrip(b"\0").decode(errors="replace")


def broadcast(message: str) -> str:
  """Process 0's ``message`` on every process (all processes must call it)."""
  if jax.process_count() == 1:
    return message
  return _decode(multihost_utils.broadcast_one_to_all(_encode(message)))


def gather(message: str) -> list[str]:
  """Every process's ``message``, in process order (all processes must call it).

  Examples:
    >>> gather('ok')  # one process
    ['ok']
  """
  if jax.process_count() == 1:
    return [message]
  return [_decode(row) for row in np.asarray(multihost_utils.process_allgather(
      _encode(message)))]


@contextlib.contextmanager
def together(what: str, errors: tuple[type[Exception], ...] = (StoreUnavailable,)
             ) -> Iterator[None]:
  """Runs the ``with`` block on every process; when it raises on any, it raises on all.

  Every process must enter and leave the block at the same point of the run. The first process
  (in process order) whose block raised decides: an error of one of the types ``errors`` is
  raised on every process as that type with its message (the process that raised it re-raises
  its own); any other error is re-raised where it happened and raised elsewhere as
  :class:`HostFailed`, naming the process, ``what`` and the error.

  Args:
    what: the phase, for messages ("writing the run files").
    errors: the error types passed on as themselves (most specific first).

  Examples:
    >>> with together('writing the run files'):
    ...   raise StoreUnavailable('The store kept failing.')
    Traceback (most recent call last):
    ...
    cfl_jax.store.errors.StoreUnavailable: The store kept failing.
  """
  caught, outcome = None, ""
  try:
    yield
  except Exception as error:  # pylint: disable=broad-except (every failure must reach the others)
    caught = error
    kind = next((i for i, error_type in enumerate(errors) if isinstance(error, error_type)), None)
    outcome = (f"{kind}:{error}" if kind is not None else
               f"-:{type(error).__name__}: {reason(error)}")
  for process, failure in enumerate(gather(outcome)):
    if not failure:
      continue
    if process == jax.process_index():
      assert caught is not None
      raise caught
    index, message = failure.split(":", 1)
    if index == "-":
      raise HostFailed(f"Process {process} of this run failed while {what} ({message}); every "
                       "process stopped.") from caught
    raise errors[int(index)](message) from caught
