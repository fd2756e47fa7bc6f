"""One run per workdir: an exclusive lock, on a local disk or in a GCS bucket.

Local workdirs: an ``flock`` on ``workdir/.lock``, which the operating system releases when its
process dies, so the lock of a killed run is free at once; the file records who holds it.

GCS workdirs (``gs://``): ``workdir/.lock`` is an object naming its holder (a random token, host,
process id, start time). The store decides every race: each write and delete is conditioned on
the generation last read (:mod:`cfl_jax.store.lock_object`), so of two runs acting on the same
lock exactly one proceeds, and a write whose answer was lost is recognised as this run's own by
reading back its token.

* Taking: the object is created only if absent. An existing lock is watched: when its generation
  advances, its holder is alive and this run is refused; once it has not been written for
  ``stale_seconds``, by the store's clock (its ``updated`` time against the store's ``Date``) or
  seen unchanged for that long on this host's monotonic clock, it is overwritten at the generation
  read, with a warning naming the old holder. Host clocks never decide.
* Holding: a thread rewrites it every ``heartbeat_seconds`` at the generation of its last write;
  it outlives any error of the store or of authentication and retries with back-off.
* Losing: when a rival's token replaced this run's, or its lease ran out (below),
  :meth:`WorkdirLock.check` (called before every checkpoint) raises :class:`WorkdirLockLost`,
  and so does every write through :attr:`WorkdirLock.fence` (:mod:`cfl_jax.store.fenced`).

The lease. A rival takes the lock over only once it has not been written for ``stale`` seconds,
by the store's clock or the rival's, so never before ``S + stale`` where ``S`` is the moment this
run *sent* its last write that the store acknowledged (it landed after ``S``). This run may write
into the workdir until

  ``S + stale - margin``, with ``margin = heartbeat + drift * stale``,

by its own monotonic clock, started when the write was sent, not when it was answered. The
``heartbeat`` in the margin is the time a write admitted at the last moment has to land (a store
request abandoned after that never lands); ``drift`` (:data:`CLOCK_DRIFT`, 1 %) bounds how much
faster this host's clock may run than the store's or the rival's. With the defaults (heartbeat
15 s, stale 60 s) the lease lasts 44.4 s after the last acknowledged heartbeat was sent, so two
heartbeats in a row may fail before it runs out, and a rival takes over 15.6 s after it has.

The defaults refuse a second run beside a live one within about 20 s and let a relaunch after a
hard kill take over at most 60 s after the dead run's last heartbeat. The environment variables
``CFL_JAX_LOCK_HEARTBEAT_SECONDS`` and ``CFL_JAX_LOCK_STALE_SECONDS`` change them.

Multi-host: process 0 takes the lock; its verdict, on entry and at every check, reaches every
process, so all of them stop with the same message. While it watches a lock, the others hear from
it at every look, so none waits long in one collective (CPU collectives time out).
"""

import datetime
import fcntl
import json
import math
import os
import socket
import threading
import time
from typing import IO
import uuid

from absl import logging

from cfl_jax import store
from cfl_jax.store import agreement
from cfl_jax.store import fenced
from cfl_jax.store import lock_object

HEARTBEAT_SECONDS = 15.0
STALE_SECONDS = 60.0
HEARTBEAT_VARIABLE = "CFL_JAX_LOCK_HEARTBEAT_SECONDS"
STALE_VARIABLE = "CFL_JAX_LOCK_STALE_SECONDS"
#: How much faster this host's clock may run than the store's or a rival's (a fraction; NTP keeps
#: real clocks within a few parts per million).
CLOCK_DRIFT = 0.01
# Process 0's word while it watches a lock: the others wait for the next one (in short collectives,
# which time out on some backends when one process arrives much later than another).
_UNDECIDED = "\x01"


class WorkdirLocked(RuntimeError):
  """The workdir could not be locked: another live run holds it, or its store failed."""


class WorkdirLockLost(WorkdirLocked):
  """This run no longer holds its workdir's lock; it stopped before writing more there."""


def _config_error(message: str) -> Exception:
  """A :class:`cfl_jax.training.config.ConfigError` (imported on use: that package imports this
  module)."""
  from cfl_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.ConfigError(message)


