"""The one door every write into a workdir goes through, open only while the run holds its lease.

A run that lost its workdir (another run may have taken it over) must write nothing more there:
no run file, summary, checkpoint commit, checkpoint clean-up or compilation-cache entry. Rather
than a check at every call site, every such write goes through a :class:`Fence`, which asks the
run's :class:`Lease` (the workdir lock, :class:`cfl_jax.store.workdir_lock.WorkdirLock`) before
each attempt, retries included, and raises the lease's error instead of writing once it has run
out. The lease says it on this process alone, with no collective, so background threads (orbax's
commit, JAX's cache writes) ask it too.

A write admitted a moment before the lease ends must not land after it: the client's own retries
(gcsfs retries a request for about 30 s) would carry it there. So in a bucket each attempt runs
for at most the time left on the lease and is cancelled then, retries and all. Only a request
already sent when its attempt is cancelled may still land, within the margin of a heartbeat that
a rival waits beyond the lease.

Writes that are not ours go through the same door: within :func:`fencing_requests`, every
request that changes the store (all but GET and HEAD) which the runner's gcsfs client sends, from
any thread, is admitted by the fence attempt by attempt and cancelled when the lease ends
(:func:`admit_request`). That covers orbax's directory work: before saving a step, orbax deletes
an unfinished directory of that step (``exists``, then ``rmtree``); unfenced, a delete sent
while the lease held and carried past its end by a slow network and gcsfs's retries removed the
same step that a run which took the workdir over had committed meanwhile. The workdir lock's own
requests pass (:func:`outside_the_fence`): its heartbeat is what renews the lease. TensorStore's
array writes (its own client) are outside: in the step being saved they add data files under new
random names, and its manifest is written only at the generation TensorStore read, so a step
another run committed meanwhile keeps its own.

A fence without a lease (:data:`UNFENCED`) admits everything: local workdirs under an ``flock``,
which lasts as long as the process, and the processes of a multi-host run that do not hold the
lock (their writes, array shards, are committed by process 0 through its fence).
"""

import asyncio
from collections.abc import Callable, Coroutine, Iterator
import contextlib
import contextvars
import math
import time
from typing import Any, Protocol, TypeVar

from fsspec import asyn

from cfl_jax.store import paths
from cfl_jax.store.retry import retrying

T = TypeVar("T")


class Lease(Protocol):
  """What a :class:`Fence` asks before every write."""

  def lost(self) -> Exception | None:
    """None while this process may write into the workdir, else the error to stop with."""

  def deadline(self) -> float:
    """The ``time.monotonic()`` at which the lease ends (``math.inf``: never)."""


class Fence:
  """Admits writes into a workdir while ``lease`` holds (always, without one).

  Args:
    lease: the run's lease, or None for a fence that admits every write.

  Examples:
    >>> import tempfile
    >>> class Expired:
    ...   def lost(self):
    ...     return RuntimeError('the lease ran out')
    >>> Fence(Expired()).write_atomic(tempfile.mkdtemp() + '/note.txt', 'late')
    Traceback (most recent call last):
    ...
    RuntimeError: the lease ran out
  """

  def __init__(self, lease: Lease | None = None):
    self._lease = lease

  def check(self) -> None:
    """Raises the lease's error once it has run out; returns while it holds."""
    problem = self._lease.lost() if self._lease is not None else None
    if problem is not None:
      raise problem

  def admits(self) -> bool:
    """True while the lease holds."""
    return self._lease is None or self._lease.lost() is None

  def seconds_left(self) -> float | None:
    """Seconds until the lease ends (at most 0 once it has), None without one."""
    if self._lease is None or self._lease.deadline() == math.inf:
      return None
    return self._lease.deadline() - time.monotonic()

  def _bounded(self, fs, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """The coroutine ``work()`` on the file system ``fs``'s loop, cancelled (TimeoutError)
    when the lease ends."""
    return asyn.sync(fs.loop, asyncio.wait_for, work(), self.seconds_left())

  def call(self, what: str, write: Callable[[], T]) -> T:
    """``write()``, retried through transient store errors (:func:`cfl_jax.store.retrying`),
    each attempt admitted by the lease; ``what`` names it for the log and errors."""

    def admitted() -> T:
      self.check()
      return write()

    return retrying(what, admitted)

  def write_atomic(self, path: paths.PathLike, data: str | bytes) -> None:
    """:func:`cfl_jax.store.write_atomic` through the fence (one attempt per admission)."""
    self.check()
    if paths.is_local(path):
      paths.write_atomic(path, data)
      return
    destination = paths.as_path(path)
    content = data.encode() if isinstance(data, str) else data
    fs, key = paths.filesystem(destination)
    self.call(f"writing {destination}",
              lambda: self._bounded(fs, lambda: fs._pipe_file(key, content)))  # pylint: disable=protected-access

  def remove_tree(self, path: paths.PathLike) -> None:
    """Deletes the directory (object prefix) ``path`` through the fence; a missing one is
    already gone."""
    target = paths.as_path(path)

    def remove() -> None:
      if paths.is_local(target):
        if target.exists():
          target.rmtree()
        return
      fs, key = paths.filesystem(target)
      fs.invalidate_cache(key)
      if fs.exists(key):
        self._bounded(fs, lambda: fs._rm(key, recursive=True))  # pylint: disable=protected-access

    self.call(f"deleting {target}", remove)


#: A fence that admits every write (no lease to lose).
UNFENCED = Fence()


_requests_fence: Fence | None = None  # the process's, set by fencing_requests
_outside = contextvars.ContextVar("cfl_jax_outside_the_fence", default=False)
_READING = frozenset({"GET", "HEAD"})


@contextlib.contextmanager
def fencing_requests(fence: Fence) -> Iterator[None]:
  """Within: every request that changes the store, sent by the runner's gcsfs client from any
  thread of this process, is admitted by ``fence`` (see the module docstring and
  :func:`admit_request`)."""
  global _requests_fence  # pylint: disable=global-statement (one lease per process)
  previous, _requests_fence = _requests_fence, fence
  try:
    yield
  finally:
    _requests_fence = previous


@contextlib.contextmanager
def outside_the_fence() -> Iterator[None]:
  """Requests sent within (and by tasks started within) pass unfenced: the workdir lock's own,
  whose heartbeat renews the lease and whose release comes after it."""
  token = _outside.set(True)
  try:
    yield
  finally:
    _outside.reset(token)


async def admit_request(method: str, attempt: Coroutine[Any, Any, T]) -> T:
  """Awaits ``attempt``, one attempt of a ``method`` request: as it is while reading, outside
  the fence or outside :func:`fencing_requests`; else only once the fence admits it, and
  cancelled when the lease ends.

  Raises:
    Exception: the lease's own error (``WorkdirLockLost`` for a workdir lock) once it has run
      out, before or during the attempt; a client's retry loop (gcsfs's) does not retry it.
  """
  fence = _requests_fence
  if fence is None or method.upper() in _READING or _outside.get():
    return await attempt
  try:
    fence.check()
  except BaseException:
    attempt.close()  # never started
    raise
  left = fence.seconds_left()
  try:
    return await asyncio.wait_for(attempt, None if left is None else max(left, 0.0))
  except TimeoutError:
    fence.check()  # the lease ended during the attempt: its error, not a time-out
    raise
