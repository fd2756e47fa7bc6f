"""Workdir paths: local directories and object stores (``gs://``, ``s3://``) behind one API.

Every path a run reads or writes goes through :mod:`etils.epath`, as orbax and TFDS do, so a
workdir, a weights file or a list file may be local or in a bucket. Object stores differ from a
disk in three ways that matter here, and the helpers below hide them:

* no rename: a local file is written beside its destination and renamed over it; an object is
  written whole in one upload, which the store makes visible only once complete. Either way a
  reader (or a resumed run) sees the old content or the new one, never a torn file.
* no directories: a "directory" move is a copy of every object under the prefix followed by a
  delete of the originals (:func:`move_tree`).
* no append and no ``flock``: :class:`cfl_jax.training.reporting.RunFiles` and
  :class:`cfl_jax.store.workdir_lock.WorkdirLock` take other routes there.

Object stores also fail for a while, as networks and busy buckets do: a 429 or 5xx answer, a
time-out, a stalled or reset connection, an expired token. :func:`~cfl_jax.store.retry.retrying`
runs a store call again through such transient errors (:func:`cfl_jax.store.errors.is_transient`),
with back-off, for up to :data:`~cfl_jax.store.retry.RETRY_SECONDS` (environment variable
:data:`~cfl_jax.store.retry.RETRY_SECONDS_VARIABLE`), then raises
:class:`~cfl_jax.store.errors.StoreUnavailable`; every other error (404, 412, 403, a malformed
object) passes through at once. The helpers below retry their store calls this way; so do the run
files and the checkpoint reader.

``gs://`` needs ``gcsfs`` (the ``experiments`` extra). Which client epath uses for it, and with
which time-outs, is the run's choice, not the environment's:
:func:`cfl_jax.store.clients.use_runner_clients` makes epath use gcsfs, never TensorFlow's GCS
client, in every process that runs :func:`cfl_jax.training.train_and_evaluate`.
"""

import os
import uuid

from etils import epath
from etils.epath import backend as epath_backend

from cfl_jax.store.retry import retrying

PathLike = str | os.PathLike


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
