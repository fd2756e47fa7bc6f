"""Optional dependencies: a clear error naming the pip extra that brings a missing one."""

from collections.abc import Sequence
import importlib


def install_command(extra: str) -> str:
  """The command that installs ``extra``: from a clone, as cfl-jax has no release yet.

  Examples:
    >>> install_command('train')
    "pip install -e '.[train]' (in your clone of cfl-jax)"
  """
  return f"pip install -e '.[{extra}]' (in your clone of cfl-jax)"


def require(package: str, extra: str, modules: Sequence[str]) -> None:
  """Raises ImportError naming :func:`install_command` of ``extra`` unless every module imports.

  Examples:
    >>> require('cfl_jax.training', 'train', ['no_such_module_here'])
    Traceback (most recent call last):
    ...
    ImportError: cfl_jax.training needs no_such_module_here, ...: pip install -e '.[train]' ...
  """
  missing = []
  for module in modules:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError:
      missing.append(module)
  if missing:
    raise ImportError(f"{package} needs {', '.join(missing)}, which the core install of cfl-jax "
                      f"does not bring: {install_command(extra)}")
