r"""The digits reproduction study: does CFL beat cross-entropy and focal loss on digits?

Runs a grid of ``train_and_evaluate`` jobs in one process (the digits config of
``experiments/configs/digits.py`` with per-run overrides), then writes to ``--out``:

* ``results.json``: one entry per run (dataset, loss, hyper-parameters, seed, accuracies, per-class
  accuracy, eval curve, wall time and the exact ``python -m experiments.train`` command that
  reproduces it), rewritten after every run, so an interrupted study resumes where it stopped;
* ``REPORT.md``: per dataset, mean +- std over seeds and the paired difference to cross-entropy
  with a 95% t-interval; wall-time ratios; the ablation; plain win / tie / loss statements;
* PNG plots: the xi schedules, test-accuracy curves, per-class accuracy against training count.

Usage (from the repository root)::

  python -m experiments.study --grid=all --seeds=5          # the whole study
  python -m experiments.study --only=long_tail_10/cfl_hc2/0 --num_epochs=5   # one cell, seconds
  python -m experiments.study --report_only                 # tables and plots from results.json

Grids. Datasets (digits profiles; the test set is the fixed balanced 500-image split):
``balanced`` (124 per class), ``linear_2.6`` and ``linear_1.6`` (the paper's 4K-sampler-like
linear imbalance, n_max / n_min), ``long_tail_10`` and ``long_tail_50`` (LDAM exponential).
Losses: ``cross_entropy``, ``cross_entropy_ls`` (label smoothing 0.1), ``focal`` (gamma 2),
``cfl_hc2`` / ``cfl_hc3`` (paper form, gamma_lc 2, f 4), ``cfl_reference`` (reference-code form:
gamma_hc 3, gamma_pos 2, gamma_neg 2, f 4, label smoothing 0.1). Every loss uses the same seeds,
epochs, optimizer and the paper-form, step-granular xi schedule. The ablation (``long_tail_10``,
``cfl_hc2``) crosses f in {1, 2, 4} with xi granularity step / epoch.

Reproducibility: the study sets up JAX as ``experiments/train.py`` does (``--cpu_devices`` XLA
host devices unless ``XLA_FLAGS`` sets a count), and every printed command carries that setup
(``JAX_PLATFORMS``, ``XLA_FLAGS`` or ``--cpu_devices``) and the same overrides, which the study
checks by parsing each command with ``config_flags`` and comparing the resolved configs.
``balanced`` is written as ``profile=linear, imbalance_ratio=1.0``: the same 1,240 training images
in the same order as ``profile='balanced'``, but expressible on the command line (a config flag
cannot unset the default's ``imbalance_ratio``). Compiled programs are shared across runs
through JAX's persistent compilation cache (``--compilation_cache_dir``); results do not depend
on it.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import datetime
import json
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = "experiments/configs/digits.py"  # relative to the repository root

_GRID = flags.DEFINE_enum("grid", "all", ["main", "ablation", "all"], "Which grid to run.")
_SEEDS = flags.DEFINE_integer("seeds", 5, "Seeds 0 .. N-1, the same for every loss (paired).")
_NUM_EPOCHS = flags.DEFINE_integer("num_epochs", 60, "Training epochs of every run.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every_epochs", 2, "Test-set evaluation period (curves).")
_ONLY = flags.DEFINE_string(
    "only", None, "Run one cell DATASET/LOSS/SEED (e.g. long_tail_10/cfl_hc2/0) and print it; "
    "writes results.json but no report unless --report.")
_OUT = flags.DEFINE_string("out", "experiments/results/digits", "Results directory.")
_WORKDIR_ROOT = flags.DEFINE_string(
    "workdir_root", "runs/study_digits", "Where the study's run directories go (wiped per run).")
_REPRODUCE_ROOT = flags.DEFINE_string(
    "reproduce_root", "runs/reproduce_digits", "Workdir root written into the printed commands "
    "(a separate tree, so rerunning a command trains afresh instead of resuming the study's run).")
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
_REPORT_ONLY = flags.DEFINE_boolean("report_only", False, "Only rebuild REPORT.md and plots.")
_REPORT = flags.DEFINE_boolean("report", True, "Write REPORT.md and plots after the grid.")

# ---------------------------------------------------------------------------------------------
# The grid.

# name -> config overrides (dotted keys, as on the runner's command line).
DATASETS: dict[str, dict[str, Any]] = {
    "balanced": {"dataset.profile": "linear", "dataset.imbalance_ratio": 1.0},
    "linear_2.6": {"dataset.profile": "linear", "dataset.imbalance_ratio": 2.6},
    "linear_1.6": {"dataset.profile": "linear", "dataset.imbalance_ratio": 1.6},
    "long_tail_10": {"dataset.profile": "long_tail", "dataset.imbalance_ratio": 10.0},
    "long_tail_50": {"dataset.profile": "long_tail", "dataset.imbalance_ratio": 50.0},
}

_PAPER_CFL = {"loss.name": "cyclical_focal", "loss.gamma_lc": 2.0, "loss.cyclical_factor": 4.0,
              "loss.xi_granularity": "step", "loss.label_smoothing": 0.0}
LOSSES: dict[str, dict[str, Any]] = {
    "cross_entropy": {"loss.name": "cross_entropy", "loss.label_smoothing": 0.0},
    "cross_entropy_ls": {"loss.name": "cross_entropy", "loss.label_smoothing": 0.1},
    "focal": {"loss.name": "focal", "loss.gamma_lc": 2.0, "loss.label_smoothing": 0.0},
    "cfl_hc2": {**_PAPER_CFL, "loss.gamma_hc": 2.0},
    "cfl_hc3": {**_PAPER_CFL, "loss.gamma_hc": 3.0},
    "cfl_reference": {"loss.name": "cyclical_focal_reference", "loss.gamma_hc": 3.0,
                      "loss.gamma_lc": 2.0, "loss.gamma_neg": 2.0, "loss.cyclical_factor": 4.0,
                      "loss.xi_granularity": "step", "loss.label_smoothing": 0.1},
}
# Shared by every run, and written into every command so that it does not depend on the config
# file's current defaults (the values of experiments/configs/digits.py when the study was written).
COMMON: dict[str, Any] = {
    "batch_size": 64,
    "eval_batch_size": 512,  # the 500 test images in one padded batch
    "model.name": "digits_cnn",
    "model.dtype": "float32",
    "optimizer.name": "sgd",
    "optimizer.learning_rate": 0.1,
    "optimizer.momentum": 0.9,
    "optimizer.nesterov": True,
    "optimizer.weight_decay": 5e-4,
    "optimizer.grad_clip_norm": 0.0,
    "optimizer.lr_schedule": "cosine",
    "optimizer.warmup_epochs": 0.0,
    "many_shot_min": 100,
    "few_shot_max": 20,
}

BASELINE = "cross_entropy"
CFL_LOSSES = ("cfl_hc2", "cfl_hc3", "cfl_reference")
MAIN_DATASETS = tuple(DATASETS)
MAIN_LOSSES = tuple(LOSSES)

ABLATION_DATASET = "long_tail_10"
ABLATION_FACTORS = (1.0, 2.0, 4.0)
ABLATION_GRANULARITIES = ("step", "epoch")


def ablation_loss_name(factor: float, granularity: str) -> str:
  """The ablation cell's loss label; f=4 per step is the main grid's ``cfl_hc2``."""
  if factor == 4.0 and granularity == "step":
    return "cfl_hc2"
  return f"cfl_hc2_f{factor:g}_{granularity}"


for _f in ABLATION_FACTORS:
  for _g in ABLATION_GRANULARITIES:
    LOSSES.setdefault(ablation_loss_name(_f, _g), {
        **_PAPER_CFL, "loss.gamma_hc": 2.0, "loss.cyclical_factor": _f,
        "loss.xi_granularity": _g})
ABLATION_LOSSES = tuple(ablation_loss_name(f, g) for f in ABLATION_FACTORS
                        for g in ABLATION_GRANULARITIES)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid."""

  dataset: str
  loss: str
  seed: int

  @property
  def run_id(self) -> str:
    return f"{self.dataset}/{self.loss}/{self.seed}"


