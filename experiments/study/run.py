"""The runner: trains a grid's cells in this process and keeps ``results.json`` up to date.

``results.json`` is rewritten after every run, so an interrupted study resumes where it stopped;
each entry (:data:`RUN_KEYS`) carries the command that reproduces it, which the runner checks
before training and :func:`reproduce` reruns in a fresh process. Disjoint shards of a grid may
run in parallel processes, each into ``<out>/shards/<K>_of_<N>/results.json``; a later run over
``out`` merges them (:func:`merge_shards`). ``out``, the workdir roots and the printed commands'
workdirs may be local or in a bucket (``gs://...``): every path goes through :mod:`etils.epath`.
"""

from collections.abc import Mapping, Sequence
import json
import os
import posixpath
import re
import subprocess
import sys
import time
from typing import Any

from etils import epath

from cfl_jax import store
from experiments.study import provenance
from experiments.study.grid import Cell
from experiments.study.grid import Grid

# One results.json entry, in this order. Entries recorded before the best evaluation was kept
# lack ``best_test_accuracy`` and ``best_epoch``; readers take them with ``.get``.
RUN_KEYS = ("run_id", "grid", "dataset", "loss", "loss_name", "hyper_parameters", "seed",
            "num_epochs", "test_accuracy", "best_test_accuracy", "best_epoch",
            "balanced_accuracy", "many_shot_accuracy", "medium_shot_accuracy",
            "few_shot_accuracy", "per_class_accuracy", "train_class_counts", "test_loss",
            "expected_calibration_error", "reliability", "train_steps", "steps_per_epoch",
            "wall_seconds", "eval_curve", "overrides", "command")
# The keys of RUN_KEYS taken from the run's summary.json.
_SUMMARY_KEYS = RUN_KEYS[RUN_KEYS.index("test_accuracy"):RUN_KEYS.index("wall_seconds")]


def _eval_curve(workdir: store.PathLike) -> list[dict[str, float]]:
  from cfl_jax.training import reporting  # pylint: disable=g-import-not-at-top
  return [{"step": r["step"], "epoch": r["epoch"], "test_accuracy": r["test_accuracy"],
           "few_shot_accuracy": r.get("few_shot_accuracy")}
          for r in reporting.read_metrics(store.as_path(workdir) / "metrics.jsonl")
          if r.get("split") == "eval"]


def run_cell(grid: Grid, cell: Cell, *, num_epochs: int, eval_every_epochs: int,
             workdir_root: store.PathLike, reproduce_root: str,
             num_train_steps: int | None = None) -> dict[str, Any]:
  """Trains one cell in this process and returns its results.json entry."""
  from cfl_jax.training import train_and_evaluate  # pylint: disable=g-import-not-at-top
  overrides = grid.overrides(cell, num_epochs=num_epochs, eval_every_epochs=eval_every_epochs,
                             num_train_steps=num_train_steps)
  config = provenance.build_config(grid.config_file, overrides)
  env, extra = provenance.device_setup()
  argv = provenance.reproduce_argv(grid.config_file, overrides,
                                   os.path.join(reproduce_root, cell.run_id), extra)
  if (provenance.resolved_dict(provenance.parse_runner_config(argv))
      != provenance.resolved_dict(config)):
    raise AssertionError(f"The printed command of {cell.run_id} would not build its config.")
  workdir = store.as_path(workdir_root) / cell.run_id
  workdir.rmtree(missing_ok=True)  # never resume a stale run
  started = time.perf_counter()
  summary = train_and_evaluate(config, os.fspath(workdir))
  wall = time.perf_counter() - started
  (workdir / "checkpoints").rmtree(missing_ok=True)
  loss_config = json.loads(config.loss.to_json())
  values = {
      "run_id": cell.run_id, "grid": grid.grids_of(cell), "dataset": cell.dataset,
      "loss": cell.loss, "loss_name": loss_config["name"], "hyper_parameters": loss_config,
      "seed": cell.seed, "num_epochs": num_epochs,
      **{key: summary[key] for key in _SUMMARY_KEYS},
      "wall_seconds": wall, "eval_curve": _eval_curve(workdir), "overrides": overrides,
      "command": provenance.reproduce_command(env, argv),
  }
  return {key: values[key] for key in RUN_KEYS}


