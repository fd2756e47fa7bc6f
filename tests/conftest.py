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


@pytest.fixture
def compilation_cache(tmp_path):
  """A persistent compilation cache shared by this process and its subprocesses (test speed:
  the rerun loads the programs the in-process run compiled instead of compiling them again)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  settings = {"jax_compilation_cache_dir": str(tmp_path / "xla_cache"),
              "jax_persistent_cache_min_compile_time_secs": 0.0,
              "jax_persistent_cache_min_entry_size_bytes": -1}
  saved = {key: getattr(jax.config, key) for key in settings}
  for key, value in settings.items():
    jax.config.update(key, value)
  cc.reset_cache()
  try:
    yield {key.upper(): str(value) for key, value in settings.items()}
  finally:
    for key, value in saved.items():
      jax.config.update(key, value)
    cc.reset_cache()
