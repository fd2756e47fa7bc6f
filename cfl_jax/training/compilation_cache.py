"""JAX's persistent compilation cache for one run: a relaunch loads its programs, not compiles.

``config.compilation_cache`` chooses where compiled programs (the initialiser, the train and eval
steps, and the small ones around them) are kept across processes:

* ``'auto'`` (default): ``<workdir>/compilation_cache``, so with a ``gs://`` workdir the cache
  lives in the bucket and a new VM reuses it. Unless JAX is already configured with a cache
  (``JAX_COMPILATION_CACHE_DIR`` / ``jax.config``'s ``jax_compilation_cache_dir``, or the cache
  switched off with ``jax_enable_compilation_cache``): then JAX's settings are left as they are,
  so one cache can serve many runs of a process (as the tests' fixtures do).
* ``'off'``: no persistent cache for this run, whatever JAX is configured with.
* any other value: that directory (local or ``gs://``), e.g. one shared by many runs.

Where this module sets a directory it caches every program, however fast it compiled (JAX's
default skips programs that compile in under a second): a relaunch looks every program up in the
cache whatever the threshold, so the threshold only decides whether a small program is compiled
again or read, and which programs those are would depend on the machine's load. Each program is
written once: the three-view CIFAR-10 smoke with TResNet-M at batch 4 leaves 113 entries, 3.1 MiB
(100 of them small ``jit_slice`` programs, orbax's per-device slices of the state it saves), and
its relaunch finds every one of them.

The settings are JAX's process-wide ones: they hold while :func:`persistent_compilation_cache` is
entered and the previous ones are restored when it exits, so a later in-process run sees JAX as
it was. Multi-host: every process reads the cache; JAX writes entries from process 0 only. A
cache that cannot be opened, or an entry that cannot be read or written, is a warning, never a
failed run (also where ``JAX_RAISE_PERSISTENT_CACHE_ERRORS`` asks otherwise); the program is then
compiled.

Where this module sets a directory, every entry JAX writes goes through the run's fence
(:mod:`cfl_jax.store.fenced`): once the run's lease has run out it writes no more (reads go on).

The cache is trusted (JAX loads executables from it): keep it where only you can write.
"""

from collections.abc import Iterator
import contextlib
from typing import Any

from absl import logging
import jax
# JAX offers no hook on its cache's writes: its cache object is wrapped (see _fence_writes).
from jax._src import compilation_cache as jax_cache
from jax._src import compilation_cache_interface
from jax.experimental.compilation_cache import compilation_cache as cache_lib

from cfl_jax import store
from cfl_jax.store import fenced

# Values of config.compilation_cache besides a directory.
AUTO, OFF = "auto", "off"
# Subdirectory of the workdir that 'auto' uses.
WORKDIR_CACHE = "compilation_cache"


def cache_settings(choice: str, workdir: store.PathLike) -> dict[str, Any]:
  """The ``jax.config`` settings ``config.compilation_cache=choice`` asks for ({}: none).

  Args:
    choice: ``'auto'``, ``'off'`` or a directory (see the module docstring).
    workdir: the run's workdir, home of the ``'auto'`` cache.

  Examples:
    >>> cache_settings('off', '/runs/a')
    {'jax_enable_compilation_cache': False}
    >>> cache_settings('/caches/shared', '/runs/a')['jax_compilation_cache_dir']
    '/caches/shared'
  """
  if choice == OFF:
    return {"jax_enable_compilation_cache": False}
  if choice == AUTO:
    if _setting("jax_compilation_cache_dir") or not _setting("jax_enable_compilation_cache"):
      return {}  # JAX is configured already: its settings rule
    directory = store.as_path(workdir) / WORKDIR_CACHE
  else:
    directory = store.as_path(choice)
  return {
      "jax_enable_compilation_cache": True,
      "jax_compilation_cache_dir": str(directory),
      "jax_persistent_cache_min_compile_time_secs": 0.0,
      "jax_persistent_cache_min_entry_size_bytes": -1,  # no size floor either
      # Without XLA's GPU autotuning cache beside it, whose path JAX puts in every program's
      # cache key: the cache still hits after it is moved or copied elsewhere.
      "jax_persistent_cache_enable_xla_caches": "",
      # A cache entry that cannot be read or written is a warning, never a failed run.
      "jax_raise_persistent_cache_errors": False,
  }


@contextlib.contextmanager
def persistent_compilation_cache(choice: str, workdir: store.PathLike,
                                 fence: fenced.Fence = fenced.UNFENCED) -> Iterator[None]:
  """JAX's persistent compilation cache as ``config.compilation_cache=choice`` asks, while
  entered, its writes admitted by ``fence``; JAX's previous settings are restored on exit.

  Enter it before the run compiles anything: a program compiled earlier in the process is not
  looked up again.
  """
  settings = cache_settings(choice, workdir)
  saved = {key: _setting(key) for key in settings}
  try:
    _apply(settings)
    if settings.get("jax_compilation_cache_dir"):
      _fence_writes(fence)
    yield
  finally:
    _apply(saved)


class _FencedCache(compilation_cache_interface.CacheInterface):
  """JAX's cache ``base`` whose writes ``fence`` admits; refused ones are left out, with one
  warning (a cache entry is never worth failing the run for)."""

  def __init__(self, base: compilation_cache_interface.CacheInterface, fence: fenced.Fence):
    self._base, self._fence, self._refused = base, fence, False
    self._path = base._path  # pylint: disable=protected-access (JAX logs it)

  def get(self, key: str):
    return self._base.get(key)

  def put(self, key: str, value: bytes) -> None:
    if self._fence.admits():
      self._base.put(key, value)
    elif not self._refused:
      self._refused = True
      logging.warning("This run's lease on its workdir ran out: no more compilation-cache "
                      "writes to %s.", self._path)


def _fence_writes(fence: fenced.Fence) -> None:
  """Opens JAX's cache now (it would on the first compilation) and routes its writes through
  ``fence``."""
  try:
    jax_cache._initialize_cache()  # pylint: disable=protected-access
  except Exception as error:  # pylint: disable=broad-except (a cache never fails the run)
    logging.warning("Could not open the compilation cache (%s: %s); compiling without it.",
                    type(error).__name__, error)
  if jax_cache._cache is not None:  # pylint: disable=protected-access
    jax_cache._cache = _FencedCache(jax_cache._cache, fence)  # pylint: disable=protected-access


def _setting(name: str) -> Any:
  """The current value of JAX's setting ``name`` (from its flag, environment or an update)."""
  return getattr(jax.config, name)


def _apply(settings: dict[str, Any]) -> None:
  """Updates ``jax.config`` and makes JAX open the cache afresh (it opens it once)."""
  if not settings:
    return
  for key, value in settings.items():
    jax.config.update(key, value)
  cache_lib.reset_cache()