def load_results(path: store.PathLike) -> dict[str, Any]:
  """The results.json at ``path``, or an empty one."""
  path = store.as_path(path)
  return json.loads(path.read_text()) if path.exists() else {"runs": []}


def merge_shards(results: dict[str, Any], out: store.PathLike) -> None:
  """Adds the runs of ``out/shards/*/results.json`` that ``results`` lacks (shards in name
  order) and lists the shards in ``results['shards']`` (name, command, runs, wall time)."""
  known = {r["run_id"] for r in results["runs"]}
  shards = []
  for path in sorted(store.as_path(out).glob("shards/*/results.json"), key=os.fspath):
    shard = load_results(path)
    shards.append({"shard": path.parent.name,
                   "study_command": shard.get("study_command"), "runs": len(shard["runs"]),
                   "study_wall_seconds": shard.get("study_wall_seconds")})
    for entry in shard["runs"]:
      if entry["run_id"] not in known:
        known.add(entry["run_id"])
        results["runs"].append(entry)
  if shards:
    results["shards"] = shards


def run_study(grid: Grid, cells: Sequence[Cell], *, out: store.PathLike, num_epochs: int,
              eval_every_epochs: int, workdir_root: store.PathLike, reproduce_root: str,
              num_train_steps: int | None = None, rerun: bool = False,
              metadata: Mapping[str, Any] | None = None,
              progress: bool = True) -> dict[str, Any]:
  """Runs ``cells`` (skipping ones already in ``out/results.json`` or its shards, unless
  ``rerun`` or their overrides changed); the runs of ``cells`` end up in grid order."""
  import jax  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from cfl_jax.training import reporting  # pylint: disable=g-import-not-at-top
  path = store.as_path(out) / "results.json"
  results = load_results(path)
  merge_shards(results, out)
  old = results.get("source_fingerprint")
  if metadata and old and old != metadata.get("source_fingerprint"):
    # Resuming with changed code: keep the record of what earlier runs were produced with.
    history = results.setdefault("source_fingerprint_history", [])
    history.append({"source_fingerprint": old, "git_commit": results.get("git_commit"),
                    "runs": len(results["runs"])})
  results.update(metadata or {})
  results.update({"jax_version": jax.__version__, "device_kind": jax.devices()[0].device_kind,
                  "num_devices": jax.device_count(), "cpu": provenance.cpu()})
  def overrides(cell):
    return grid.overrides(cell, num_epochs=num_epochs, eval_every_epochs=eval_every_epochs,
                          num_train_steps=num_train_steps)
  done = {run["run_id"]: i for i, run in enumerate(results["runs"])}
  todo = [cell for cell in cells if rerun or cell.run_id not in done
          or results["runs"][done[cell.run_id]]["overrides"] != overrides(cell)]
  bar = tqdm(todo, unit="run", disable=not progress, dynamic_ncols=True)
  for cell in bar:
    bar.set_description(cell.run_id)
    entry = run_cell(grid, cell, num_epochs=num_epochs, eval_every_epochs=eval_every_epochs,
                     workdir_root=workdir_root, reproduce_root=reproduce_root,
                     num_train_steps=num_train_steps)
    bar.set_postfix(acc=f"{entry['test_accuracy']:.3f}", s=f"{entry['wall_seconds']:.1f}")
    i = done.get(cell.run_id)
    if i is None:
      done[cell.run_id] = len(results["runs"])
      results["runs"].append(entry)
    else:
      results["runs"][i] = entry
    reporting.write_json(path, results)
  order = {cell.run_id: i for i, cell in enumerate(cells)}
  results["runs"].sort(key=lambda r: order.get(r["run_id"], len(order)))  # stable for others
  reporting.write_json(path, results)
  return results


def _absolute(path: str) -> str:
  """``path`` normalised, with a relative local path taken from the repository root (where
  the commands run)."""
  if store.is_local(path):
    return os.path.realpath(os.path.join(provenance.REPO, path))
  scheme, rest = path.split("://", 1)
  return f"{scheme}://{posixpath.normpath(rest)}"


