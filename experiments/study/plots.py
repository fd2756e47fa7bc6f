"""The study's figures: xi schedules, test-accuracy curves, per-class accuracy vs training count,
reliability diagrams."""

from collections.abc import Sequence
import io
import os

import numpy as np

from cfl_jax import store
from experiments.study import stats
from experiments.study.grid import Grid

# Class counts spanning at least this factor are drawn on a log axis.
_LOG_COUNT_RATIO = 5.0
# Training sets whose class counts span less than this factor count as balanced (no per-class
# panel): MNIST-1D's standard split has 394 to 411 per class.
_IMBALANCED_RATIO = 1.1
# Reliability bins with fewer test predictions (pooled over seeds) are too noisy to draw.
_MIN_BIN_COUNT = 20


def _save(fig, out: store.PathLike, name: str) -> str:
  """Writes ``fig`` as the PNG file ``out/name`` (local or in a bucket); returns its path."""
  path = store.as_path(out) / name
  data = io.BytesIO()
  fig.savefig(data, format="png", dpi=110)
  store.write_atomic(path, data.getvalue())
  return os.fspath(path)


def _xi_schedules(grid: Grid, runs: Sequence[dict]):
  """Every cyclical loss's xi over the run, on the ablation dataset's step count."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from cfl_jax.training import recipe  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  shown = {}
  for r in runs:
    if r["loss_name"].startswith("cyclical") and r["loss"] not in shown:
      shown[r["loss"]] = r
  curves = {}
  for loss, r in shown.items():
    hp = r["hyper_parameters"]
    curves.setdefault((hp["cyclical_factor"], hp["xi_granularity"]), []).append(loss)
  on = grid.ablation.dataset if grid.ablation else next(iter(grid.datasets))
  ref = next((r for r in runs if r["dataset"] == on and r["loss"] in shown),
             next(iter(shown.values())))
  spe, total = ref["steps_per_epoch"], ref["train_steps"]
  steps = np.arange(total + 1)
  for (factor, granularity), losses in sorted(curves.items()):
    schedule = recipe.xi_schedule(
        ml_collections.ConfigDict({"cyclical_factor": factor, "xi_granularity": granularity,
                                   "xi_schedule": "paper", "xi_first_epoch": 0}),
        total_steps=total, steps_per_epoch=spe)
    values = np.asarray([float(schedule(s)) for s in steps])
    ax.plot(steps / spe, values, label=f"f={factor:g}, per {granularity}: " + ", ".join(losses))
  ax.set_xlabel("epoch")
  ax.set_ylabel("xi (1 = high-confidence loss, 0 = focal)")
  ax.set_title(f"xi schedules used ({total / spe:g} epochs, {spe} steps/epoch as on {on})")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  return fig


def _accuracy_curves(grid: Grid, results, datasets: Sequence[str], *, second_half: bool):
  """Mean test-accuracy curve per loss, one panel per dataset (+- std band for the full run)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 4), squeeze=False)
  for ax, dataset in zip(axes[0], datasets):
    for loss in grid.losses:
      cell = stats.runs_of(results, dataset, loss)
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


def _per_class_accuracy(grid: Grid, results, datasets: Sequence[str]):
  """Per-class test accuracy against the class's training count, one panel per dataset."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 4), squeeze=False)
  for ax, dataset in zip(axes[0], datasets):
    counts = None
    for loss in grid.losses:
      cell = stats.runs_of(results, dataset, loss)
      if not cell:
        continue
      counts = np.asarray(next(iter(cell.values()))["train_class_counts"])
      acc = np.asarray([r["per_class_accuracy"] for r in cell.values()], dtype=np.float64)
      order = np.argsort(counts)
      ax.plot(counts[order], 100 * acc.mean(0)[order], marker="o", ms=3, label=loss)
    log = counts.max() >= _LOG_COUNT_RATIO * counts.min()
    if log:
      ax.set_xscale("log")
      ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
      ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
      ax.set_xticks(sorted(set(counts.tolist()))[::2] + [int(counts.max())])
    ax.set_title(dataset)
    ax.set_xlabel("training images of the class" + (" (log)" if log else ""))
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("per-class test accuracy % (mean over seeds)")
  axes[0][-1].legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  return fig


def _pooled_reliability(runs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(count, confidence, accuracy) per bin, pooled over ``runs`` (NaN for empty bins)."""
  count = np.zeros(len(runs[0]["reliability"]["count"]))
  conf, acc = np.zeros_like(count), np.zeros_like(count)
  for r in runs:
    bins = r["reliability"]
    n = np.asarray(bins["count"], np.float64)
    count += n
    conf += n * np.asarray([c or 0.0 for c in bins["confidence"]])
    acc += n * np.asarray([a or 0.0 for a in bins["accuracy"]])
  with np.errstate(invalid="ignore", divide="ignore"):
    return count, conf / count, acc / count


def _reliability(grid: Grid, results, datasets: Sequence[str]):
  """Test accuracy against top-1 confidence per bin, pooled over seeds, one panel per dataset."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 4.2), squeeze=False)
  for ax, dataset in zip(axes[0], datasets):
    ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
    for loss in grid.losses:
      cell = [r for r in stats.runs_of(results, dataset, loss).values() if r.get("reliability")]
      if cell:
        count, conf, acc = _pooled_reliability(cell)
        keep = count >= _MIN_BIN_COUNT
        ax.plot(conf[keep], acc[keep], marker="o", ms=3, label=loss)
    ax.set_title(dataset)
    ax.set_xlabel("top-1 confidence (bin mean)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(f"test accuracy in the bin (pooled over seeds, >= {_MIN_BIN_COUNT})")
  axes[0][-1].legend(fontsize=7, loc="upper left")
  fig.tight_layout()
  return fig


def make_plots(grid: Grid, results, out: store.PathLike) -> list[str]:
  """Writes the figures of ``results`` to ``out``; returns their paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  runs = results["runs"]
  if not runs:
    return []
  paths = [_save(_xi_schedules(grid, runs), out, "xi_schedule.png")]
  datasets = [d for d in grid.datasets if stats.runs_of(results, d, grid.baseline)]
  if datasets:
    paths.append(_save(_accuracy_curves(grid, results, datasets, second_half=False), out,
                       "test_accuracy_curves.png"))
    # Zoomed last half, where the losses differ.
    paths.append(_save(_accuracy_curves(grid, results, datasets, second_half=True), out,
                       "test_accuracy_curves_zoom.png"))
  def spread(dataset):
    counts = next(iter(stats.runs_of(results, dataset, grid.baseline).values()))[
        "train_class_counts"]
    return max(counts) / min(counts)
  imbalanced = [d for d in datasets if spread(d) >= _IMBALANCED_RATIO]
  if imbalanced:
    paths.append(_save(_per_class_accuracy(grid, results, imbalanced), out,
                       "per_class_accuracy_vs_count.png"))
  calibrated = [d for d in datasets if any(
      r.get("reliability") for r in stats.runs_of(results, d, grid.baseline).values())]
  if calibrated:
    paths.append(_save(_reliability(grid, results, calibrated), out, "reliability.png"))
  plt.close("all")
  return paths
