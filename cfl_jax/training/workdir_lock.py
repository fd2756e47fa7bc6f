"""One run per workdir: an exclusive lock, on a local disk or in a bucket.

Local workdirs: an ``flock`` on ``workdir/.lock``, which the operating system releases when its
process dies, so the lock of a killed run is free at once; the file records who holds it.

Object stores (``gs://``, ``s3://``): ``workdir/.lock`` is an object created only if absent (a
create-only upload: GCS's ``ifGenerationMatch=0`` precondition through gcsfs, S3's
``If-None-Match``), then read back to check that this run's token is the one stored (which also
guards stores and emulators that ignore the precondition). It holds host, process id, start time
and a heartbeat that a background thread rewrites every ``heartbeat_seconds``. A preempted VM never
deletes its lock, so a lock whose heartbeat is older than ``stale_seconds`` is taken over, with a
warning naming the old holder. A run that finds its token replaced (another run took over after
its heartbeats stopped reaching the store) logs an error and stops refreshing.
"""

import datetime
import fcntl
import functools
import json
import os
import socket
import threading
import time
from typing import IO, Any
import uuid

from absl import logging

from cfl_jax import storage

HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0


class WorkdirLocked(RuntimeError):
  """Another live run holds the workdir."""


def _now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


def _refusal(workdir: str, holder: str) -> WorkdirLocked:
  return WorkdirLocked(
      f"The workdir {workdir} is in use by another run ({holder}); wait for it to finish, or "
      "give this run its own --workdir.")


class WorkdirLock:
  """An exclusive lock on ``workdir`` for the duration of a run (process 0 only).

  Args:
    workdir: a local directory or an object-store URL.
    enabled: False on the processes that do not write the run files (they take no lock).
    heartbeat_seconds: object stores: how often the lock's heartbeat is refreshed.
    stale_seconds: object stores: a lock whose heartbeat is older is taken over.

  Raises:
    WorkdirLocked: on entry, when another live run holds the lock.

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

  def __init__(self, workdir: storage.PathLike, *, enabled: bool = True,
               heartbeat_seconds: float = HEARTBEAT_SECONDS,
               stale_seconds: float = STALE_SECONDS):
    root = storage.as_path(workdir)
    self.workdir = os.fspath(root)
    self.path = root / ".lock"
    self.enabled = enabled
    self.heartbeat_seconds, self.stale_seconds = heartbeat_seconds, stale_seconds
    self._file: IO[str] | None = None
    self._record: dict[str, Any] | None = None
    self._stop = threading.Event()
    self._heartbeat: threading.Thread | None = None

  def __enter__(self) -> "WorkdirLock":
    if not self.enabled:
      return self
    if storage.is_local(self.path):
      self._lock_file()
    else:
      self._lock_object()
    return self

  def __exit__(self, *exc_info) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
    if self._record is not None:
      self._stop.set()
      if self._heartbeat is not None:
        self._heartbeat.join()
      if self._holds():
        self._remove()
      self._record = None

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

  # Object stores: a create-only object with a heartbeat.

  @functools.cached_property
  def _store(self):
    """``(fsspec file system, key)`` of the lock object."""
    return storage.filesystem(self.path)

  def _write(self, record: dict[str, Any], **kwargs) -> None:
    filesystem, key = self._store
    filesystem.pipe_file(key, json.dumps(record).encode(), **kwargs)

  def _remove(self) -> None:
    filesystem, key = self._store
    filesystem.rm_file(key)

  def _read(self) -> dict | None:
    """The stored lock record, None when there is none (an unreadable one counts as stale)."""
    try:
      filesystem, key = self._store
      text = filesystem.cat_file(key)
    except FileNotFoundError:
      return None
    try:
      return json.loads(text)
    except ValueError:
      return {"holder": "an unreadable lock object", "heartbeat": 0.0}

  def _holder(self) -> str:
    """Who holds the lock now, for messages."""
    return (self._read() or {}).get("holder", "unknown")

  def _lock_object(self) -> None:
    record = {"token": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname(),
              "started": _now(), "heartbeat": time.time()}
    record["holder"] = f"pid {record['pid']} on {record['host']}, started {record['started']}"
    existing = self._read()
    if existing is not None:
      age = time.time() - existing.get("heartbeat", 0.0)
      if age <= self.stale_seconds:
        raise _refusal(self.workdir, f"{existing.get('holder')}, last heartbeat {age:.0f} s ago")
      logging.warning("Taking over the stale lock of %s: %s, last heartbeat %.0f s ago (more "
                      "than %.0f s; a preempted or killed run).", self.workdir,
                      existing.get("holder"), age, self.stale_seconds)
      self._remove()
    try:
      self._write(record, mode="create")
    except FileExistsError:  # another run created it between our read and our write
      raise _refusal(self.workdir, self._holder()) from None
    self._record = record
    if not self._holds():
      self._record = None
      raise _refusal(self.workdir, self._holder())
    self._stop.clear()
    self._heartbeat = threading.Thread(target=self._beat, name="workdir-lock-heartbeat",
                                       daemon=True)
    self._heartbeat.start()

  def _holds(self) -> bool:
    stored = self._read()
    return (self._record is not None and stored is not None
            and stored.get("token") == self._record["token"])

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_seconds):
      try:
        if self._record is None or not self._holds():
          logging.error("The lock of %s was taken over by another run (%s); this run no longer "
                        "holds it.", self.workdir, self._holder())
          return
        self._record["heartbeat"] = time.time()
        self._write(self._record)
      except OSError as error:  # a passing store outage: the next beat tries again
        logging.warning("Could not refresh the lock of %s: %s", self.workdir, error)
