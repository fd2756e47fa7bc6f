"""Experiment config files as ``ml_collections.config_flags`` reads them, and the command-line
overrides a file cannot take.

A config file defines ``get_config()`` or ``get_config(arg)``; ``FILE:ARG`` passes ``ARG``.
"""

import difflib
import importlib.util

import ml_collections

from cfl_jax import data


def load(spec: str) -> ml_collections.ConfigDict:
  """``get_config([ARG])`` of ``FILE[:ARG]``, as config_flags calls it."""
  path, _, argument = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_experiment_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()


def unknown_overrides(argv: list[str], config: ml_collections.ConfigDict) -> list[str]:
  """A message, with a hint, for every ``--config.KEY=VALUE`` of ``argv`` whose KEY ``config``
  lacks (config_flags can only change keys the file sets)."""
  problems = []
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    node, path = config, []
    for part in key.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        problems.append(f"unknown config key '{key}'" + _hint(path, part, known, config))
        break
      node, path = node[part], [*path, part]
  return problems


def _hint(path: list[str], part: str, known: list[str], config) -> str:
  if path == ["dataset"]:
    accepted = data.dataset_arguments(config.dataset.name)
    return (f" (dataset {config.dataset.name!r} accepts {', '.join(accepted)}; a flag can only "
            "change keys the config file sets, so add new dataset keys to the file)")
  close = difflib.get_close_matches(part, known, n=1)
  return f" (did you mean '{'.'.join([*path, close[0]])}'?)" if close else ""
