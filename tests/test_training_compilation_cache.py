"""JAX's persistent compilation cache of a run: in the workdir by default (a bucket included), so
a relaunch in a fresh process loads its programs; ``config.compilation_cache`` names another
place or turns it off; a cache JAX is already configured with (the tests' fixtures) is kept."""

import contextlib
import os
import shutil
import uuid

from etils import epath
import jax
import numpy as np
import pytest

from cfl_jax.training import ConfigError, resolve_config, train_and_evaluate
from cfl_jax.training.compilation_cache import persistent_compilation_cache
from training_helpers import finish, start_trainer, tiny_config

_CONFIG = tiny_config(num_train_steps=6, log_every_steps=3, checkpoint_every_steps=0)


def _entries(directory) -> set[str]:
  """Names of the cache entries in ``directory`` (none when it does not exist)."""
  directory = epath.Path(directory)
  if not directory.exists():
    return set()
  return {p.name for p in directory.iterdir() if p.name.endswith("-cache")}


@contextlib.contextmanager
def _compilations():
  """Counts of programs compiled and of compilations that looked at the persistent cache."""
  counts = {"compiled": 0, "looked_up": 0, "hits": 0}

  def on_duration(event, duration, **kwargs):
    del duration, kwargs
    counts["compiled"] += event == "/jax/core/compile/backend_compile_duration"

  def on_event(event, **kwargs):
    del kwargs
    counts["looked_up"] += event == "/jax/compilation_cache/compile_requests_use_cache"
    counts["hits"] += event == "/jax/compilation_cache/cache_hits"

  jax.clear_caches()  # programs earlier tests compiled in this process are compiled again
  jax.monitoring.register_event_duration_secs_listener(on_duration)
  jax.monitoring.register_event_listener(on_event)
  try:
    yield counts
  finally:
    jax.monitoring.unregister_event_duration_listener(on_duration)
    jax.monitoring.unregister_event_listener(on_event)


def test_a_relaunch_in_a_fresh_process_loads_its_programs_from_the_bucket(gcs_bucket):
  workdir = epath.Path(f"{gcs_bucket}/{uuid.uuid4().hex[:8]}/run")
  env = {"JAX_COMPILATION_CACHE_DIR": "", "JAX_LOG_COMPILES": "1"}  # no cache configured
  returncode, output = finish(start_trainer(os.fspath(workdir), _CONFIG, env=env), timeout=180)
  assert returncode == 0, output
  written = _entries(workdir / "compilation_cache")
  for program in ("jit_create_train_state", "jit_train_step", "jit_eval_step"):
    assert any(name.startswith(program + "-") for name in written), (program, written)

  for path in workdir.iterdir():  # a new VM: only the bucket's cache is left of the first run
    if path.name != "compilation_cache":
      path.rmtree() if path.is_dir() else path.unlink()
  returncode, output = finish(start_trainer(os.fspath(workdir), _CONFIG, env=env), timeout=180)
  assert returncode == 0, output
  assert _entries(workdir / "compilation_cache") == written  # every program was found
  for program in ("jit_create_train_state", "jit_train_step", "jit_eval_step"):
    assert f"Persistent compilation cache hit for '{program}'" in output, program


def test_a_cache_jax_is_configured_with_is_left_alone(tmp_path, compilation_cache):
  configured = compilation_cache["JAX_COMPILATION_CACHE_DIR"]
  with _compilations() as counts:
    train_and_evaluate(_CONFIG, tmp_path / "run")
  assert counts["compiled"] > 0 and _entries(configured)
  assert not (tmp_path / "run" / "compilation_cache").exists()
  assert jax.config.jax_compilation_cache_dir == configured


def test_a_named_directory_holds_the_cache_and_jax_settings_come_back(tmp_path,
                                                                      compilation_cache):
  configured = compilation_cache["JAX_COMPILATION_CACHE_DIR"]
  shared = tmp_path / "shared_cache"
  with _compilations() as counts:
    train_and_evaluate({**_CONFIG, "compilation_cache": str(shared)}, tmp_path / "run")
  assert counts["compiled"] > 0
  assert any(name.startswith("jit_train_step-") for name in _entries(shared))
  assert not _entries(configured) and not (tmp_path / "run" / "compilation_cache").exists()
  assert jax.config.jax_compilation_cache_dir == configured
  before = _entries(shared)
  jax.jit(lambda x: x * 3 + 1)(np.arange(7.0))  # after the run: JAX's own cache again
  assert _entries(shared) == before and _entries(configured)


