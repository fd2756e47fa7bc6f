"""Optional dependencies: a clear error naming the pip extra that brings a missing one."""

from collections.abc import Sequence
import importlib


def require(package: str, extra: str, modules: Sequence[str]) -> None:
  """Raises ImportError naming ``pip install 'cfl-jax[extra]'`` unless every module imports.

  Examples:
    >>> require('cfl_jax.training', 'train', ['no_such_module_here'])
    Traceback (most recent call last):
    ...
    ImportError: cfl_jax.training needs no_such_module_here, ...: pip install 'cfl-jax[train]'
  """
  missing = []
  for module in modules:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError:
      missing.append(module)
  if missing:
    raise ImportError(f"{package} needs {', '.join(missing)}, which the core install of cfl-jax "
                      f"does not bring: pip install 'cfl-jax[{extra}]'")
