"""The storage clients of a run, chosen by the run itself whatever is installed or set.

A run talks to a bucket through two clients, and :func:`use_runner_clients` (called by
:func:`cfl_jax.training.train_and_evaluate` before its first store call) fixes both, so a run
uses exactly the configuration the tests prove, on any machine:

* **gcsfs** for everything that goes through :mod:`etils.epath` and fsspec: our run files,
  listings, moves and workdir lock, and orbax's directory work (step directories, metadata,
  commit markers). epath would pick TensorFlow's GCS client whenever TensorFlow is installed
  (as the ``experiments`` extra does), which ignores ``STORAGE_EMULATOR_HOST`` and has its own
  retries and errors; ``EPATH_USE_TF=false`` is set here, and epath's cached choice cleared. The
  client is gcsfs's core JSON-API file system **without** HNS support (what
  ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` selects), whatever that variable says: a workdir
  needs only objects (orbax marks a finished step with a commit object, not a rename), the core
  client's every request goes through one retry loop whose time-outs are set below, and the HNS
  variant adds a second client (gRPC and the Storage Control API, with google-api-core's own
  retry schedule) that the time-outs here do not bound and the emulator cannot serve. Zonal
  (Rapid) buckets, which need that variant, are not supported.
* **TensorStore** for orbax's arrays, through its own HTTP (curl) transport and retry loop.

Both are given time-outs that make :func:`cfl_jax.store.retrying`'s budget a real bound:

* a request that moves no byte for :func:`stall_seconds` (connecting or waiting for an answer)
  fails: aiohttp's ``sock_connect`` / ``sock_read`` for gcsfs; curl's connect time-out and its
  low-speed limit (under 1 byte/s for that long) for TensorStore;
* each client makes at most :data:`ATTEMPTS` attempts of a request, 1 s and 2 s apart, so one
  client call lasts about ``ATTEMPTS * (stall_seconds + 1 s) + 3 s`` (and back-off jitter) on
  a store that stopped answering: 25 s at the default budget, within the "+ 30 s" of the stall
  bound (curl notices a stall up to a second late).

A call wrapped in :func:`~cfl_jax.store.retrying` (run files, moves, listings, checkpoint
reads) therefore gives up at most ``budget + 30 s`` after the store first failed it, and an
orbax save (not wrapped: a failed save stops the run) within 30 s.
"""

import functools
import os

from cfl_jax.store import fenced
from cfl_jax.store.retry import retry_budget

#: Requests a client makes for one call before it reports the error (its own retries).
ATTEMPTS = 3
#: Seconds a request may move no byte before it counts as failed, at the default retry budget.
STALL_SECONDS = 6.0
_SHORTEST_STALL_SECONDS = 2.0


def stall_seconds(budget: float) -> float:
  """Seconds without a byte after which a request has stalled: ``budget / 30`` within
  2 s .. :data:`STALL_SECONDS` (6 s at the default 180 s budget; the scaled-down budgets of
  tests get short time-outs too).

  Examples:
    >>> stall_seconds(180.0), stall_seconds(90.0), stall_seconds(4.0)
    (6.0, 3.0, 2.0)
  """
  return min(STALL_SECONDS, max(_SHORTEST_STALL_SECONDS, budget / 30))


def _tensorstore_settings(stall: float) -> tuple[dict[str, str], dict]:
  """(environment variables of TensorStore's curl transport, its ``gcs_request_retries``)."""
  seconds = str(max(1, round(stall)))
  environment = {"TENSORSTORE_CURL_CONNECT_TIMEOUT_SECONDS": seconds,
                 "TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS": seconds,
                 "TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES": "1"}
  retries = {"max_retries": ATTEMPTS, "initial_delay": "1s", "max_delay": "2s"}
  return environment, retries


