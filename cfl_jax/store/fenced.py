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
for at most the time left on the lease and is cancelled then, retries and all.

A fence without a lease (:data:`UNFENCED`) admits everything: local workdirs under an ``flock``,
which lasts as long as the process, and the processes of a multi-host run that do not hold the
lock (their writes, array shards, are committed by process 0 through its fence).
"""

import asyncio
from collections.abc import Callable, Coroutine
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

  def _bounded(self, fs, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """The coroutine ``work()`` on the file system ``fs``'s loop, cancelled (TimeoutError)
    when the lease ends."""
    left = (self._lease.deadline() if self._lease is not None else math.inf) - time.monotonic()
    return asyn.sync(fs.loop, asyncio.wait_for, work(), None if left == math.inf else left)

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
