"""Test-session setup: eight fake CPU devices, so sharding tests use real multi-device meshes.

The flag must be set before JAX initialises its backends, hence at conftest import time.
Single-device code is unaffected: unsharded arrays live on device 0.
"""
import os

import pytest

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """A persistent compilation cache for a module's runs, restored afterwards.

  Runs over the same number of classes compile identical initialisation and eval programs (and
  identical train steps for the same recipe and loss); the cache compiles each once, and
  compilation dominates a few-step run on the CPU.
  """
  # Imported here: JAX must not initialise before XLA_FLAGS above is set.
  # pylint: disable=g-import-not-at-top
  import jax as jax_lib
  from jax.experimental.compilation_cache import compilation_cache as cache_lib
  # pylint: enable=g-import-not-at-top
  saved = {name: getattr(jax_lib.config, name) for name in _CACHE_OPTIONS}
  for name, value in zip(_CACHE_OPTIONS, (str(tmp_path_factory.mktemp("jax_cache")), 0.0, 0)):
    jax_lib.config.update(name, value)
  cache_lib.reset_cache()
  yield
  for name, value in saved.items():
    jax_lib.config.update(name, value)
  cache_lib.reset_cache()
