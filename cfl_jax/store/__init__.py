"""The store a run's workdir lives in: a local disk or an object store (``gs://``), behind one API.

One job per module:

* ``clients``: the storage clients a run uses (gcsfs, TensorStore) and their time-outs.
* ``errors``: what a store error means (an outage, a failure that stops the run, or an answer),
  :class:`StoreUnavailable`.
* ``retry``: store calls run again through transient errors, within a retry budget.
* ``paths``: epath paths, atomic writes, directory moves and listings on disks and buckets.
* ``lock_object``: one GCS object written and deleted only at the generation it was read at.
* ``workdir_lock``: one run per workdir (``flock`` locally, a lock object in a bucket).
* ``agreement``: every process of a run raises the same error when a store phase fails on one.
* ``fenced``: every write into a workdir, admitted only while the run's lease holds.

The names most callers need are re-exported here: ``from cfl_jax import store`` then
``store.retrying(...)``, ``store.as_path(...)``.
"""

from cfl_jax.store.clients import use_runner_clients
from cfl_jax.store.errors import StoreUnavailable
from cfl_jax.store.errors import error_chain
from cfl_jax.store.errors import failure_cause
from cfl_jax.store.errors import is_transient
from cfl_jax.store.paths import PathLike
from cfl_jax.store.paths import as_path
from cfl_jax.store.paths import filesystem
from cfl_jax.store.paths import is_local
from cfl_jax.store.paths import move_tree
from cfl_jax.store.paths import relative_files
from cfl_jax.store.paths import write_atomic
from cfl_jax.store.retry import RETRY_SECONDS
from cfl_jax.store.retry import RETRY_SECONDS_VARIABLE
from cfl_jax.store.retry import retry_budget
from cfl_jax.store.retry import retrying

__all__ = [
    "RETRY_SECONDS",
    "RETRY_SECONDS_VARIABLE",
    "PathLike",
    "StoreUnavailable",
    "as_path",
    "error_chain",
    "failure_cause",
    "filesystem",
    "is_local",
    "is_transient",
    "move_tree",
    "relative_files",
    "retry_budget",
    "retrying",
    "use_runner_clients",
    "write_atomic",
]