def checked_command(entry: Mapping[str, Any],
                    root: str) -> tuple[dict[str, str], list[str], epath.Path]:
  """(environment, ``experiments.train`` arguments, workdir) of ``entry['command']``, after
  checking that it has the shape the study writes and that its workdir, and every other path or
  URL it names, lies inside ``root`` (no XLA flag names a path).

  Raises:
    ValueError: naming the part of the command that is refused.
  """
  env, argv = provenance.split_command(entry["command"])
  workdir = next(a.split("=", 1)[1] for a in argv if a.startswith("--workdir="))
  path, top = _absolute(workdir), _absolute(root)
  if not _inside(path, top):
    raise ValueError(f"Refusing to reproduce into --workdir={workdir}: it is not inside the "
                     f"reproduce root {root} ({top}), and reproducing empties the workdir first.")
  _check_paths(env, argv, root)
  return env, argv, store.as_path(path)


def _inside(path: str, top: str) -> bool:
  """True when the absolute ``path`` lies strictly inside the absolute ``top``."""
  return path.startswith(top.rstrip("/") + "/")


# Config keys whose values name files or directories (besides any value that is a URL).
_PATH_KEY = re.compile(r"(.*\.)?(compilation_cache|init_from|\w+_(dir|path|file|root))")
# What a path key may say without naming a place: unset, or the workdir's own cache (auto).
_NOT_A_PLACE = frozenset({"", "auto", "off"})
# The values an XLA flag of a reproduce command may have: numbers and booleans, never a place.
_XLA_VALUE = re.compile(r"-?\d+(\.\d+)?|true|false")


def _check_paths(env: Mapping[str, str], argv: Sequence[str], root: str) -> None:
  """Raises ValueError naming the first part of a command that points outside ``root``.

  A reproduced run reads and writes only inside its reproduce root (the study's commands name no
  other place): a compilation cache elsewhere could hand it executables another program wrote, an
  XLA dump directory writes anywhere, and other data or weights are not the study's. Refused: an
  XLA flag whose value is not a number or boolean (``--xla_dump_to=...``), and a config override
  of a path key (``compilation_cache``, ``model.init_from``, ``*_dir``, ...) or of any key with a
  URL, unless its value is ``auto``, ``off``, empty, or inside ``root``.
  """
  for flag in env.get("XLA_FLAGS", "").split():
    if not _XLA_VALUE.fullmatch(flag.split("=", 1)[1]):
      raise ValueError(f"Refusing to reproduce with XLA_FLAGS {flag}: a reproduced run takes "
                       "only numbers and booleans from XLA flags, never a path.")
  top = _absolute(root)
  for word in argv:
    if not word.startswith("--config."):
      continue
    key, value = word.removeprefix("--config.").split("=", 1)
    if ((_PATH_KEY.fullmatch(key) or "://" in value) and value not in _NOT_A_PLACE
        and not _inside(_absolute(value), top)):
      raise ValueError(f"Refusing to reproduce with {word}: {value} is outside the reproduce "
                       f"root {root}.")


def reproduce(entry: Mapping[str, Any], *, root: str, timeout: float = 600,
              extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
  """Reruns ``entry['command']`` in a fresh process (repository root) and compares.

  The command runs with this interpreter (``sys.executable``) in place of its ``python``, with
  its environment prefix added to the inherited environment, as is ``extra_env`` (tests pass a
  compilation cache there; a cached executable is the same program, so it cannot change the
  result). Its workdir is emptied first, so it must lie inside ``root``.

  Args:
    entry: a results.json run, whose ``command`` has the shape the study writes (see
      :func:`provenance.split_command`).
    root: the study's reproduce root (relative paths are relative to the repository root).

  Raises:
    ValueError: for a command of another shape, a workdir outside ``root``, or any other path or
      URL outside it in the command or its environment (see :func:`checked_command`); nothing
      is run or deleted then.
  """
  env, argv, workdir = checked_command(entry, root)
  workdir.rmtree(missing_ok=True)
  started = time.perf_counter()
  subprocess.run([sys.executable, "-m", "experiments.train", *argv], cwd=provenance.REPO,
                 check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                 env={**os.environ, **env, **(extra_env or {})})
  summary = json.loads((workdir / "summary.json").read_text())
  return {"run_id": entry["run_id"], "original_test_accuracy": entry["test_accuracy"],
          "reproduced_test_accuracy": summary["test_accuracy"],
          "difference_pp": 100 * (summary["test_accuracy"] - entry["test_accuracy"]),
          "original_test_loss": entry["test_loss"], "reproduced_test_loss": summary["test_loss"],
          "wall_seconds": time.perf_counter() - started}