def test_off_turns_even_a_configured_cache_off_and_a_resume_may_change_it(tmp_path,
                                                                          compilation_cache):
  configured = compilation_cache["JAX_COMPILATION_CACHE_DIR"]
  with _compilations() as counts:
    train_and_evaluate({**_CONFIG, "compilation_cache": "off"}, tmp_path / "run")
  assert counts["compiled"] > 0 and counts["looked_up"] == 0
  assert not _entries(configured) and not (tmp_path / "run" / "compilation_cache").exists()
  assert jax.config.jax_enable_compilation_cache
  # Where programs are cached is no part of the trajectory: another choice resumes the run.
  summary = train_and_evaluate({**_CONFIG, "compilation_cache": "auto"}, tmp_path / "run")
  assert summary["resumed_from_step"] == _CONFIG["num_train_steps"]


def test_auto_without_a_configured_cache_uses_the_workdir(tmp_path):
  saved = jax.config.jax_compilation_cache_dir
  threshold = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_compilation_cache_dir", None)  # a process that configured no cache
  try:
    with _compilations() as counts:
      with persistent_compilation_cache("auto", tmp_path / "run"):
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
        jax.jit(lambda x: x * 5 - 2)(np.arange(3.0))
      jax.clear_caches()
      with persistent_compilation_cache("auto", tmp_path / "run"):
        jax.jit(lambda x: x * 5 - 2)(np.arange(3.0))
    assert len(_entries(tmp_path / "run" / "compilation_cache")) == 1 and counts["hits"] == 1
    assert jax.config.jax_compilation_cache_dir is None
    assert jax.config.jax_persistent_cache_min_compile_time_secs == threshold
  finally:
    jax.config.update("jax_compilation_cache_dir", saved)


def test_a_cache_copied_elsewhere_still_hits(tmp_path):
  with _compilations() as counts:
    with persistent_compilation_cache(str(tmp_path / "a"), tmp_path / "run"):
      jax.jit(lambda x: x * 7 + 4)(np.arange(5.0))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    jax.clear_caches()
    with persistent_compilation_cache(str(tmp_path / "b"), tmp_path / "run"):
      jax.jit(lambda x: x * 7 + 4)(np.arange(5.0))
  assert counts["hits"] == 1 and _entries(tmp_path / "b") == _entries(tmp_path / "a")


def test_a_cache_that_cannot_be_read_or_written_never_fails_the_run(tmp_path):
  cache = tmp_path / "cache"
  saved = jax.config.jax_raise_persistent_cache_errors
  jax.config.update("jax_raise_persistent_cache_errors", True)  # what the cache overrides
  try:
    with _compilations() as counts:
      with persistent_compilation_cache(str(cache), tmp_path / "run"):
        jax.jit(lambda x: x * 9 - 1)(np.arange(4.0))
      for entry in _entries(cache):  # damaged entries: unreadable
        (cache / entry).write_bytes(b"not a compiled program")
      jax.clear_caches()
      with persistent_compilation_cache(str(cache), tmp_path / "run"):
        with pytest.warns(UserWarning, match="Error reading persistent compilation cache"):
          assert jax.jit(lambda x: x * 9 - 1)(np.arange(4.0)).tolist() == [-1, 8, 17, 26]
        shutil.rmtree(cache)
        cache.write_text("a file where the cache's directory was: unwritable")
        with pytest.warns(UserWarning, match="Error writing persistent compilation cache"):
          assert jax.jit(lambda x: x * 11)(np.arange(2.0)).tolist() == [0, 11]
      with persistent_compilation_cache(str(cache), tmp_path / "run"):  # cannot even be opened
        assert jax.jit(lambda x: x * 13)(np.arange(2.0)).tolist() == [0, 13]
    assert counts["hits"] == 0 and counts["compiled"] == 4
    assert jax.config.jax_raise_persistent_cache_errors
  finally:
    jax.config.update("jax_raise_persistent_cache_errors", saved)


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_cache_location_is_refused(value):
  with pytest.raises(ConfigError, match="compilation_cache must be 'auto', 'off' or a direct"):
    resolve_config({"compilation_cache": value})