@functools.cache
def _gcs_file_system_class():
  """gcsfs's core file system (no HNS), its requests attempted :data:`ATTEMPTS` times."""
  # pylint: disable=g-import-not-at-top (gcsfs is optional: the experiments extra)
  from gcsfs import core
  from gcsfs import retry
  # pylint: enable=g-import-not-at-top

  attempt = core.GCSFileSystem._request.__wrapped__  # one attempt of a request

  async def fenced_attempt(self, method, *args, **kwargs):
    return await fenced.admit_request(method, attempt(self, method, *args, **kwargs))

  class RunnerGCSFileSystem(core.GCSFileSystem):
    """``gcsfs.core.GCSFileSystem`` with fewer attempts per request (see the module), each
    attempt to change the store admitted by the run's fence
    (:func:`cfl_jax.store.fenced.fencing_requests`)."""
    # The base class binds its retry count (6 attempts, 1 + 2 + ... + 16 s apart) when defined.
    _request = retry.retry_request(retries=ATTEMPTS)(fenced_attempt)

  return RunnerGCSFileSystem


def _use_gcsfs(stall: float) -> bool:
  """Registers the runner's gcsfs class for ``gs://`` / ``gcs://`` with ``stall``-second
  time-outs; False when gcsfs is not installed."""
  # pylint: disable=g-import-not-at-top
  try:
    import aiohttp
    import fsspec
    cls = _gcs_file_system_class()
  except ImportError:
    return False
  from etils.epath import backend as epath_backend
  # pylint: enable=g-import-not-at-top
  timeout = aiohttp.ClientTimeout(total=None, sock_connect=stall, sock_read=stall)
  if all(fsspec.get_filesystem_class(protocol) is cls and
         fsspec.config.conf.get(protocol, {}).get("requests_timeout") == timeout
         for protocol in cls.protocol):
    return True
  for protocol in cls.protocol:
    fsspec.register_implementation(protocol, cls, clobber=True)
    # fsspec passes these to every new instance (a user's other settings, credentials, stay).
    fsspec.config.conf[protocol] = {**fsspec.config.conf.get(protocol, {}),
                                    "requests_timeout": timeout}
  cls.clear_instance_cache()
  # epath keeps one instance per scheme: the next gs:// path gets one of the class above.
  type(epath_backend.fsspec_backend)._get_filesystem.cache_clear()  # pylint: disable=protected-access
  return True


def _epath_without_tensorflow() -> None:
  """Makes epath use fsspec (gcsfs) for ``gs://`` even where TensorFlow is installed."""
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  os.environ["EPATH_USE_TF"] = "false"  # the switch epath reads, once per process ...
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access (... and caches)


def _use_tensorstore(stall: float) -> None:
  """TensorStore's curl time-outs (read when its transport starts: set before the first array
  I/O) and its GCS retries in every context orbax creates."""
  environment, retries = _tensorstore_settings(stall)
  os.environ.update(environment)
  try:
    # pylint: disable=g-import-not-at-top
    from orbax.checkpoint._src.serialization import tensorstore_utils
  except ImportError:
    return
  # orbax builds each TensorStore context from these defaults (a deep copy per call).
  for defaults in (tensorstore_utils._BASE_TS_CONTEXT,  # pylint: disable=protected-access
                   tensorstore_utils._DEFAULT_OCDBT_TS_CONTEXT):  # pylint: disable=protected-access
    defaults["gcs_request_retries"] = dict(retries)


def use_runner_clients(budget: float | None = None) -> float:
  """Fixes the run's storage clients and their time-outs (see the module); idempotent.

  Call it before the first store call of the process: TensorStore reads its time-outs when its
  HTTP transport starts.

  Args:
    budget: the retry budget the time-outs are scaled to; default
      :func:`~cfl_jax.store.retry_budget`.

  Returns:
    The stall time-out in seconds.
  """
  stall = stall_seconds(retry_budget() if budget is None else budget)
  _epath_without_tensorflow()
  _use_gcsfs(stall)
  _use_tensorstore(stall)
  return stall