def grid_cells(grid: str, seeds: Sequence[int]) -> list[Cell]:
  """The runs of ``grid`` ('main', 'ablation' or 'all'), seed-major, no duplicates.

  Seed-major order spreads slow periods of a shared machine evenly over the losses and leaves
  complete paired seeds behind if the study is interrupted.
  """
  pairs = []
  if grid in ("main", "all"):
    pairs += [(d, l) for d in MAIN_DATASETS for l in MAIN_LOSSES]
  if grid in ("ablation", "all"):
    pairs += [(ABLATION_DATASET, l) for l in (BASELINE, *ABLATION_LOSSES)]
  pairs = list(dict.fromkeys(pairs))
  return [Cell(d, l, s) for s in seeds for d, l in pairs]


def parse_only(only: str) -> Cell:
  """``'DATASET/LOSS/SEED'`` -> Cell, with the known names listed on error."""
  parts = only.split("/")
  if len(parts) != 3 or not parts[2].isdigit():
    raise app.UsageError(f"--only must be DATASET/LOSS/SEED, got {only!r}")
  dataset, loss, seed = parts
  if dataset not in DATASETS:
    raise app.UsageError(f"Unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
  if loss not in LOSSES:
    raise app.UsageError(f"Unknown loss {loss!r}; known: {', '.join(LOSSES)}")
  return Cell(dataset, loss, int(seed))


def cell_overrides(cell: Cell, *, num_epochs: int, eval_every_epochs: int) -> dict[str, Any]:
  """Every override of ``experiments/configs/digits.py`` that defines the run of ``cell``."""
  name = f"digits_{cell.dataset}_{cell.loss}_s{cell.seed}".replace(".", "p")
  return {
      "name": name,
      "seed": cell.seed,
      "num_epochs": num_epochs,
      **COMMON,
      **DATASETS[cell.dataset],
      **LOSSES[cell.loss],
      "eval_every_epochs": eval_every_epochs,
      "log_every_steps": 100,  # few host syncs
      "checkpoint_every_steps": 0,  # only the final checkpoint
      "max_to_keep": 1,
  }


def base_config():
  """``get_config()`` of ``experiments/configs/digits.py``, loaded as the runner loads it."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("_digits_config", os.path.join(_REPO, CONFIG_FILE))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def build_config(overrides: Mapping[str, Any]):
  """The digits config with dotted-key ``overrides`` applied (type-checked by ConfigDict)."""
  config = base_config()
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def _flag_value(value: Any) -> str:
  if isinstance(value, float):
    return repr(value)
  return str(value)


def device_setup() -> tuple[dict[str, str], list[str]]:
  """(environment prefix, runner flags) that give a fresh ``experiments.train`` this process's
  JAX setup: platform, and on CPU the XLA host-device count."""
  import jax  # pylint: disable=g-import-not-at-top
  platform = jax.devices()[0].platform
  env = {"JAX_PLATFORMS": platform}
  extra = []
  if platform == "cpu":
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
      env["XLA_FLAGS"] = os.environ["XLA_FLAGS"]
    elif "JAX_NUM_CPU_DEVICES" in os.environ:
      env["JAX_NUM_CPU_DEVICES"] = os.environ["JAX_NUM_CPU_DEVICES"]
    else:
      extra.append(f"--cpu_devices={jax.device_count()}")
  return env, extra


def reproduce_argv(overrides: Mapping[str, Any], workdir: str,
                   extra_flags: Sequence[str]) -> list[str]:
  """``experiments.train`` arguments (after ``python -m experiments.train``) for ``overrides``."""
  return [f"--config={CONFIG_FILE}",
          *(f"--config.{key}={_flag_value(value)}" for key, value in overrides.items()),
          f"--workdir={workdir}", *extra_flags]


def reproduce_command(env: Mapping[str, str], argv: Sequence[str]) -> str:
  """The shell command (run from the repository root)."""
  prefix = [f"{key}={shlex.quote(value)}" for key, value in env.items()]
  return " ".join([*prefix, "python", "-m", "experiments.train", *map(shlex.quote, argv)])


def parse_runner_config(argv: Sequence[str]):
  """The config ``experiments.train`` would build from ``argv`` (its config flags only)."""
  from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top
  config_argv = ["experiments.train"] + [a for a in argv if a.startswith("--config")]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=values,
                                  lock_config=True, sys_argv=config_argv)
  cwd = os.getcwd()
  os.chdir(_REPO)  # the command's config path is relative to the repository root
  try:
    values(config_argv)
  finally:
    os.chdir(cwd)
  return values.config


def resolved_dict(config) -> dict[str, Any]:
  from cfl_jax.training import resolve_config  # pylint: disable=g-import-not-at-top
  return json.loads(resolve_config(config).to_json())


# ---------------------------------------------------------------------------------------------
# Statistics.


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
  values = np.asarray(values, dtype=np.float64)
  std = float(values.std(ddof=1)) if values.size > 1 else 0.0
  return float(values.mean()), std


def paired_t_interval(a: Sequence[float], b: Sequence[float],
                      confidence: float = 0.95) -> dict[str, float]:
  """Mean of the paired differences ``a - b`` and its two-sided t-interval.

  Returns:
    ``{'mean', 'std', 'n', 'low', 'high', 't_crit'}``; ``low``/``high`` are NaN for ``n < 2``.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"paired samples need equal 1-D shapes, got {a.shape} and {b.shape}")
  d = a - b
  n = d.size
  mean, std = mean_std(d)
  if n < 2:
    return {"mean": mean, "std": std, "n": n, "low": math.nan, "high": math.nan,
            "t_crit": math.nan}
  t_crit = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1))
  half = t_crit * std / math.sqrt(n)
  return {"mean": mean, "std": std, "n": n, "low": mean - half, "high": mean + half,
          "t_crit": t_crit}


