"""Workdir storage: local directories and object stores (``gs://``, ``s3://``) behind one API.

Every path a run reads or writes goes through :mod:`etils.epath`, as orbax and TFDS do, so a
workdir, a weights file or a list file may be local or in a bucket. Object stores differ from a
disk in three ways that matter here, and the helpers below hide them:

* no rename: a local file is written beside its destination and renamed over it; an object is
  written whole in one upload, which the store makes visible only once complete. Either way a
  reader (or a resumed run) sees the old content or the new one, never a torn file.
* no directories: a "directory" move is a copy of every object under the prefix followed by a
  delete of the originals (:func:`move_tree`).
* no append and no ``flock``: :class:`cfl_jax.training.reporting.RunFiles` and
  :class:`cfl_jax.training.workdir_lock.WorkdirLock` take other routes there.

Object stores also fail for a while, as networks and busy buckets do: a 429 or 5xx answer, a
time-out, a reset connection, an expired token. :func:`retrying` runs a store call again through
such transient errors, with back-off, for up to :data:`RETRY_SECONDS` (environment variable
:data:`RETRY_SECONDS_VARIABLE`), then raises :class:`StoreUnavailable`; every other error (404,
412, 403, a malformed object) passes through at once. The helpers below retry their store calls
this way; so do the run files and the checkpoint reader.

``gs://`` needs ``gcsfs`` (``pip install 'cfl-jax[experiments]'``); set ``EPATH_USE_TF=false``
to make epath use it instead of TensorFlow's GCS client (which ignores storage emulators).
"""

from collections.abc import Callable, Iterator
import functools
import os
import re
import time
from typing import TypeVar
import uuid

from absl import logging
from etils import epath
from etils.epath import backend as epath_backend

PathLike = str | os.PathLike
T = TypeVar("T")

#: How long one store call is retried (seconds from its first attempt) before the run gives up
#: with StoreUnavailable; an attempt under way when it expires is finished first (gcsfs alone
#: retries one request for about 30 s). Three minutes rides out an outage of a minute or two and
#: still stops a run whose store is gone within minutes. Tests lower it through the environment
#: variable.
RETRY_SECONDS = 180.0
RETRY_SECONDS_VARIABLE = "CFL_JAX_STORE_RETRY_SECONDS"  #: the variable that overrides it
_FIRST_DELAY_SECONDS, _LONGEST_DELAY_SECONDS = 1.0, 30.0

# HTTP answers that mean "try again": time-out, too many requests, server errors.
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
# Status codes TensorStore (orbax's array I/O) reports for an unreachable or slow store.
_TRANSIENT_STATUS = re.compile(r"\b(UNAVAILABLE|DEADLINE_EXCEEDED)\b")


class StoreUnavailable(RuntimeError):
  """The store (a bucket) kept failing with transient errors for longer than the retry budget;
  nothing was lost, and running again resumes from the newest checkpoint."""


def retry_budget() -> float:
  """Seconds :func:`retrying` keeps trying: :data:`RETRY_SECONDS_VARIABLE` if set, else
  :data:`RETRY_SECONDS`.

  Raises:
    ValueError: naming the variable, when it is not a number of seconds >= 0.
  """
  text = os.environ.get(RETRY_SECONDS_VARIABLE)
  if text is None:
    return RETRY_SECONDS
  try:
    seconds = float(text)
  except ValueError:
    seconds = -1.0
  if not seconds >= 0:
    raise ValueError(f"{RETRY_SECONDS_VARIABLE}={text!r} is not a number of seconds >= 0.")
  return seconds


@functools.cache
def _transient_types() -> tuple[type[BaseException], ...]:
  """Client exceptions that mean the store is unreachable or overloaded (of the clients that are
  installed): connection failures, time-outs, expired credentials."""
  found: list[type[BaseException]] = [ConnectionError, TimeoutError]
  try:
    import aiohttp  # pylint: disable=g-import-not-at-top (gcsfs's HTTP client, optional)
    found.append(aiohttp.ClientError)
  except ImportError:
    pass
  try:
    from google.auth import exceptions as auth  # pylint: disable=g-import-not-at-top
    found += [auth.RefreshError, auth.TransportError]
  except ImportError:
    pass
  try:
    import requests  # pylint: disable=g-import-not-at-top
    found += [requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError]
  except ImportError:
    pass
  return tuple(found)


def error_chain(error: BaseException) -> Iterator[BaseException]:
  """``error`` and the errors it was raised from or while handling, outermost first."""
  seen: BaseException | None = error
  while seen is not None:
    yield seen
    seen = seen.__cause__ or seen.__context__


def is_transient(error: BaseException) -> bool:
  """True when ``error`` (or an error it wraps) says the store is unreachable or busy: an HTTP
  408, 429 or 5xx, a connection failure or time-out, a credentials refresh that failed, or
  TensorStore's UNAVAILABLE / DEADLINE_EXCEEDED. Missing objects, failed preconditions and
  denied permissions are answers, not outages: False.

  Examples:
    >>> is_transient(ConnectionResetError())
    True
    >>> is_transient(FileNotFoundError('gs://bucket/run/metrics.jsonl'))
    False
  """
  for cause in error_chain(error):
    if isinstance(cause, (FileNotFoundError, FileExistsError, PermissionError)):
      return False
    status = getattr(cause, "code", None) or getattr(cause, "status", None)
    if isinstance(status, (int, str)) and str(status).isdigit():  # gcsfs's HttpError, aiohttp's
      return int(status) in _TRANSIENT_HTTP
    if isinstance(cause, _transient_types()) or _TRANSIENT_STATUS.search(str(cause)):
      return True
  return False