def lease_seconds(heartbeat_seconds: float, stale_seconds: float) -> float:
  """How long after sending its last acknowledged heartbeat a run may still write into its
  workdir: ``stale - margin``, ``margin = heartbeat + CLOCK_DRIFT * stale`` (see the module
  docstring).

  Examples:
    >>> round(lease_seconds(15, 60), 6)  # the defaults
    44.4
  """
  return stale_seconds - (heartbeat_seconds + CLOCK_DRIFT * stale_seconds)


def _now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


def _refusal(workdir: str, holder: str) -> WorkdirLocked:
  return WorkdirLocked(
      f"The workdir {workdir} is in use by another run ({holder}); wait for it to finish, or "
      "give this run its own --workdir.")


def _seconds(value: float | None, variable: str, default: float) -> float:
  """``value``, else the environment ``variable``, else ``default``, as seconds."""
  if value is not None:
    return float(value)
  text = os.environ.get(variable)
  if text is None:
    return default
  try:
    return float(text)
  except ValueError:
    raise _config_error(f"{variable}={text!r} is not a number of seconds.") from None


def _holder(observation: lock_object.Observation | None) -> str:
  """Who holds a lock, for messages."""
  if observation is None:
    return "unknown"
  try:
    return json.loads(observation.content)["holder"]
  except (ValueError, KeyError, TypeError):
    return "an unreadable lock object"


def _token(observation: lock_object.Observation | None) -> str | None:
  try:
    return json.loads(observation.content)["token"] if observation else None
  except (ValueError, KeyError, TypeError):
    return None


def check_store(workdir: store.PathLike) -> None:
  """Raises a ConfigError unless ``workdir`` is local (or mounted) or a ``gs://`` URL.

  Other object stores (``s3://``, ...) are refused rather than run without a lock: the lock's
  conditional writes are written for GCS generations, and orbax would write the checkpoint arrays
  through tensorstore's S3 driver, which takes no endpoint from the environment (so no test here
  can reach a local S3 server) and whose documentation warns that it lacks atomicity checkpoints
  rely on.

  Examples:
    >>> check_store('gs://bucket/run')
    >>> check_store('s3://bucket/run')
    Traceback (most recent call last):
    ...
    cfl_jax.training.config.ConfigError: The workdir s3://bucket/run is on an object store ...
  """
  path = os.fspath(workdir)
  if not store.is_local(path) and not path.startswith("gs://"):
    raise _config_error(
        f"The workdir {path} is on an object store other than GCS: use a local (or mounted) "
        "directory or a gs:// bucket. Runs in other stores are refused rather than run without a "
        "lock: the workdir lock's conditional writes are implemented for GCS only, and orbax "
        "would write checkpoints through tensorstore's S3 driver, which cannot be tested here.")


