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

Some phases hold collectives of their own: orbax's save and restore wait for every process at
barriers (device collectives), so a process that fails between two of them cannot meet the others
at the end of the phase. Were it to start another collective (the exchange above), it
would meet theirs, of another size; CPU collectives (gloo) then abort both processes. Such a phase
runs inside :func:`stop_all_on`: an error that leaves it stops every process at once, through the
coordination service of ``jax.distributed`` (no collective), with that error's message. A program
opts in with :func:`watching_for_stops`, which says how to report the message; the processes end
with exit status 1 through :func:`leave`, process 0 last (it serves the coordination service the
others need until they end). A program that ends its processes at once on an error they all
raised (e.g. from :func:`together`) ends them through :func:`leave` too.
"""

from collections.abc import Callable, Iterator
import contextlib
import os
import sys
import threading
import time
from typing import NoReturn

from absl import logging
import jax
from jax._src import distributed as jax_distributed  # the coordination service's client
from jax.experimental import multihost_utils
import numpy as np

from cfl_jax.store.errors import StoreUnavailable
from cfl_jax.store.errors import reason

# Longest message exchanged (bytes of UTF-8); a longer one is cut there.
_MESSAGE_BYTES = 4096
# Coordination-service keys: the first stop's message, and each process's word that it is ending.
_STOP_KEY = "cfl_jax/agreement/stop"
_ENDING_KEY = "cfl_jax/agreement/ending/"
# How long process 0 waits for the others to end before it ends (ms), and then to let them exit.
_ENDING_WAIT_MS = 10_000
_EXIT_GRACE_SECONDS = 0.5
# How long the watcher waits for a stop at a time (ms); leaving its block waits as long at most.
_WATCH_MS = 500


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


_report: Callable[[str], None] | None = None  # set by watching_for_stops
_ending = threading.Lock()  # held by the one thread of a process that ends it


def _client():
  """The coordination service's client of ``jax.distributed`` (orbax reaches it the same way;
  JAX has no public accessor)."""
  return jax_distributed.global_state.client


@contextlib.contextmanager
def watching_for_stops(report: Callable[[str], None]) -> Iterator[None]:
  """Within it, a stop of any process (:func:`stop_all_on`) ends this one: ``report(message)``,
  then exit status 1, whatever its main thread is waiting in. With one process it does nothing.

  Args:
    report: shows the stop's message (e.g. prints it as the program's error line).
  """
  global _report
  if jax.process_count() == 1:
    yield
    return
  _report = report
  leaving = threading.Event()
  watcher = threading.Thread(target=_watch, args=(leaving,), name="agreement-stop-watch",
                             daemon=True)
  watcher.start()
  try:
    yield
  finally:
    _report = None
    leaving.set()
    watcher.join()  # before the interpreter ends: a thread it stops in C++ code aborts it


def _watch(leaving: threading.Event) -> None:
  client = _client()
  while not leaving.is_set():
    try:
      message = client.blocking_key_value_get(_STOP_KEY, _WATCH_MS)
    except Exception:  # pylint: disable=broad-except (not yet: look again)
      continue
    _end(message)


@contextlib.contextmanager
def stop_all_on(*errors: type[Exception]) -> Iterator[None]:
  """Runs a phase that holds collectives of its own (see the module docstring): an error of the
  types ``errors`` leaving it on any process ends every process with its message, inside
  :func:`watching_for_stops`; elsewhere (or with one process) it is raised as it is.

  Examples:
    >>> with stop_all_on(OSError):  # one process: raised as it is
    ...   raise OSError('disk full')
    Traceback (most recent call last):
    ...
    OSError: disk full
  """
  try:
    yield
  except errors as error:
    if _report is None:
      raise
    client = _client()
    try:
      client.key_value_set(_STOP_KEY, str(error))
    except Exception:  # pylint: disable=broad-except (another process stopped first: its message)
      pass
    _end(client.blocking_key_value_get(_STOP_KEY, _ENDING_WAIT_MS))
    raise


def _end(message: str) -> None:
  """Reports ``message`` and exits (status 1) through :func:`leave`.

  From here on the process's other output is dropped: its threads blocked in collectives see
  their peers go and fail (tracebacks, gloo's and the coordination service's notes), which says
  nothing the message does not.
  """
  report = _report
  if report is None:  # the program has left watching_for_stops: it ends on its own
    return
  _ending.acquire()  # the main thread or the watcher, never both
  flush_output()
  streams = os.dup(1), os.dup(2)
  quiet = os.open(os.devnull, os.O_WRONLY)
  os.dup2(quiet, 1)
  os.dup2(quiet, 2)

  def last_words() -> None:
    sys.stdout, sys.stderr = (os.fdopen(stream, "w") for stream in streams)
    report(message)

  leave(1, last_words)


def leave(status: int, last_words: Callable[[], None] = lambda: None) -> NoReturn:
  """Ends this process at once with exit status ``status``, after ``last_words()``.

  It exits through ``os._exit``: threads blocked in collectives or store calls are abandoned, and
  exit handlers do not run. In a multi-process run every process that ends this way must end
  through it, process 0 last: process 0 serves the coordination service of
  ``jax.distributed``, and JAX aborts a process still connected to it when it goes (SIGABRT and a
  fatal-error report instead of ``status``). So process 0 waits for the others' word that they
  are ending (10 s at most), and each other process gives that word as its last act.

  Args:
    status: the exit status.
    last_words: called just before the exit (e.g. prints the error line); output is flushed
      after it.
  """
  processes, index = jax.process_count(), jax.process_index()
  client = _client() if processes > 1 else None
  if client is not None and index == 0:
    for other in range(1, processes):
      with contextlib.suppress(Exception):  # a process that died already says nothing
        client.blocking_key_value_get(f"{_ENDING_KEY}{other}", _ENDING_WAIT_MS)
    time.sleep(_EXIT_GRACE_SECONDS)  # their exit, after their word
  last_words()
  flush_output()
  if client is not None and index != 0:
    client.key_value_set(f"{_ENDING_KEY}{index}", "")
  os._exit(status)  # pylint: disable=protected-access


def flush_output() -> None:
  """Flushes absl's log, stdout and stderr: the last thing before ``os._exit``, which skips
  Python's own flushing."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
