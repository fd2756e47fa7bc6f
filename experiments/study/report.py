"""REPORT.md of a study: per dataset, mean +- std over seeds and paired differences to the baseline.

The recipe's facts (model, optimizer, schedule, batch, epochs, test-set size) are read from the
config the runs were built from and from its dataset; the grid supplies its labels' meaning.
"""

from collections.abc import Mapping, Sequence
import json
import math
import os
from typing import Any

import numpy as np

from cfl_jax import store
from experiments.study import plots
from experiments.study import provenance
from experiments.study import spread
from experiments.study import stats
from experiments.study.grid import Grid


def _pct(x: float | None) -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


# Verdict words for a metric where lower is better (a 'win' of the difference means higher).
LOWER_IS_BETTER = {"win": "higher", "tie": "tie", "loss": "lower"}


def _diff_text(c: Mapping[str, Any] | None, is_baseline: bool = False,
               words: Mapping[str, str] | None = None) -> str:
  if is_baseline:
    return "(baseline)"
  if c is None or "diff" not in c:
    return "n/a (fewer than 2 paired seeds)"
  d = c["diff"]
  return (f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] "
          f"**{(words or {}).get(c['verdict'], c['verdict'])}**")


def _phrase(loss: str, dataset: str, c: Mapping[str, Any]) -> str:
  d = c["diff"]
  return (f"`{loss}` on {dataset} ({100 * d['mean']:+.2f} pp, "
          f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}])")


def _train_step_time(results, dataset: str, loss: str) -> float | None:
  """Median seconds per training step over the cell's runs (wall time includes eval)."""
  runs = stats.runs_of(results, dataset, loss)
  if not runs:
    return None
  return float(np.median([r["wall_seconds"] / r["train_steps"] for r in runs.values()]))


def _has(results, dataset: str, metric: str) -> bool:
  return any(r["dataset"] == dataset and r.get(metric) is not None for r in results["runs"])


# How the report reads the best evaluation's accuracy, where the runs recorded it.
_BEST_TEXT = (
    "; the best-epoch columns give the highest test accuracy of any evaluation of the run "
    "(`best_test_accuracy`, the number timm and LDAM report), which is chosen on the test set "
    "and so optimistic.")