def _reason(error: BaseException) -> str:
  """The first line of ``error``'s message, or its type's name."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


def retrying(what: str, call: Callable[[], T], *, budget: float | None = None) -> T:
  """``call()``, run again after each transient store error (:func:`is_transient`) with
  exponential back-off (1 s, 2 s, ... up to 30 s) until ``budget`` seconds have passed.

  Args:
    what: what the call does, for the log and the error ("uploading gs://b/run/metrics.jsonl").
    call: the store operation; it must be safe to repeat (a whole upload, a read, a listing).
    budget: seconds; default :func:`retry_budget`.

  Raises:
    StoreUnavailable: when the errors are still transient after ``budget`` seconds.
    Exception: any other error of ``call``, at once.

  Examples:
    >>> retrying('reading a number', lambda: 42)
    42
  """
  budget = retry_budget() if budget is None else budget
  deadline = time.monotonic() + budget
  delay = _FIRST_DELAY_SECONDS
  while True:
    try:
      return call()
    except Exception as error:  # pylint: disable=broad-except (only transient ones are retried)
      if not is_transient(error):
        raise
      left = deadline - time.monotonic()
      if left <= 0:
        raise StoreUnavailable(
            f"The store kept failing while {what} for {budget:.0f} s ({_reason(error)}). Nothing "
            "was lost: run again to resume from the newest checkpoint.") from error
      logging.warning("Store error while %s (%s); trying again in %.0f s.", what, _reason(error),
                      min(delay, left))
      time.sleep(min(delay, left))
      delay = min(2 * delay, _LONGEST_DELAY_SECONDS)


def is_local(path: PathLike) -> bool:
  """True for a path on a local or mounted file system, False for ``scheme://...`` URLs."""
  return "://" not in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
  """``path`` as an :class:`etils.epath.Path`, made absolute when it is local.

  Examples:
    >>> str(as_path('gs://bucket/run'))
    'gs://bucket/run'
    >>> as_path('runs/a').is_absolute()
    True
  """
  return epath.Path(os.path.abspath(path) if is_local(path) else path)


def write_atomic(path: PathLike, data: str | bytes) -> None:
  """Writes ``data`` to ``path`` so that readers see the old content or the new, never a part.

  Locally a temporary sibling is renamed over ``path``; on an object store the object is written
  in one upload, retried through transient errors (:func:`retrying`). Missing parent
  directories are created.

  Examples:
    >>> import tempfile
    >>> path = as_path(tempfile.mkdtemp()) / 'sub' / 'note.txt'
    >>> write_atomic(path, 'hello')
    >>> path.read_text()
    'hello'
  """
  destination = as_path(path)
  content = data.encode() if isinstance(data, str) else data
  if not is_local(destination):
    retrying(f"writing {destination}", lambda: destination.write_bytes(content))
    return
  destination.parent.mkdir(parents=True, exist_ok=True)
  temporary = destination.parent / f".{destination.name}.{uuid.uuid4().hex}.tmp"
  try:
    temporary.write_bytes(content)
    os.replace(temporary, destination)
  finally:
    if temporary.exists():
      temporary.unlink()


def filesystem(path: PathLike):
  """``(fsspec file system, key)`` of an object-store URL (``gs://`` needs gcsfs).

  The file system is the very instance :mod:`etils.epath` (and so orbax) uses for that scheme:
  fsspec instances cache listings, so an object moved or deleted through another instance would
  still be listed through epath's.
  """
  url = os.fspath(path)
  store = epath_backend.fsspec_backend.fs(url)
  return store, store._strip_protocol(url)  # pylint: disable=protected-access (fsspec's parser)


def move_tree(source: PathLike, target: PathLike) -> None:
  """Moves the directory (or object prefix) ``source`` to ``target``, whose parent may be new.

  Locally this is one rename. On an object store every object is copied, then the originals are
  deleted, each step retried through transient errors (:func:`retrying`), so an interrupted move
  leaves ``source`` whole (and maybe a partial ``target``).
  """
  if is_local(source):
    as_path(target).parent.mkdir(parents=True, exist_ok=True)
    os.replace(as_path(source), as_path(target))
    return
  store, source_key = filesystem(source)
  target_key = filesystem(target)[1]

  def delete_source():
    store.invalidate_cache(source_key)
    if store.exists(source_key):  # a retry after a delete that took effect finds nothing
      store.rm(source_key, recursive=True)

  retrying(f"copying {source} to {target}",
           lambda: store.copy(source_key, target_key, recursive=True))
  retrying(f"deleting {source}", delete_source)


def relative_files(root: PathLike) -> set[str]:
  """The paths, relative to ``root``, of every file under it: one walk locally, one paginated
  listing on an object store (instead of a request per file), retried through transient errors."""
  if is_local(root):
    top = os.fspath(as_path(root))
    return {os.path.relpath(os.path.join(directory, name), top)
            for directory, _, names in os.walk(top) for name in names}
  store, key = filesystem(root)
  prefix = key.rstrip("/") + "/"
  return {found[len(prefix):] for found in retrying(f"listing {root}", lambda: store.find(key))}
