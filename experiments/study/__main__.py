r"""Runs a study's grid, then writes ``results.json``, ``REPORT.md`` and the plots to ``--out``.

  python -m experiments.study --grid=all --seeds=5          # the whole study
  python -m experiments.study --only=long_tail_10/cfl_hc2/0 --num_epochs=5   # one cell, seconds
  python -m experiments.study --report_only                 # tables and plots from results.json
  python -m experiments.study --shard=0/2 & python -m experiments.study --shard=1/2; wait
  python -m experiments.study                               # merges the shards, then reports
  python -m experiments.study --out=gs://BUCKET/study --workdir_root=gs://BUCKET/runs   # a bucket
  python -m experiments.study --measure_spread=long_tail_10/cross_entropy/0   # spread.json

``--study=NAME`` picks the grid file ``experiments/study/NAME.py`` (default ``digits``). The study
sets up JAX as ``experiments/train.py`` does (``--cpu_devices`` XLA host devices unless the
environment sets a count). Compiled programs are shared across runs through JAX's persistent
compilation cache (``--compilation_cache_dir``); results do not depend on it.
"""

import datetime
import importlib
import json
import os
import random
import shlex
import sys
import time

from absl import app
from absl import flags
from absl import logging

from cfl_jax import store
from experiments.study import grid as grid_lib
from experiments.study import provenance
from experiments.study import report
from experiments.study import run
from experiments.study import spread

_STUDY = flags.DEFINE_string("study", "digits", "The grid file experiments/study/<STUDY>.py.")
_GRID = flags.DEFINE_enum("grid", "all", list(grid_lib.GRID_NAMES), "Which grid to run.")
_SEEDS = flags.DEFINE_integer("seeds", 5, "Seeds 0 .. N-1, the same for every loss (paired).")
_NUM_EPOCHS = flags.DEFINE_integer(
    "num_epochs", None, "Training epochs of every run (default: the config file's).")
_NUM_TRAIN_STEPS = flags.DEFINE_integer(
    "num_train_steps", None, "Training steps of every main and ablation run, over --num_epochs "
    "(default: the config file's length); baseline variants may fix their own.", lower_bound=1)
_EVAL_EVERY = flags.DEFINE_integer(
    "eval_every_epochs", 2, "Test-set evaluation period (the curves and the best evaluation); 0: "
    "only at the end.", lower_bound=0)
_ONLY = flags.DEFINE_string(
    "only", None, "Run one cell DATASET/LOSS/SEED (e.g. long_tail_10/cfl_hc2/0) and print it; "
    "writes results.json but no report.")
_OUT = flags.DEFINE_string(
    "out", None, "Results directory, local or gs://... (default experiments/results/<study>).")
_WORKDIR_ROOT = flags.DEFINE_string(
    "workdir_root", None, "Where the study's run directories go, local or gs://... (wiped per "
    "run; default runs/study_<study>).")
_REPRODUCE_ROOT = flags.DEFINE_string(
    "reproduce_root", None, "Workdir root written into the printed commands (a separate tree, so "
    "rerunning a command trains afresh instead of resuming the study's run; default "
    "runs/reproduce_<study>).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 1, "XLA host devices on CPU unless XLA_FLAGS sets a count (as the runner's "
    "flag; 1 is the fastest on a small shared CPU).", lower_bound=1)
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "cfl_jax_study_xla"),
    "JAX persistent compilation cache ('' disables it).")
_RERUN = flags.DEFINE_boolean(
    "rerun", False, "Re-train runs already in results.json (default: keep them and resume).")
_VERIFY = flags.DEFINE_integer(
    "verify", 2, "After the grid, rerun this many random runs' commands in fresh processes and "
    "record the reproduced accuracies.")
_MEASURE_SPREAD = flags.DEFINE_string(
    "measure_spread", None, "Rerun this recorded run (DATASET/LOSS/SEED) under XLA settings that "
    "only reorder its float work (experiments/study/spread.py), write <out>/spread.json and the "
    "report.")
_REPORT_ONLY = flags.DEFINE_boolean("report_only", False, "Only rebuild REPORT.md and plots.")
_REPORT = flags.DEFINE_boolean("report", True, "Write REPORT.md and plots after the grid.")
_SHARD = flags.DEFINE_string(
    "shard", None, "K/N: run only every N-th cell from the K-th (K from 0) into "
    "<out>/shards/K_of_N/results.json, without checks or report; a later run without --shard "
    "merges the shards into <out>/results.json.")


def load_grid(study: str) -> grid_lib.Grid:
  """``GRID`` of ``experiments/study/<study>.py``."""
  name = f"experiments.study.{study}"
  try:
    module = importlib.import_module(name)
  except ModuleNotFoundError as error:
    if error.name != name:
      raise
    module = None
  if not isinstance(getattr(module, "GRID", None), grid_lib.Grid):
    raise app.UsageError(f"--study={study}: experiments/study/{study}.py defines no GRID.")
  return module.GRID


def configure_jax(cpu_devices: int, cache_dir: str) -> None:
  """The runner's device setup, plus the persistent compilation cache."""
  import jax  # pylint: disable=g-import-not-at-top
  from cfl_jax.training import sharding  # pylint: disable=g-import-not-at-top
  sharding.use_cpu_devices(cpu_devices)
  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def _shard() -> tuple[int, int] | None:
  """(K, N) of ``--shard=K/N``, or None."""
  if not _SHARD.value:
    return None
  k, _, n = _SHARD.value.partition("/")
  if not (k.isdigit() and n.isdigit() and int(k) < int(n)):
    raise app.UsageError(f"--shard must be K/N with 0 <= K < N, got {_SHARD.value!r}")
  return int(k), int(n)


