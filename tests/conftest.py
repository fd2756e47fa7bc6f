"""Test-session setup: eight fake CPU devices, so sharding tests use real multi-device meshes.

The flag must be set before JAX initialises its backends, hence at conftest import time.
Single-device code is unaffected: unsharded arrays live on device 0.
"""
import contextlib
import os
import time

import pytest

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _persistent_compilation_cache(directory):
  """JAX's persistent compilation cache in ``directory`` (every program cached), restored after.

  Yields the settings as environment variables, for subprocesses.
  """
  # Imported here: JAX must not initialise before XLA_FLAGS above is set.
  # pylint: disable=g-import-not-at-top
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cache_lib
  # pylint: enable=g-import-not-at-top
  settings = {"jax_compilation_cache_dir": str(directory),
              "jax_persistent_cache_min_compile_time_secs": 0.0,
              "jax_persistent_cache_min_entry_size_bytes": -1}
  saved = {key: getattr(jax.config, key) for key in settings}
  for key, value in settings.items():
    jax.config.update(key, value)
  cache_lib.reset_cache()
  try:
    yield {key.upper(): str(value) for key, value in settings.items()}
  finally:
    for key, value in saved.items():
      jax.config.update(key, value)
    cache_lib.reset_cache()


@pytest.fixture
def compilation_cache(tmp_path):
  """A persistent compilation cache shared by this process and its subprocesses (test speed:
  the rerun loads the programs the in-process run compiled instead of compiling them again)."""
  with _persistent_compilation_cache(tmp_path / "xla_cache") as environment:
    yield environment


@pytest.fixture(scope="session", autouse=True)
def session_compilation_cache(tmp_path_factory):
  """One persistent compilation cache for every in-process run of this test process (each xdist
  worker has its own, so no entry is read while another process writes it). Test speed: the
  tiny runs of many modules compile identical initialisation, train and eval programs (JAX
  traces each run's functions anew, and only this cache spares their compilation), and
  compilation dominates a few-step run on the CPU. A test that needs an empty cache takes
  ``compilation_cache``; runner subprocesses use the runner's own unless a test passes this on."""
  with _persistent_compilation_cache(tmp_path_factory.mktemp("jax_cache")) as environment:
    yield environment


@pytest.fixture(scope="module")
def module_compilation_cache(session_compilation_cache):
  """The settings of the session's cache, as environment variables for subprocesses."""
  return session_compilation_cache


@pytest.fixture
def runner_subprocesses_share_the_module_cache(module_compilation_cache, monkeypatch):
  """Runner subprocesses load the programs this process compiled (test time: a cached executable
  is the same program, so no result depends on it). Their runs' own ``compilation_cache`` then
  stays unused: JAX is configured with a cache already."""
  for key, value in module_compilation_cache.items():
    monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def gcs_bucket(tmp_path_factory):
  """``gs://`` URL of a bucket on a real GCS API server on loopback (``gcp-storage-emulator``,
  started by ``tests/gcs_emulator.py`` with the download headers and upload preconditions of real
  GCS that it lacks).

  The environment holds what a user of an emulator sets, and nothing else: its address for
  gcsfs and google-cloud-storage (``STORAGE_EMULATOR_HOST``) and for TensorStore
  (``TENSORSTORE_GCS_HTTP_URL``), and a test token. This process then uses the runner's own
  clients (:func:`cfl_jax.store.use_runner_clients`), as its runner subprocesses do.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("gcp_storage_emulator") is None:
    pytest.fail("gcp-storage-emulator is not installed: pip install -e '.[test]'")
  import gcs_emulator  # pylint: disable=g-import-not-at-top
  bucket = "cfl-jax-test"
  with gcs_emulator.serving(bucket, tmp_path_factory.mktemp("gcs") / "emulator.log"):
    from cfl_jax import store  # pylint: disable=g-import-not-at-top (after XLA_FLAGS)
    store.use_runner_clients()
    yield f"gs://{bucket}"


class StoreFaults:
  """The fault plan of the ``gcs_bucket`` emulator (see ``tests/gcs_emulator.py``)."""

  def __init__(self, url: str):
    self.url = url + "/_faults"

  def _call(self, method: str, plan: dict | None = None) -> dict:
    import json  # pylint: disable=g-import-not-at-top
    import urllib.request  # pylint: disable=g-import-not-at-top
    request = urllib.request.Request(self.url, method=method,
                                     data=None if plan is None else json.dumps(plan).encode())
    with urllib.request.urlopen(request, timeout=30) as answer:
      return json.loads(answer.read())

  def set(self, **plan) -> None:
    """Replaces the plan (keys: seed, rate, statuses, after_effect, match, outages, lose)."""
    self._call("PUT", plan)

  def counts(self) -> dict[str, int]:
    """What the plan injected so far (requests seen, refused, failed after effect, ...)."""
    return self._call("GET")["counts"]

  def clear(self) -> None:
    self._call("DELETE")


@pytest.fixture
def gcs_faults(gcs_bucket):
  """The ``gcs_bucket`` emulator's faults (503/429 before or after effect, outages, lost
  answers), set by the test and cleared after it."""
  del gcs_bucket  # started, and its URL in the environment
  faults = StoreFaults(os.environ["STORAGE_EMULATOR_HOST"])
  faults.clear()
  try:
    yield faults
  finally:
    faults.clear()


# Fixtures of the tests that train (a compilation cache shared with their runs or subprocesses)
# or talk to the GCS emulator.
_SLOW_FIXTURES = {"gcs_bucket", "compilation_cache", "module_compilation_cache"}


@pytest.fixture
def slow_tensorboard_thread(monkeypatch):
  """TensorBoard's event writer thread, slowed to 20 ms an event (as on a loaded machine, where
  CI once lost the last scalar): events are still queued when a run syncs its files."""
  from tensorboardX import event_file_writer  # pylint: disable=g-import-not-at-top
  write_event = event_file_writer.EventsWriter.write_event
  monkeypatch.setattr(event_file_writer.EventsWriter, "write_event",
                      lambda self, event: (time.sleep(0.02), write_event(self, event))[1])


def pytest_configure(config):
  """``--dist loadfile`` hands whole files to the workers in collection order (below), not
  xdist's default order by number of tests, which starts the files of few but slow tests last."""
  if hasattr(config.option, "loadscopereorder"):  # pytest-xdist is installed
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  """The files with tests that train or use the emulator run first, each file's tests in order.

  Test time: these files take minutes each (training runs, subprocesses, real-time waits) where
  most take seconds; started last, one of them would keep one worker busy while the other idles.
  """
  slow = {item.path for item in items
          if _SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ()))}
  items.sort(key=lambda item: item.path not in slow)  # stable: files stay whole and in order