def verdict(interval: Mapping[str, float]) -> str:
  """'win' if the interval lies above 0, 'loss' if below, else 'tie'."""
  if interval["low"] > 0:
    return "win"
  if interval["high"] < 0:
    return "loss"
  return "tie"


# ---------------------------------------------------------------------------------------------
# Running.

RUN_KEYS = ("run_id", "grid", "dataset", "loss", "loss_name", "hyper_parameters", "seed",
            "num_epochs", "test_accuracy", "balanced_accuracy", "many_shot_accuracy",
            "medium_shot_accuracy", "few_shot_accuracy", "per_class_accuracy",
            "train_class_counts", "test_loss", "train_steps", "steps_per_epoch", "wall_seconds",
            "eval_curve", "overrides", "command")


def _grids_of(cell: Cell) -> list[str]:
  grids = []
  if cell.dataset in MAIN_DATASETS and cell.loss in MAIN_LOSSES:
    grids.append("main")
  if cell.dataset == ABLATION_DATASET and cell.loss in (BASELINE, *ABLATION_LOSSES):
    grids.append("ablation")
  return grids


def _eval_curve(workdir: str) -> list[dict[str, float]]:
  curve = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if record.get("split") == "eval":
        curve.append({"step": record["step"], "epoch": record["epoch"],
                      "test_accuracy": record["test_accuracy"],
                      "few_shot_accuracy": record.get("few_shot_accuracy")})
  return curve


def run_cell(cell: Cell, *, num_epochs: int, eval_every_epochs: int, workdir_root: str,
             reproduce_root: str) -> dict[str, Any]:
  """Trains one cell in this process and returns its results.json entry."""
  from cfl_jax.training import train_and_evaluate  # pylint: disable=g-import-not-at-top
  overrides = cell_overrides(cell, num_epochs=num_epochs, eval_every_epochs=eval_every_epochs)
  config = build_config(overrides)
  env, extra = device_setup()
  argv = reproduce_argv(overrides, os.path.join(reproduce_root, cell.run_id), extra)
  if resolved_dict(parse_runner_config(argv)) != resolved_dict(config):
    raise AssertionError(f"The printed command of {cell.run_id} would not build its config.")
  workdir = os.path.join(workdir_root, cell.run_id)
  shutil.rmtree(workdir, ignore_errors=True)  # never resume a stale run
  started = time.perf_counter()
  summary = train_and_evaluate(config, workdir)
  wall = time.perf_counter() - started
  shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
  loss_config = json.loads(config.loss.to_json())
  return {
      "run_id": cell.run_id, "grid": _grids_of(cell), "dataset": cell.dataset, "loss": cell.loss,
      "loss_name": loss_config["name"], "hyper_parameters": loss_config, "seed": cell.seed,
      "num_epochs": num_epochs,
      **{key: summary[key] for key in (
          "test_accuracy", "balanced_accuracy", "many_shot_accuracy", "medium_shot_accuracy",
          "few_shot_accuracy", "per_class_accuracy", "train_class_counts", "test_loss",
          "train_steps", "steps_per_epoch")},
      "wall_seconds": wall, "eval_curve": _eval_curve(workdir), "overrides": overrides,
      "command": reproduce_command(env, argv),
  }


def load_results(path: str) -> dict[str, Any]:
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {"runs": []}


def write_json(path: str, value: Any) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  temporary = path + ".tmp"
  with open(temporary, "w") as f:
    json.dump(value, f, indent=1)
  os.replace(temporary, path)