class WorkdirLock:
  """An exclusive lock on ``workdir`` for the duration of a run, taken by process 0.

  Every process enters it (and calls :meth:`check`): the others take no lock but learn process
  0's verdict.

  Args:
    workdir: a local directory or a ``gs://`` URL.
    enabled: False on the processes that do not write the run files (they take no lock).
    heartbeat_seconds: GCS: how often the lock is rewritten (default: ``$CFL_JAX_LOCK_HEARTBEAT_
      SECONDS`` or 15).
    stale_seconds: GCS: a lock not written for this long is taken over (default:
      ``$CFL_JAX_LOCK_STALE_SECONDS`` or 60); at least twice ``heartbeat_seconds``.

  Raises:
    WorkdirLocked: on entry, when another live run holds the lock or the store fails.
    ConfigError: for timings that cannot work, or a workdir on another object store than GCS
      (see :func:`check_store`).

  Examples:
    >>> import tempfile
    >>> workdir = tempfile.mkdtemp()
    >>> with WorkdirLock(workdir):
    ...   try:
    ...     WorkdirLock(workdir).__enter__()
    ...   except WorkdirLocked as error:
    ...     print(str(error).replace(workdir, 'WORKDIR'))
    The workdir WORKDIR is in use by another run (pid ...); wait for it to finish, ...
  """

  def __init__(self, workdir: store.PathLike, *, enabled: bool = True,
               heartbeat_seconds: float | None = None, stale_seconds: float | None = None):
    check_store(workdir)
    root = store.as_path(workdir)
    self.workdir = os.fspath(root)
    self.path = root / ".lock"
    self.enabled = enabled
    self.heartbeat_seconds = _seconds(heartbeat_seconds, HEARTBEAT_VARIABLE, HEARTBEAT_SECONDS)
    self.stale_seconds = _seconds(stale_seconds, STALE_VARIABLE, STALE_SECONDS)
    if not 0 < 2 * self.heartbeat_seconds <= self.stale_seconds:
      raise _config_error(
          f"The workdir lock needs 0 < 2 * heartbeat ({self.heartbeat_seconds} s) <= stale "
          f"({self.stale_seconds} s); see {HEARTBEAT_VARIABLE} and {STALE_VARIABLE}.")
    self._file: IO[str] | None = None
    self._object: lock_object.GcsObject | None = None
    self._token = uuid.uuid4().hex
    pid, host, started = os.getpid(), socket.gethostname(), _now()
    self._record = json.dumps({"token": self._token, "pid": pid, "host": host, "started": started,
                               "holder": f"pid {pid} on {host}, started {started}"}).encode()
    self._generation = "0"
    self._refreshed = 0.0  # monotonic time at which the last successful write was sent
    self._last_error = ""
    self._lost: str | None = None
    self._stop = threading.Event()
    self._heartbeat: threading.Thread | None = None
    #: Every write of this run into the workdir goes through it (:mod:`cfl_jax.store.fenced`).
    self.fence = fenced.Fence(self)

  def __enter__(self) -> "WorkdirLock":
    verdict, error = "", None
    if self.enabled:
      try:
        if store.is_local(self.path):
          self._lock_file()
        else:
          self._lock_object()
      except WorkdirLocked as refusal:
        verdict = str(refusal)
      except Exception as caught:  # pylint: disable=broad-except (the store's and auth's errors vary)
        verdict, error = (f"Could not lock the workdir {self.workdir}: "
                          f"{type(caught).__name__}: {caught}"), caught
      agreement.broadcast(verdict)
    else:
      verdict = agreement.broadcast("")
      while verdict == _UNDECIDED:
        verdict = agreement.broadcast("")
    if verdict:
      raise WorkdirLocked(verdict) from error
    return self

  def __exit__(self, *exc_info) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
    if self._heartbeat is not None:
      self._stop.set()
      # A beat still in flight after this lands on a stale generation: refused, or deleted below.
      self._heartbeat.join(self.heartbeat_seconds)
      self._heartbeat = None
      # A run that lost its lock may be cut off a stalled store: it waits a heartbeat at most.
      releasing = threading.Thread(target=self._release, name="workdir-lock-release",
                                   daemon=True)
      releasing.start()
      releasing.join(self.heartbeat_seconds if self._lost else None)

  def check(self) -> None:
    """Raises :class:`WorkdirLockLost`, on every process, when process 0 no longer holds the lock;
    call it before each write of results (all processes together).

    A lock is lost when a rival's token has replaced this run's, or when its lease has run out
    (:func:`lease_seconds` after the last acknowledged heartbeat was sent).
    """
    lost = self._lost_reason() if self.enabled and self._object is not None else ""
    lost = agreement.broadcast(lost)
    if lost:
      raise WorkdirLockLost(lost)

  def deadline(self) -> float:
    """The ``time.monotonic()`` at which this process's lease ends: :func:`lease_seconds` after
    the last acknowledged heartbeat was sent (``math.inf`` for a local lock, or a process that
    took none)."""
    if not self.enabled or self._object is None:
      return math.inf
    return self._refreshed + lease_seconds(self.heartbeat_seconds, self.stale_seconds)

  def lost(self) -> WorkdirLockLost | None:
    """:meth:`check` on this process alone (no collective; any thread may call it): the error
    to stop with once the lease has run out or a rival took the lock, else None. A local lock
    (``flock``) lasts as long as the process; processes that took no lock hold nothing to lose.
    """
    lost = self._lost_reason() if self.enabled and self._object is not None else ""
    return WorkdirLockLost(lost) if lost else None

  # Local disks: flock.

  def _lock_file(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(self.path, "a+")  # pylint: disable=consider-using-with (held for the run)
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "unknown process"
      handle.close()
      raise _refusal(self.workdir, holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {_now()}\n")
    handle.flush()
    self._file = handle

  # GCS: an object written at the generation read.

  def _write(self, generation: str, timeout: float | None = None) -> bool:
    """Writes this run's record over ``generation`` within ``timeout`` seconds; True when this
    run now holds the lock."""
    assert self._object is not None
    sent = time.monotonic()
    written = self._object.write(self._record, generation, timeout)
    if written is None:  # 412: a rival's write, or ours whose answer was lost
      current = self._object.read()
      if _token(current) != self._token:
        return False
      assert current is not None
      written = current.generation
    self._generation, self._refreshed = written, sent
    return True

  def _lock_object(self) -> None:
    self._object = lock_object.GcsObject(self.path)
    watched, since = None, 0.0
    while True:
      current = self._object.read()
      if current is None:
        if self._write("0"):
          break
        raise _refusal(self.workdir, _holder(self._object.read()))
      if watched is None:
        watched, since = current.generation, time.monotonic()
        logging.info("The workdir %s is locked by %s; watching the lock for up to %.0f s to see "
                     "whether that run is alive.", self.workdir, _holder(current),
                     self.stale_seconds)
      elif current.generation != watched:  # rewritten: its holder is alive
        raise _refusal(self.workdir, _holder(current))
      unchanged = max(time.monotonic() - since, current.age or 0.0)
      if unchanged > self.stale_seconds:
        logging.warning("Taking over the stale lock of %s: %s, not written for %.0f s (more than "
                        "%.0f s; a preempted or killed run).", self.workdir, _holder(current),
                        unchanged, self.stale_seconds)
        if self._write(current.generation):
          break
        raise _refusal(self.workdir, _holder(self._object.read()))
      time.sleep(self.heartbeat_seconds / 3)
      agreement.broadcast(_UNDECIDED)
    self._stop.clear()
    self._heartbeat = threading.Thread(target=self._beat, name="workdir-lock-heartbeat",
                                       daemon=True)
    self._heartbeat.start()

  def _beat(self) -> None:
    assert self._object is not None
    failures = 0
    delay = self.heartbeat_seconds
    while not self._stop.wait(delay) and not self._lost_reason():
      try:
        # Bounded: gcsfs's own retries would hold a beat for half a minute past an outage.
        if not self._write(self._generation, timeout=self.heartbeat_seconds):
          self._lost = f"another run took it over ({_holder(self._object.read())})"
          logging.error("The lock of %s was taken over: %s.", self.workdir, self._lost)
          return
        failures, delay, self._last_error = 0, self.heartbeat_seconds, ""
      except Exception as error:  # pylint: disable=broad-except (store and auth errors vary; the heartbeat must outlive them)
        failures += 1
        delay = min(self.heartbeat_seconds, 2.0 ** (failures - 1))
        self._last_error = f"{type(error).__name__}: {error}"
        logging.warning("Could not refresh the lock of %s (attempt %d; %s); retrying in %.0f s.",
                        self.workdir, failures, self._last_error, delay)

  def _lost_reason(self) -> str:
    """Why this run no longer holds its lock, or "" while it does."""
    silent = time.monotonic() - self._refreshed
    if self._lost is None and time.monotonic() > self.deadline():
      error = f" (last error: {self._last_error})" if self._last_error else ""
      self._lost = (f"its heartbeat has not reached the store for {silent:.0f} s{error}, so "
                    "another run may take it over")
      self._stop.set()
    if self._lost is None:
      return ""
    return (f"This run lost the lock of the workdir {self.workdir}: {self._lost}. It stopped "
            "before its next checkpoint and writes nothing more there; run it again to resume.")

  def _release(self) -> None:
    """Deletes the lock object if it is still this run's (a rival's is left alone)."""
    assert self._object is not None
    try:
      if not self._object.delete(self._generation):
        current = self._object.read()  # ours at another generation: a lost heartbeat answer
        if _token(current) == self._token:
          assert current is not None
          self._object.delete(current.generation)
    except Exception as error:  # pylint: disable=broad-except (the run's own outcome matters more)
      logging.warning("Could not remove the lock of %s (%s: %s); the next run takes it over "
                      "after %.0f s.", self.workdir, type(error).__name__, error,
                      self.stale_seconds)