def dataset_table(results, dataset: str, losses: Sequence[str], baseline: str) -> list[str]:
  """One row per loss: accuracy and paired difference to ``baseline``, the same for the best
  evaluation's accuracy, few-shot accuracy and calibration error where the runs have them,
  time."""
  best = _has(results, dataset, "best_test_accuracy")
  few_shot = _has(results, dataset, "few_shot_accuracy")
  ece = _has(results, dataset, "expected_calibration_error")
  header = ["loss", "n", "test acc % (mean +- std)", "diff vs CE, pp [95% CI]"]
  if best:
    header += ["best-epoch acc %", "best-epoch diff vs CE, pp [95% CI]"]
  if few_shot:
    header += ["few-shot acc %", "few-shot diff vs CE, pp [95% CI]"]
  if ece:
    header += ["ECE %", "ECE diff vs CE, pp [95% CI]"]
  header += ["median s/run"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for loss in losses:
    c = stats.compare(results, dataset, loss, baseline)
    if c is None:
      continue
    is_base = loss == baseline
    row = [f"`{loss}`", str(c["n"]), f"{_pct(c['mean'])} +- {_pct(c['std'])}",
           _diff_text(c, is_base)]
    for metric, shown, words in (("best_test_accuracy", best, None),
                                 ("few_shot_accuracy", few_shot, None),
                                 ("expected_calibration_error", ece, LOWER_IS_BETTER)):
      if shown:
        m = stats.compare(results, dataset, loss, baseline, metric)
        row += [f"{_pct(m['mean'])} +- {_pct(m['std'])}" if m else "n/a",
                _diff_text(m, is_base, words)]
    row.append(f"{c['wall']:.1f}")
    lines.append("| " + " | ".join(row) + " |")
  return lines


def versus_table(results, datasets: Sequence[str], losses: Sequence[str],
                 baseline: str) -> list[str]:
  """Rows = ``losses``, columns = datasets: paired test-accuracy difference to ``baseline``."""
  lines = ["| loss | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
  for loss in losses:
    row = [f"`{loss}`"] + [_diff_text(stats.compare(results, d, loss, baseline))
                           for d in datasets]
    lines.append("| " + " | ".join(row) + " |")
  return lines


def comparisons(results, datasets: Sequence[str], losses: Sequence[str], baseline: str,
                metric: str = "test_accuracy") -> list[tuple[str, str, dict[str, Any]]]:
  """(loss, dataset, :func:`stats.compare`) of every comparison with a verdict, dataset-major."""
  out = []
  for dataset in datasets:
    for loss in losses:
      c = stats.compare(results, dataset, loss, baseline, metric)
      if c and "verdict" in c:
        out.append((loss, dataset, c))
  return out


def statements(results, datasets: Sequence[str], losses: Sequence[str], baseline: str,
               metric: str = "test_accuracy") -> dict[str, list[str]]:
  """{'win': [...], 'tie': [...], 'loss': [...]} of 'loss on dataset (+x.xx pp)' phrases."""
  out = {"win": [], "tie": [], "loss": []}
  for loss, dataset, c in comparisons(results, datasets, losses, baseline, metric):
    out[c["verdict"]].append(_phrase(loss, dataset, c))
  return out


def reportable(results: Mapping[str, Any]) -> dict[str, Any]:
  """``results`` restricted to the study's seeds and length (drops spot checks and extras;
  baseline variants keep their own length)."""
  seeds, epochs = results.get("seeds"), results.get("num_epochs")
  steps = results.get("num_train_steps")
  runs = [r for r in results["runs"] if (seeds is None or r["seed"] in seeds)
          and ("baselines" in r["grid"] or (
              (epochs is None or r["num_epochs"] == epochs)
              and r["overrides"].get("num_train_steps") == steps))]
  return {**results, "runs": runs}


def recipe(grid: Grid, results: Mapping[str, Any]):
  """(resolved config, dataset) of the study's first baseline run, as it was built."""
  from cfl_jax.data import get_dataset  # pylint: disable=g-import-not-at-top
  from cfl_jax.training import resolve_config  # pylint: disable=g-import-not-at-top
  runs = [r for r in results["runs"] if r["loss"] == grid.baseline] or results["runs"]
  config = resolve_config(provenance.build_config(grid.config_file, runs[0]["overrides"]))
  return config, get_dataset(config.dataset)


def recipe_text(config) -> str:
  """'model ..., optimizer ..., lr ..., batch ..., N epochs' of a resolved config."""
  opt = config.optimizer
  if opt.name == "sgd":
    momentum = (f" with {'Nesterov ' if opt.nesterov else ''}momentum {opt.momentum:g}"
                if opt.momentum else "")
    optimizer = f"SGD{momentum}"
  else:
    optimizer = f"AdamW (b1 {opt.b1:g}, b2 {opt.b2:g})"
  schedule = f"lr {opt.learning_rate:g} {opt.lr_schedule}"
  if opt.lr_schedule == "step":
    schedule += f" (x{opt.lr_decay_factor:g} at epochs {list(opt.lr_decay_epochs)})"
  if opt.warmup_epochs:
    schedule += (f" after {opt.warmup_epochs:g} warm-up epochs from "
                 f"{opt.warmup_init_learning_rate:g}")
  parts = [f"model `{config.model.name}` ({config.model.dtype})", optimizer, schedule,
           f"weight decay {opt.weight_decay:g}"]
  if opt.grad_clip_norm:
    parts.append(f"gradient clipping at norm {opt.grad_clip_norm:g}")
  length = (f"{config.num_train_steps:,} steps" if config.num_train_steps > 0
            else f"{config.num_epochs} epochs")
  parts += [f"batch {config.batch_size}", length]
  return ", ".join(parts)


def _overrides_table(grid: Grid) -> list[str]:
  lines = ["| label | overrides of `" + grid.config_file + "` |", "|---|---|"]
  for label, overrides in (*grid.datasets.items(), *grid.all_labels.items()):
    lines.append(f"| `{label}` | " + ", ".join(f"{k}={v}" for k, v in overrides.items()) + " |")
  return lines


def holm_family(results, datasets: Sequence[str],
                grid: Grid) -> list[tuple[str, str, str, dict[str, Any], float]]:
  """(loss, against, dataset, :func:`stats.compare`, Holm-adjusted p) of the family: every
  compared loss vs the baseline, and vs its control (``grid.controls``), on every dataset."""
  family = [(loss, grid.baseline, dataset, c) for loss, dataset, c in
            comparisons(results, datasets, grid.compared, grid.baseline)]
  for loss, control in grid.controls.items():
    family += [(loss, control, dataset, c) for _, dataset, c in
               comparisons(results, datasets, (loss,), control)]
  adjusted = stats.holm([c["diff"]["p"] for *_, c in family])
  return [(*f, p) for f, p in zip(family, adjusted)]


def holm_verdict(c: Mapping[str, Any], adjusted_p: float, alpha: float = 0.05) -> str:
  """'win' / 'loss' if significant for the family at ``alpha``, else 'tie'."""
  if adjusted_p > alpha:
    return "tie"
  return "win" if c["diff"]["mean"] > 0 else "loss"


def holm_table(family, dataset: str) -> list[str]:
  """The family's comparisons on ``dataset``: difference, raw and Holm-adjusted p, verdict."""
  lines = ["| comparison | diff pp [95% CI] | p | Holm p | Holm verdict |", "|---|---|---|---|---|"]
  for loss, against, d, c, p in family:
    if d == dataset:
      diff = c["diff"]
      lines.append(f"| `{loss}` vs `{against}` | {100 * diff['mean']:+.2f} "
                   f"[{100 * diff['low']:+.2f}, {100 * diff['high']:+.2f}] | {diff['p']:.3f} | "
                   f"{p:.3f} | **{holm_verdict(c, p)}** |")
  return lines


def holm_text(results, datasets: Sequence[str], grid: Grid, alpha: float = 0.05) -> str:
  """Which verdicts of the family (:func:`holm_family`) survive Holm's correction."""
  family = holm_family(results, datasets, grid)
  if not family:
    return ""
  kept = [f"{_phrase(loss, dataset, c)}" + (f" vs `{against}`" if against != grid.baseline
                                             else "") + f", adjusted p {p:.3f}"
          for loss, against, dataset, c, p in family if p <= alpha]
  return (f"With Holm's correction over these {len(family)} comparisons (family-wise error "
          f"{alpha:g}), {len(kept)} differences remain significant"
          + (": " + "; ".join(kept) + "." if kept else "."))


def summary_sentence(grid: Grid, results, datasets: Sequence[str], test_images: int) -> str:
  """The result in one sentence: the compared losses vs the baseline and the other baselines."""
  main = statements(results, datasets, grid.compared, grid.baseline)
  n = sum(len(v) for v in main.values())
  by_loss = {loss: sum(p.startswith(f"`{loss}`") for p in main["win"]) for loss in grid.compared}
  wins_by = ", ".join(f"{k} by `{loss}`" for loss, k in by_loss.items() if k)
  others = []
  consistent = len(main["win"]) == n
  for baseline in grid.versus:
    against = statements(results, datasets, grid.compared, baseline)
    others.append(f"against `{baseline}` they won {len(against['win'])} of {n} and lost "
                  f"{len(against['loss'])}")
  return (f"**In one sentence:** on {grid.data} ({len(datasets)} training sets x "
          f"{len(grid.compared)} variants = {n} paired comparisons, 95% t-intervals over seeds), "
          f"{', '.join(f'`{loss}`' for loss in grid.compared)} beat `{grid.baseline}` in "
          f"{len(main['win'])}, tied in {len(main['tie'])} and lost in {len(main['loss'])}"
          + (f" (wins: {wins_by})" if wins_by else "")
          + ("; " + "; ".join(others) if others else "") + ": "
          + ("consistent with the paper's claim." if consistent else
             f"the paper's claim of a consistent gain over `{grid.baseline}` is not reproduced "
             f"here; the wins range over {_win_range(grid, results, datasets, test_images)}."))


def _win_range(grid: Grid, results, datasets: Sequence[str], test_images: int) -> str:
  """'a-b pp, i.e. m-n of N test images' over the wins against the baseline."""
  means = [c["diff"]["mean"] for _, _, c in comparisons(results, datasets, grid.compared,
                                                          grid.baseline) if c["verdict"] == "win"]
  if not means:
    return "none"
  low, high = min(means), max(means)
  return (f"+{100 * low:.1f} to +{100 * high:.1f} pp, i.e. {test_images * low:.0f} to "
          f"{test_images * high:.0f} of the {test_images} test images")


def _length_lines(grid: Grid, results) -> list[str]:
  """A warning paragraph when the study shortened the config file's recipe."""
  steps, recipe_steps = results.get("num_train_steps"), provenance.base_config(
      grid.config_file).num_train_steps
  if not steps or steps == recipe_steps:
    return []
  return [f"**Shortened schedule:** every main-grid run trained {steps:,} steps "
          f"(`--num_train_steps={steps}`, the same for every loss and dataset), where "
          f"`{grid.config_file}` trains {recipe_steps:,}" + (
              "; the baselines part keeps its own length." if grid.baselines else "."), ""]


def _shard_lines(results) -> list[str]:
  """Which parallel shards the runs came from, with their wall times, if any."""
  shards = results.get("shards")
  if not shards:
    return []
  walls = ", ".join(f"{s['shard']}: {s['runs']} runs, " + (
      f"{s['study_wall_seconds'] / 60:.1f} min" if s["study_wall_seconds"] is not None
      else "wall time not recorded") for s in shards)
  return [f"The runs ran in {len(shards)} parallel shards (`--shard=K/N`, e.g. "
          f"`{shards[0]['study_command']}`), merged into `results.json` in grid order by the "
          f"study command above ({walls}).", ""]


def _code_text(results) -> str:
  changes = results.get("uncommitted_source_changes")
  return (
      f"Code: git commit `{results.get('git_commit', '?')[:12]}` "
      + (f"plus uncommitted changes to {', '.join(c.split()[-1] for c in changes)} "
         if changes else "")
      + f"(source fingerprint `{results.get('source_fingerprint', '?')[:16]}`, see "
      "`experiments.study.provenance.source_fingerprint`). The printed commands reproduce the "
      "runs with that code"
      + "".join(f" (the first {h['runs']} runs ran with fingerprint "
                f"`{h['source_fingerprint'][:16]}`)"
                for h in results.get("source_fingerprint_history", []))
      + "; the reproduction checks below were rerun with fingerprint "
      f"`{results.get('source_fingerprint_at_verification', '?')[:16]}`.")


def _time_table(grid: Grid, results, datasets: Sequence[str]) -> list[str]:
  timed = (*grid.compared, *grid.versus)
  lines = ["| dataset | " + " | ".join(f"`{loss}` / CE" for loss in timed) + " |",
           "|---|" + "---|" * len(timed)]
  ratios: dict[str, list[float]] = {loss: [] for loss in timed}
  for dataset in datasets:
    base = _train_step_time(results, dataset, grid.baseline)
    row = [dataset]
    for loss in timed:
      t = _train_step_time(results, dataset, loss)
      if t is None or not base:
        row.append("n/a")
        continue
      ratios[loss].append(t / base)
      row.append(f"{t / base:.2f}")
    lines.append("| " + " | ".join(row) + " |")
  lines.append("| geometric mean | " + " | ".join(
      f"{math.exp(np.mean(np.log(v))):.2f}" if v else "n/a" for v in ratios.values()) + " |")
  return lines


def _baselines_lines(grid: Grid, results) -> list[str]:
  """The reproduced baseline variants beside their published test accuracies."""
  part = grid.baselines
  cells = {v: stats.runs_of(results, part.dataset, v) for v in part.variants} if part else {}
  if not any(cells.values()):
    return []
  lines = [f"## Published baselines on {part.dataset}", "",
           f"{part.note} Published: {part.source}.", "",
           "| variant | published test acc % | reproduced % (mean +- std) | min - max | n | "
           "reproduced - published, pp |", "|---|---|---|---|---|---|"]
  for variant, runs in cells.items():
    if not runs:
      continue
    acc = [r["test_accuracy"] for r in runs.values()]
    mean, std = stats.mean_std(acc)
    published = part.published.get(variant)
    lines.append(f"| `{variant}` | {_pct(published)} | {_pct(mean)} +- {_pct(std)} | "
                 f"{_pct(min(acc))} - {_pct(max(acc))} | {len(acc)} | "
                 + (f"{100 * (mean - published):+.1f}" if published is not None else "n/a")
                 + " |")
  return lines + [""]


def _ablation_lines(grid: Grid, results) -> list[str]:
  ablation = grid.ablation
  if not ablation or not stats.runs_of(results, ablation.dataset, grid.ablation_losses[0]):
    return []
  lines = [f"## Ablation on {ablation.dataset}: {ablation.title}", "",
           f"{ablation.note} Differences are to `{grid.baseline}` on the same seeds.", ""]
  lines += dataset_table(results, ablation.dataset, (grid.baseline, *ablation.losses),
                         grid.baseline)
  lines.append("")
  means = {}
  for loss in ablation.losses:
    c = stats.compare(results, ablation.dataset, loss, grid.baseline)
    if c:
      means[loss] = c["mean"]
  best, worst = max(means, key=means.get), min(means, key=means.get)
  lines += [f"Best ablation setting by mean test accuracy: `{best}` ({_pct(means[best])}%); "
            f"worst: `{worst}` ({_pct(means[worst])}%). Differences between ablation settings "
            "should be read against the seed spread in the table.", ""]
  return lines


def _verdict_lines(grid: Grid, results, datasets: Sequence[str], config,
                   test_images: int) -> list[str]:
  """Wins, ties and losses in words, few-shot verdicts, Holm, and the one-sentence summary."""
  main = statements(results, datasets, grid.compared, grid.baseline)
  others = statements(results, datasets, tuple(grid.versus), grid.baseline)
  total = sum(len(v) for v in main.values())
  lines = [f"## What the numbers say (test accuracy, paired vs `{grid.baseline}`)", "",
           f"CFL variants x datasets: {total} comparisons, {len(main['win'])} wins, "
           f"{len(main['tie'])} ties, {len(main['loss'])} losses.", ""]
  for kind, label in (("win", "CFL wins"), ("tie", "CFL ties"), ("loss", "CFL loses")):
    lines.append(f"- {label}: " + ("; ".join(main[kind]) if main[kind] else "none") + ".")
  lines += ["", "For comparison, the other baselines:", ""]
  for kind, label in (("win", "wins"), ("tie", "ties"), ("loss", "losses")):
    lines.append(f"- {label}: " + ("; ".join(others[kind]) if others[kind] else "none") + ".")
  lines.append("")
  with_few_shot = [d for d in datasets if any(r["few_shot_accuracy"] is not None for r in
                                              stats.runs_of(results, d, grid.baseline).values())]
  if with_few_shot:
    few = statements(results, with_few_shot, grid.compared, grid.baseline, "few_shot_accuracy")
    lines += [f"Few-shot classes (<= {config.few_shot_max} training images) on "
              f"{', '.join(with_few_shot)}, CFL vs CE: {len(few['win'])} wins, "
              f"{len(few['tie'])} ties, {len(few['loss'])} losses"
              + (" (" + "; ".join(few["win"] + few["loss"]) + ")."
                 if few["win"] or few["loss"] else "."), ""]
  lines += [f"With {total} comparisons at 95% each, about {0.05 * total:.1f} spurious "
            "'wins' or 'losses' are expected by chance alone. "
            + holm_text(results, datasets, grid), "",
            summary_sentence(grid, results, datasets, test_images), ""]
  return lines


def _check_lines(results) -> list[str]:
  """The reproduction checks' table (commands rerun in fresh processes), if any."""
  checks = results.get("reproduction_checks", [])
  if not checks:
    return []
  lines = ["## Reproduction checks", "",
           "Randomly chosen runs whose printed command was rerun verbatim in a fresh process "
           "(from the repository root):", "",
           "| run | test acc in study | rerun | difference pp | test loss study / rerun |",
           "|---|---|---|---|---|"]
  for c in checks:
    lines.append(f"| {c['run_id']} | {_pct(c['original_test_accuracy'])} | "
                 f"{_pct(c['reproduced_test_accuracy'])} | {c['difference_pp']:+.2f} | "
                 f"{c['original_test_loss']:.6f} / {c['reproduced_test_loss']:.6f} |")
  return lines + [""]


def render(grid: Grid, results: Mapping[str, Any], plot_paths: Sequence[str],
           spread_record: Mapping[str, Any] | None = None) -> str:
  """The text of REPORT.md for the reportable runs of ``results``, with the measured
  reproduction spread (:mod:`experiments.study.spread`) if given."""
  results = reportable(results)
  if not results["runs"]:
    raise ValueError("results.json holds no runs of the study to report on.")
  config, data = recipe(grid, results)
  seeds = sorted({r["seed"] for r in results["runs"]})
  total_wall = sum(r["wall_seconds"] for r in results["runs"])
  test_images = data.num_eval_examples
  lines = [
      f"# {grid.title}", "",
      f"Generated by `experiments/study/` (grid `{grid.name}`) from `results.json` (one entry "
      "per run, each with the exact command that reproduces it). Study command:", "",
      f"    {results.get('study_command', 'python -m experiments.study --grid=all')}", "",
      f"{len(results['runs'])} runs, seeds {seeds} (paired: every loss uses the same seeds), "
      f"{recipe_text(config)}, on {results.get('num_devices', '?')} "
      f"{results.get('device_kind', '?')} device(s); sum of run wall times "
      f"{total_wall / 60:.1f} min"
      + (f", study wall time {results['study_wall_seconds'] / 60:.1f} min"
         if "study_wall_seconds" in results else "") + ". "
      f"The test set has {test_images} images of {data.num_classes} classes. Each run reports "
      "the final model (no early stopping or checkpoint selection on the test set)"
      + (_BEST_TEXT if any(r.get("best_test_accuracy") is not None for r in results["runs"])
         else "."), "",
      _code_text(results), "",
      *_shard_lines(results),
      *_length_lines(grid, results),
      f"Differences are paired by seed: loss minus `{grid.baseline}` (CE), in percentage "
      "points, with a two-sided 95% Student-t interval over the seeds. **win**: the interval "
      "lies above 0; **loss**: below 0; **tie**: it covers 0. The intervals are per comparison "
      "(Holm's correction for the family is applied below). On "
      f"{test_images} test images one image is {100 / test_images:.1f} pp.", "",
      *[line for note in grid.notes for line in (note, "")],
      "The grid's labels, as overrides of the config file:", "",
      *_overrides_table(grid), "",
  ]
  lines += _baselines_lines(grid, results)
  datasets = [d for d in grid.datasets if stats.runs_of(results, d, grid.baseline)]
  family = holm_family(results, datasets, grid)
  for dataset in datasets:
    counts = next(iter(stats.runs_of(results, dataset, grid.baseline).values()))[
        "train_class_counts"]
    lines += [f"## {dataset}", "",
              f"Training images per class: {counts} (total {sum(counts)}).", ""]
    lines += dataset_table(results, dataset, tuple(grid.losses), grid.baseline) + [""]
    if grid.controls and any(f[2] == dataset for f in family):
      lines += [f"Test-accuracy comparisons of the Holm family ({len(family)} over all "
                "datasets) on this dataset:", ""]
      lines += holm_table(family, dataset) + [""]

  for baseline, why in grid.versus.items() if datasets else ():
    lines += [f"## CFL against `{baseline}`", "",
              f"Paired test-accuracy difference, pp [95% CI], of each CFL variant to "
              f"`{baseline}` ({why}).", ""]
    lines += versus_table(results, datasets, grid.compared, baseline) + [""]

  lines += ["## Training time", "",
            "Median wall seconds per training step (whole run incl. evaluation, compilation "
            "mostly served from the persistent cache) of each loss divided by that of "
            f"`{grid.baseline}`, per dataset. The CPU was shared with other jobs, so single "
            "ratios are noisy.", ""]
  lines += _time_table(grid, results, datasets) + [""]
  lines += _ablation_lines(grid, results)

  lines += _verdict_lines(grid, results, datasets, config, test_images)
  lines += _check_lines(results)
  lines += spread.report_lines(spread_record) if spread_record else []
  lines += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})"
                               for p in plot_paths]
  lines += ["", "## Caveats", ""] + [f"- {caveat}" for caveat in grid.caveats] + [""]
  return "\n".join(lines)


def write_report(grid: Grid, results: Mapping[str, Any], out: store.PathLike) -> str:
  """Writes REPORT.md and the plots to ``out`` (local or in a bucket), quoting ``out``'s
  spread.json if there is one; returns the report text."""
  results = reportable(results)
  paths = plots.make_plots(grid, results, out)
  spread_path = store.as_path(out) / spread.RECORD_FILE
  spread_record = json.loads(spread_path.read_text()) if spread_path.exists() else None
  text = render(grid, results, paths, spread_record)
  store.write_atomic(store.as_path(out) / "REPORT.md", text)
  return text