def _cells(grid: grid_lib.Grid) -> list[grid_lib.Cell]:
  if not _ONLY.value:
    return grid.cells(_GRID.value, range(_SEEDS.value))
  try:
    return [grid.parse_only(_ONLY.value)]
  except ValueError as error:
    raise app.UsageError(str(error)) from None


def _verify(results, cells, count: int, root: str) -> list[dict]:
  """Reruns ``count`` random runs of ``cells`` from their commands, into ``root``."""
  ids = {c.run_id for c in cells}
  candidates = [r for r in results["runs"] if r["run_id"] in ids]
  checks = []
  for entry in random.Random(int(time.time())).sample(candidates, min(count, len(candidates))):
    check = run.reproduce(entry, root=root)
    logging.warning("reproduced %s: %s", entry["run_id"], check)
    checks.append(check)
  return checks


def _measure_spread(grid: grid_lib.Grid, out: store.PathLike, root: str) -> None:
  """``--measure_spread``: the record (reruns into ``root``), then the report that quotes it."""
  from cfl_jax.training import reporting  # pylint: disable=g-import-not-at-top
  out = store.as_path(out)
  results = run.load_results(out / "results.json")
  entry = next((r for r in results["runs"] if r["run_id"] == _MEASURE_SPREAD.value), None)
  if entry is None:
    raise app.UsageError(f"--measure_spread={_MEASURE_SPREAD.value}: no such run in "
                         f"{out / 'results.json'}.")
  command = " ".join(["python", "-m", "experiments.study", *map(shlex.quote, sys.argv[1:])])
  env = {"JAX_COMPILATION_CACHE_DIR": _CACHE_DIR.value} if _CACHE_DIR.value else {}
  record = spread.measure(entry, command=command, root=root, extra_env=env)
  reporting.write_json(out / spread.RECORD_FILE, record)
  print(json.dumps(record, indent=1))
  if _REPORT.value:
    report.write_report(grid, results, out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  grid = load_grid(_STUDY.value)
  os.chdir(provenance.REPO)
  out = store.as_path(_OUT.value or f"experiments/results/{grid.name}")
  if _REPORT_ONLY.value:
    print(report.write_report(grid, run.load_results(out / "results.json"), out))
    return
  reproduce_root = _REPRODUCE_ROOT.value or f"runs/reproduce_{grid.name}"
  if _MEASURE_SPREAD.value:
    _measure_spread(grid, out, reproduce_root)
    return
  logging.set_verbosity(logging.WARNING)
  configure_jax(_CPU_DEVICES.value, _CACHE_DIR.value)
  # Import the code now, so that the fingerprint below describes what the runs execute.
  fingerprint = provenance.source_fingerprint(grid.config_file)
  import cfl_jax.training  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  if provenance.source_fingerprint(grid.config_file) != fingerprint:
    raise RuntimeError("The source changed while the study was importing it; start again.")
  cells = _cells(grid)
  shard = _shard()
  if shard:
    cells = cells[shard[0]::shard[1]]
    out = out / "shards" / f"{shard[0]}_of_{shard[1]}"
  num_epochs = _NUM_EPOCHS.value or provenance.base_config(grid.config_file).num_epochs
  started = time.time()
  command = " ".join(["python", "-m", "experiments.study", *map(shlex.quote, sys.argv[1:])])
  metadata = {} if _ONLY.value else {
      "study_command": command, "study": _STUDY.value, "grid": _GRID.value,
      "seeds": list(range(_SEEDS.value)), "num_epochs": num_epochs,
      "num_train_steps": _NUM_TRAIN_STEPS.value,
      "eval_every_epochs": _EVAL_EVERY.value, **provenance.code_version(grid.config_file)}
  results = run.run_study(
      grid, cells, out=out, num_epochs=num_epochs, eval_every_epochs=_EVAL_EVERY.value,
      workdir_root=_WORKDIR_ROOT.value or f"runs/study_{grid.name}",
      reproduce_root=reproduce_root,
      num_train_steps=_NUM_TRAIN_STEPS.value, rerun=_RERUN.value or bool(_ONLY.value),
      metadata=metadata)
  if _ONLY.value:
    entry = next(r for r in results["runs"] if r["run_id"] == cells[0].run_id)
    print(json.dumps({k: entry[k] for k in (
        "run_id", "test_accuracy", "best_test_accuracy", "best_epoch", "balanced_accuracy",
        "many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy", "test_loss",
        "expected_calibration_error", "wall_seconds", "command")}, indent=1))
    return
  from cfl_jax.training import reporting  # pylint: disable=g-import-not-at-top
  # Accumulated over resumed invocations of the same study (or shard).
  results["study_wall_seconds"] = results.get("study_wall_seconds", 0.0) + time.time() - started
  results["finished"] = datetime.datetime.now(datetime.UTC).isoformat(
      timespec="seconds")
  if shard:
    reporting.write_json(out / "results.json", results)
    return
  now = provenance.source_fingerprint(grid.config_file)
  if now != results.get("source_fingerprint"):
    logging.warning("The source changed during the study (fingerprint %s -> %s): the commands "
                    "reproduce the runs only with the code they were run with.",
                    results.get("source_fingerprint"), now)
  results["source_fingerprint_at_verification"] = now
  if _VERIFY.value:
    results["reproduction_checks"] = _verify(results, cells, _VERIFY.value, reproduce_root)
  reporting.write_json(out / "results.json", results)
  if _REPORT.value:
    print(report.write_report(grid, results, out))


if __name__ == "__main__":
  app.run(main)