def run_study(cells: Sequence[Cell], *, out: str, num_epochs: int, eval_every_epochs: int,
              workdir_root: str, reproduce_root: str, rerun: bool = False,
              metadata: Mapping[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
  """Runs ``cells`` (skipping ones already in ``out/results.json`` unless ``rerun``)."""
  import jax  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  path = os.path.join(out, "results.json")
  results = load_results(path)
  old = results.get("source_fingerprint")
  if metadata and old and old != metadata.get("source_fingerprint"):
    # Resuming with changed code: keep the record of what earlier runs were produced with.
    history = results.setdefault("source_fingerprint_history", [])
    history.append({"source_fingerprint": old, "git_commit": results.get("git_commit"),
                    "runs": len(results["runs"])})
  results.update(metadata or {})
  results.update({"jax_version": jax.__version__, "device_kind": jax.devices()[0].device_kind,
                  "num_devices": jax.device_count()})
  done = {run["run_id"]: i for i, run in enumerate(results["runs"])}
  todo = []
  for cell in cells:
    i = done.get(cell.run_id)
    if (rerun or i is None or results["runs"][i]["num_epochs"] != num_epochs):
      todo.append(cell)
  bar = tqdm(todo, unit="run", disable=not progress, dynamic_ncols=True)
  for cell in bar:
    bar.set_description(cell.run_id)
    entry = run_cell(cell, num_epochs=num_epochs, eval_every_epochs=eval_every_epochs,
                     workdir_root=workdir_root, reproduce_root=reproduce_root)
    bar.set_postfix(acc=f"{entry['test_accuracy']:.3f}", s=f"{entry['wall_seconds']:.1f}")
    i = done.get(cell.run_id)
    if i is None:
      done[cell.run_id] = len(results["runs"])
      results["runs"].append(entry)
    else:
      results["runs"][i] = entry
    write_json(path, results)
  write_json(path, results)
  return results


def reproduce(entry: Mapping[str, Any], *, timeout: float = 600,
              extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
  """Reruns ``entry['command']`` verbatim in a fresh process (repository root) and compares.

  ``extra_env`` is added to the inherited environment (tests pass a compilation cache there;
  a cached executable is the same program, so it cannot change the result).
  """
  argv = shlex.split(entry["command"])
  workdir = next(a.split("=", 1)[1] for a in argv if a.startswith("--workdir="))
  shutil.rmtree(os.path.join(_REPO, workdir), ignore_errors=True)
  started = time.perf_counter()
  subprocess.run(entry["command"], shell=True, cwd=_REPO, check=True, timeout=timeout,
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                 env={**os.environ, **(extra_env or {})})
  with open(os.path.join(_REPO, workdir, "summary.json")) as f:
    summary = json.load(f)
  return {"run_id": entry["run_id"], "original_test_accuracy": entry["test_accuracy"],
          "reproduced_test_accuracy": summary["test_accuracy"],
          "difference_pp": 100 * (summary["test_accuracy"] - entry["test_accuracy"]),
          "original_test_loss": entry["test_loss"], "reproduced_test_loss": summary["test_loss"],
          "wall_seconds": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------------
# Report.


def _runs_by(results, dataset: str, loss: str, num_epochs: int | None = None) -> dict[int, dict]:
  return {r["seed"]: r for r in results["runs"] if r["dataset"] == dataset and r["loss"] == loss
          and (num_epochs is None or r["num_epochs"] == num_epochs)}


def _pct(x: float | None) -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def compare(results, dataset: str, loss: str, metric: str = "test_accuracy",
            baseline: str = BASELINE) -> dict[str, Any] | None:
  """Mean/std of ``loss`` and its paired difference to ``baseline`` over their common seeds."""
  runs, base = _runs_by(results, dataset, loss), _runs_by(results, dataset, baseline)
  seeds = sorted(set(runs) & set(base))
  values = [runs[s][metric] for s in sorted(runs) if runs[s][metric] is not None]
  if not values:
    return None
  mean, std = mean_std(values)
  out = {"mean": mean, "std": std, "n": len(values), "wall": float(np.median(
      [runs[s]["wall_seconds"] for s in runs]))}
  paired = [s for s in seeds if runs[s][metric] is not None and base[s][metric] is not None]
  if loss != baseline and len(paired) >= 2:
    out["diff"] = paired_t_interval([runs[s][metric] for s in paired],
                                    [base[s][metric] for s in paired])
    out["verdict"] = verdict(out["diff"])
  return out


def _diff_text(c: Mapping[str, Any] | None, is_baseline: bool = False) -> str:
  if is_baseline:
    return "(baseline)"
  if c is None or "diff" not in c:
    return "n/a (fewer than 2 paired seeds)"
  d = c["diff"]
  return (f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] "
          f"**{c['verdict']}**")


def _train_step_time(results, dataset, loss) -> float | None:
  """Median seconds per training step over the cell's runs (wall time includes eval)."""
  runs = _runs_by(results, dataset, loss)
  if not runs:
    return None
  return float(np.median([r["wall_seconds"] / r["train_steps"] for r in runs.values()]))


def dataset_table(results, dataset: str, losses: Sequence[str]) -> list[str]:
  lt = results["runs"] and any(r["dataset"] == dataset and r["few_shot_accuracy"] is not None
                               for r in results["runs"])
  header = ["loss", "n", "test acc % (mean +- std)", "diff vs CE, pp [95% CI]"]
  if lt:
    header += ["few-shot acc %", "few-shot diff vs CE, pp [95% CI]"]
  header += ["median s/run"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for loss in losses:
    c = compare(results, dataset, loss)
    if c is None:
      continue
    base = loss == BASELINE
    row = [f"`{loss}`", str(c["n"]), f"{_pct(c['mean'])} +- {_pct(c['std'])}",
           _diff_text(c, base)]
    if lt:
      f = compare(results, dataset, loss, "few_shot_accuracy")
      row += [f"{_pct(f['mean'])} +- {_pct(f['std'])}" if f else "n/a", _diff_text(f, base)]
    row.append(f"{c['wall']:.1f}")
    lines.append("| " + " | ".join(row) + " |")
  return lines


def versus_table(results, datasets: Sequence[str], losses: Sequence[str],
                 baseline: str) -> list[str]:
  """Rows = ``losses``, columns = datasets: paired test-accuracy difference to ``baseline``."""
  lines = ["| loss | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
  for loss in losses:
    row = [f"`{loss}`"]
    for dataset in datasets:
      row.append(_diff_text(compare(results, dataset, loss, baseline=baseline)))
    lines.append("| " + " | ".join(row) + " |")
  return lines


def statements(results, datasets: Sequence[str], losses: Sequence[str],
               metric: str = "test_accuracy", baseline: str = BASELINE) -> dict[str, list[str]]:
  """{'win': [...], 'tie': [...], 'loss': [...]} of 'loss on dataset (+x.xx pp)' phrases."""
  out = {"win": [], "tie": [], "loss": []}
  for dataset in datasets:
    for loss in losses:
      c = compare(results, dataset, loss, metric, baseline=baseline)
      if c and "verdict" in c:
        d = c["diff"]
        out[c["verdict"]].append(
            f"`{loss}` on {dataset} ({100 * d['mean']:+.2f} pp, "
            f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}])")
  return out


def reportable(results: Mapping[str, Any]) -> dict[str, Any]:
  """``results`` restricted to the study's seeds and epochs (drops spot checks and extras)."""
  seeds, epochs = results.get("seeds"), results.get("num_epochs")
  runs = [r for r in results["runs"] if (seeds is None or r["seed"] in seeds)
          and (epochs is None or r["num_epochs"] == epochs)]
  return {**results, "runs": runs}


def write_report(results, out: str) -> str:
  """Writes REPORT.md and the plots; returns the report text."""
  results = reportable(results)
  plots = make_plots(results, out)
  epochs = sorted({r["num_epochs"] for r in results["runs"]})
  seeds = sorted({r["seed"] for r in results["runs"]})
  n_runs = len(results["runs"])
  total_wall = sum(r["wall_seconds"] for r in results["runs"])
  lines = [
      "# Digits reproduction study: cyclical focal loss vs cross-entropy and focal loss",
      "",
      "Generated by `experiments/study.py` from `results.json` (one entry per run, each with the "
      "exact command that reproduces it). Study command:",
      "",
      f"    {results.get('study_command', 'python -m experiments.study --grid=all')}",
      "",
      f"{n_runs} runs, seeds {seeds} (paired: every loss uses the same seeds), "
      f"{', '.join(map(str, epochs))} epochs, "
      "digits_cnn, SGD Nesterov 0.9, lr 0.1 cosine, weight decay 5e-4, batch 64, no "
      "augmentation, on "
      f"{results.get('num_devices', '?')} {results.get('device_kind', '?')} device(s); sum of "
      f"run wall times {total_wall / 60:.1f} min"
      + (f", study wall time {results['study_wall_seconds'] / 60:.1f} min"
         if "study_wall_seconds" in results else "") + ". "
      "The test set is the fixed balanced split of 500 images (50 per class) never used for "
      "training, so top-1 accuracy equals balanced accuracy. Each run reports the final model "
      "(no early stopping or checkpoint selection on the test set).",
      "",
      f"Code: git commit `{results.get('git_commit', '?')[:12]}` "
      + (f"plus uncommitted changes to {', '.join(c.split()[-1] for c in changes)} "
         if (changes := results.get("uncommitted_source_changes")) else "")
      + f"(source fingerprint `{results.get('source_fingerprint', '?')[:16]}`, see "
      "`experiments.study.source_fingerprint`). The printed commands reproduce the runs with "
      "that code"
      + "".join(f" (the first {h['runs']} runs ran with fingerprint "
                f"`{h['source_fingerprint'][:16]}`)"
                for h in results.get("source_fingerprint_history", []))
      + "; the reproduction checks below were rerun with fingerprint "
      f"`{results.get('source_fingerprint_at_verification', '?')[:16]}`. `balanced` runs as "
      "`dataset.profile=linear, imbalance_ratio=1.0`, the same 1,240 images in the same order as "
      "`profile='balanced'` (a command-line flag cannot unset the config's `imbalance_ratio`).",
      "",
      "Differences are paired by seed: loss minus cross-entropy, in percentage points, with a "
      "two-sided 95% Student-t interval over the seeds. **win**: the interval lies above 0; "
      "**loss**: below 0; **tie**: it covers 0. The intervals are per comparison, with no "
      "correction for the many comparisons made here. On 500 test images one image is 0.2 pp.",
      "",
      "Losses: `cross_entropy`; `cross_entropy_ls` (label smoothing 0.1); `focal` (gamma 2); "
      "`cfl_hc2` / `cfl_hc3` (paper form, gamma_hc 2 / 3, gamma_lc 2, f 4); `cfl_reference` "
      "(reference-code form: gamma_hc 3, gamma_pos 2, gamma_neg 2, f 4, label smoothing 0.1). "
      "All cyclical losses use the paper-form xi schedule, per step, over the whole run.",
      "",
  ]
  main_datasets = [d for d in MAIN_DATASETS if _runs_by(results, d, BASELINE)]
  for dataset in main_datasets:
    counts = next(iter(_runs_by(results, dataset, BASELINE).values()))["train_class_counts"]
    lines += [f"## {dataset}", "",
              f"Training images per class: {counts} (total {sum(counts)}).", ""]
    lines += dataset_table(results, dataset, MAIN_LOSSES)
    lines.append("")

  if main_datasets:
    for baseline, why in (("focal", "the loss CFL generalises"),
                          ("cross_entropy_ls", "separates the reference form's label smoothing "
                           "from the cyclical weighting")):
      lines += [f"## CFL against `{baseline}`", "",
                f"Paired test-accuracy difference, pp [95% CI], of each CFL variant to "
                f"`{baseline}` ({why}).", ""]
      lines += versus_table(results, main_datasets, CFL_LOSSES, baseline)
      lines.append("")

  # Wall time.
  lines += ["## Training time", "",
            "Median wall seconds per training step (whole run incl. evaluation, compilation "
            "mostly served from the persistent cache) of each CFL variant divided by that of "
            "cross-entropy, per dataset. The CPU was shared with other jobs, so single ratios "
            "are noisy.", "",
            "| dataset | " + " | ".join(f"`{l}` / CE" for l in (*CFL_LOSSES, "focal")) + " |",
            "|---|" + "---|" * (len(CFL_LOSSES) + 1)]
  ratios = {l: [] for l in (*CFL_LOSSES, "focal")}
  for dataset in main_datasets:
    base = _train_step_time(results, dataset, BASELINE)
    row = [dataset]
    for loss in ratios:
      t = _train_step_time(results, dataset, loss)
      if t is None or not base:
        row.append("n/a")
        continue
      ratios[loss].append(t / base)
      row.append(f"{t / base:.2f}")
    lines.append("| " + " | ".join(row) + " |")
  lines.append("| geometric mean | " + " | ".join(
      f"{math.exp(np.mean(np.log(v))):.2f}" if v else "n/a" for v in ratios.values()) + " |")
  lines.append("")

  # Ablation.
  if _runs_by(results, ABLATION_DATASET, ABLATION_LOSSES[0]):
    lines += [f"## Ablation on {ABLATION_DATASET}: factor f and xi granularity (cfl_hc2)", "",
              "f = 4 per step is the main grid's `cfl_hc2`. Differences are to cross-entropy on "
              "the same seeds.", ""]
    lines += dataset_table(results, ABLATION_DATASET, (BASELINE, *ABLATION_LOSSES))
    lines.append("")
    ab = {}
    for loss in ABLATION_LOSSES:
      c = compare(results, ABLATION_DATASET, loss)
      if c:
        ab[loss] = c["mean"]
    if ab:
      best = max(ab, key=ab.get)
      worst = min(ab, key=ab.get)
      lines += [f"Best ablation setting by mean test accuracy: `{best}` ({_pct(ab[best])}%); "
                f"worst: `{worst}` ({_pct(ab[worst])}%). Differences between ablation settings "
                "should be read against the seed spread in the table.", ""]

  # Plain statements.
  cfl = statements(results, main_datasets, CFL_LOSSES)
  others = statements(results, main_datasets, ("focal", "cross_entropy_ls"))
  lines += ["## What the numbers say (test accuracy, paired vs cross-entropy)", ""]
  total = sum(len(v) for v in cfl.values())
  lines.append(f"CFL variants x datasets: {total} comparisons, {len(cfl['win'])} wins, "
               f"{len(cfl['tie'])} ties, {len(cfl['loss'])} losses.")
  lines.append("")
  for kind, label in (("win", "CFL wins"), ("tie", "CFL ties"), ("loss", "CFL loses")):
    lines.append(f"- {label}: " + ("; ".join(cfl[kind]) if cfl[kind] else "none") + ".")
  lines.append("")
  lines.append("For comparison, the non-cyclical alternatives:")
  lines.append("")
  for kind, label in (("win", "wins"), ("tie", "ties"), ("loss", "losses")):
    lines.append(f"- {label}: " + ("; ".join(others[kind]) if others[kind] else "none") + ".")
  lines.append("")
  lt = [d for d in main_datasets if d.startswith("long_tail")]
  if lt:
    few = statements(results, lt, CFL_LOSSES, "few_shot_accuracy")
    lines.append("Few-shot classes (<= 20 training images) on the long-tailed sets, CFL vs CE: "
                 f"{len(few['win'])} wins, {len(few['tie'])} ties, {len(few['loss'])} losses"
                 + (" (" + "; ".join(few["win"] + few["loss"]) + ")."
                    if few["win"] or few["loss"] else "."))
    lines.append("")
  lines.append(f"With {total} comparisons at 95% each, about {0.05 * total:.1f} spurious "
               "'wins' or 'losses' are expected by chance alone.")
  lines.append("")
  lines.append(summary_sentence(results, main_datasets))
  lines.append("")

  # Reproduction checks.
  checks = results.get("reproduction_checks", [])
  if checks:
    lines += ["## Reproduction checks", "",
              "Randomly chosen runs whose printed command was rerun verbatim in a fresh process "
              "(from the repository root):", "",
              "| run | test acc in study | rerun | difference pp | test loss study / rerun |",
              "|---|---|---|---|---|"]
    for c in checks:
      lines.append(f"| {c['run_id']} | {_pct(c['original_test_accuracy'])} | "
                   f"{_pct(c['reproduced_test_accuracy'])} | {c['difference_pp']:+.2f} | "
                   f"{c['original_test_loss']:.6f} / {c['reproduced_test_loss']:.6f} |")
    lines.append("")

  lines += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
  lines += ["", "## Caveats", "",
            "- Digits (8x8, 1,797 images, 10 classes) is a tiny stand-in for CIFAR/ImageNet; "
            "the study tests whether the claimed gains appear in a small, cheap setting, not "
            "whether they hold at the paper's scale.",
            "- One schedule length and optimizer for all losses, tuned for none of them; "
            "test accuracies near the ceiling leave little room for differences on `balanced`.",
            "- Few-shot accuracy on digits averages few classes of 50 test images each, so it "
            "is noisy.", ""]
  text = "\n".join(lines)
  with open(os.path.join(out, "REPORT.md"), "w") as f:
    f.write(text)
  return text


def summary_sentence(results, datasets: Sequence[str]) -> str:
  """The result in one sentence: CFL vs CE, vs CE with label smoothing and vs focal loss."""
  cfl = statements(results, datasets, CFL_LOSSES)
  vs_ls = statements(results, datasets, CFL_LOSSES, baseline="cross_entropy_ls")
  vs_focal = statements(results, datasets, CFL_LOSSES, baseline="focal")
  n = sum(len(v) for v in cfl.values())
  reference_wins = sum(phrase.startswith("`cfl_reference`") for phrase in cfl["win"])
  consistent = len(cfl["win"]) == n and len(vs_ls["win"]) == n
  return (f"**In one sentence:** on scikit-learn digits ({len(datasets)} training profiles x "
          f"{len(CFL_LOSSES)} CFL variants = {n} paired comparisons, 95% t-intervals over "
          f"seeds), CFL beat cross-entropy in {len(cfl['win'])}, tied in {len(cfl['tie'])} and "
          f"lost in {len(cfl['loss'])} ({reference_wins} of the wins by the reference form, "
          "which includes label smoothing 0.1), but it beat cross-entropy with the same label "
          f"smoothing in only {len(vs_ls['win'])} of {n} (lost {len(vs_ls['loss'])}) while "
          f"beating focal loss in {len(vs_focal['win'])} of {n} (lost {len(vs_focal['loss'])}): "
          + ("consistent with the paper's claim." if consistent else
             "the paper's claim of a consistent gain over cross-entropy is not reproduced "
             f"here; the wins are small ({_win_range(results, datasets)}) and disappear "
             "against label-smoothed cross-entropy."))


def _win_range(results, datasets: Sequence[str]) -> str:
  """'a-b pp, i.e. m-n of 500 test images' over the CFL wins against cross-entropy."""
  means = [compare(results, d, l)["diff"]["mean"] for d in datasets for l in CFL_LOSSES
           if (c := compare(results, d, l)) and c.get("verdict") == "win"]
  if not means:
    return "none"
  low, high = min(means), max(means)
  return (f"+{100 * low:.1f} to +{100 * high:.1f} pp, i.e. {500 * low:.0f} to {500 * high:.0f} "
          "of the 500 test images")


def _accuracy_curves(results, datasets: Sequence[str], *, second_half: bool):
  """Mean test-accuracy curve per loss, one panel per dataset (+- std band for the full run)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 4), squeeze=False)
  for ax, dataset in zip(axes[0], datasets):
    for loss in MAIN_LOSSES:
      cell = _runs_by(results, dataset, loss)
      if not cell:
        continue
      curves = [r["eval_curve"] for r in cell.values()]
      length = min(len(c) for c in curves)
      start = length // 2 if second_half else 0
      x = [p["epoch"] for p in curves[0][start:length]]
      y = 100 * np.asarray([[p["test_accuracy"] for p in c[start:length]] for c in curves])
      if second_half:
        ax.plot(x, y.mean(0), label=loss, marker=".")
      else:
        ax.plot(x, y.mean(0), label=loss)
        ax.fill_between(x, y.mean(0) - y.std(0), y.mean(0) + y.std(0), alpha=0.12)
    ax.set_title(f"{dataset} (second half)" if second_half else dataset)
    ax.set_xlabel("epoch")
    if not second_half:
      ax.set_ylim(bottom=max(0, ax.get_ylim()[0]), top=100)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("test accuracy % (mean over seeds" + (")" if second_half else ", +- std)"))
  axes[0][-1].legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  return fig


def make_plots(results, out: str) -> list[str]:
  """xi schedules, test-accuracy curves, per-class accuracy vs training count; returns paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top,unused-import
  import ml_collections  # pylint: disable=g-import-not-at-top
  from cfl_jax.training import objective  # pylint: disable=g-import-not-at-top
  paths = []
  runs = results["runs"]
  if not runs:
    return paths

  # xi schedules of every cyclical loss label used, on the long_tail_10 step count.
  fig, ax = plt.subplots(figsize=(7, 4))
  shown = {}
  for r in runs:
    if r["loss_name"].startswith("cyclical") and r["loss"] not in shown:
      shown[r["loss"]] = r
  curves = {}
  for loss, r in shown.items():
    hp = r["hyper_parameters"]
    key = (hp["cyclical_factor"], hp["xi_granularity"])
    curves.setdefault(key, []).append(loss)
  spe = next((r["steps_per_epoch"] for r in runs if r["dataset"] == ABLATION_DATASET),
             runs[0]["steps_per_epoch"])
  epochs = runs[0]["num_epochs"]
  total = spe * epochs
  steps = np.arange(total + 1)
  for (factor, granularity), losses in sorted(curves.items()):
    schedule = objective.xi_schedule(
        ml_collections.ConfigDict({"cyclical_factor": factor, "xi_granularity": granularity,
                                   "xi_schedule": "paper", "xi_first_epoch": 0}),
        total_steps=total, steps_per_epoch=spe)
    values = np.asarray([float(schedule(s)) for s in steps])
    ax.plot(steps / spe, values, label=f"f={factor:g}, per {granularity}: " + ", ".join(losses))
  ax.set_xlabel("epoch")
  ax.set_ylabel("xi (1 = high-confidence loss, 0 = focal)")
  ax.set_title(f"xi schedules used ({epochs} epochs, {spe} steps/epoch as on {ABLATION_DATASET})")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  paths.append(_save(fig, out, "xi_schedule.png"))

  # Test-accuracy curves per loss, mean over seeds, one panel per dataset.
  datasets = [d for d in MAIN_DATASETS if _runs_by(results, d, BASELINE)]
  if datasets:
    paths.append(_save(_accuracy_curves(results, datasets, second_half=False), out,
                       "test_accuracy_curves.png"))
    # Zoomed last half, where the losses differ.
    paths.append(_save(_accuracy_curves(results, datasets, second_half=True), out,
                       "test_accuracy_curves_zoom.png"))

  # Per-class accuracy vs training count on the imbalanced sets.
  imbalanced = [d for d in datasets if d != "balanced"]
  if imbalanced:
    fig, axes = plt.subplots(1, len(imbalanced), figsize=(4.2 * len(imbalanced), 4),
                             squeeze=False)
    for ax, dataset in zip(axes[0], imbalanced):
      for loss in MAIN_LOSSES:
        cell = _runs_by(results, dataset, loss)
        if not cell:
          continue
        counts = np.asarray(next(iter(cell.values()))["train_class_counts"])
        acc = np.asarray([r["per_class_accuracy"] for r in cell.values()], dtype=np.float64)
        order = np.argsort(counts)
        ax.plot(counts[order], 100 * acc.mean(0)[order], marker="o", ms=3, label=loss)
      if dataset.startswith("long_tail"):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(sorted(set(counts.tolist()))[::2] + [int(counts.max())])
      ax.set_title(dataset)
      ax.set_xlabel("training images of the class" + (" (log)" if dataset.startswith("long")
                                                        else ""))
      ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("per-class test accuracy % (mean over seeds)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    paths.append(_save(fig, out, "per_class_accuracy_vs_count.png"))
  plt.close("all")
  return paths


def _save(fig, out: str, name: str) -> str:
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, name)
  fig.savefig(path, dpi=110)
  return path


# ---------------------------------------------------------------------------------------------
# CLI.


SOURCE_DIRS = ("cfl_jax",)
SOURCE_FILES = ("experiments/train.py", CONFIG_FILE)


def source_fingerprint() -> str:
  """sha256 over the code a run executes (cfl_jax/**.py, the runner, the config file).

  A command reproduces its run only with the code that produced it: when the fingerprint in
  results.json differs from the checkout's, rerun the study or check the commands.
  """
  import hashlib  # pylint: disable=g-import-not-at-top
  paths = list(SOURCE_FILES)
  for directory in SOURCE_DIRS:
    for root, _, names in os.walk(os.path.join(_REPO, directory)):
      paths += [os.path.relpath(os.path.join(root, n), _REPO) for n in names if n.endswith(".py")]
  digest = hashlib.sha256()
  for path in sorted(paths):
    with open(os.path.join(_REPO, path), "rb") as f:
      digest.update(path.encode() + b"\0" + f.read() + b"\0")
  return digest.hexdigest()


def code_version() -> dict[str, str]:
  """The git commit, whether the code's files differ from it, and the code's fingerprint."""
  def git(*args):
    try:
      return subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
      return "unknown"
  dirty = git("status", "--porcelain", "--", *SOURCE_DIRS, *SOURCE_FILES)
  return {"git_commit": git("rev-parse", "HEAD"), "source_fingerprint": source_fingerprint(),
          "uncommitted_source_changes": dirty.splitlines()}


def configure_jax(cpu_devices: int, cache_dir: str) -> None:
  """The runner's device setup, plus the persistent compilation cache."""
  import jax  # pylint: disable=g-import-not-at-top
  from cfl_jax.training import sharding  # pylint: disable=g-import-not-at-top
  sharding.use_cpu_devices(cpu_devices)
  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  os.chdir(_REPO)
  out = _OUT.value
  if _REPORT_ONLY.value:
    print(write_report(load_results(os.path.join(out, "results.json")), out))
    return
  logging.set_verbosity(logging.WARNING)
  configure_jax(_CPU_DEVICES.value, _CACHE_DIR.value)
  # Import the code now, so that the fingerprint below describes what the runs execute.
  fingerprint = source_fingerprint()
  import cfl_jax.training  # pylint: disable=g-import-not-at-top,unused-import
  if source_fingerprint() != fingerprint:
    raise RuntimeError("The source changed while the study was importing it; start again.")
  if _ONLY.value:
    cells = [parse_only(_ONLY.value)]
  else:
    cells = grid_cells(_GRID.value, range(_SEEDS.value))
  started = time.time()
  command = " ".join(["python", "-m", "experiments.study", *map(shlex.quote, sys.argv[1:])])
  metadata = {} if _ONLY.value else {
      "study_command": command, "grid": _GRID.value, "seeds": list(range(_SEEDS.value)),
      "num_epochs": _NUM_EPOCHS.value, "eval_every_epochs": _EVAL_EVERY.value,
      **code_version()}
  results = run_study(
      cells, out=out, num_epochs=_NUM_EPOCHS.value, eval_every_epochs=_EVAL_EVERY.value,
      workdir_root=_WORKDIR_ROOT.value, reproduce_root=_REPRODUCE_ROOT.value,
      rerun=_RERUN.value or bool(_ONLY.value), metadata=metadata)
  path = os.path.join(out, "results.json")
  if _ONLY.value:
    entry = next(r for r in results["runs"] if r["run_id"] == cells[0].run_id)
    print(json.dumps({k: entry[k] for k in (
        "run_id", "test_accuracy", "balanced_accuracy", "many_shot_accuracy",
        "medium_shot_accuracy", "few_shot_accuracy", "wall_seconds", "command")}, indent=1))
    return
  # Accumulated over resumed invocations of the same study.
  results["study_wall_seconds"] = results.get("study_wall_seconds", 0.0) + time.time() - started
  results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")
  now = source_fingerprint()
  if now != results.get("source_fingerprint"):
    logging.warning("The source changed during the study (fingerprint %s -> %s): the commands "
                    "reproduce the runs only with the code they were run with.",
                    results.get("source_fingerprint"), now)
  results["source_fingerprint_at_verification"] = now
  if _VERIFY.value:
    ids = {c.run_id for c in cells}
    candidates = [r for r in results["runs"] if r["run_id"] in ids]
    rng = random.Random(int(time.time()))
    checks = []
    for entry in rng.sample(candidates, min(_VERIFY.value, len(candidates))):
      check = reproduce(entry)
      logging.warning("reproduced %s: %s", entry["run_id"], check)
      checks.append(check)
    results["reproduction_checks"] = checks
  write_json(path, results)
  if _REPORT.value:
    print(write_report(results, out))


if __name__ == "__main__":
  app.run(main)
