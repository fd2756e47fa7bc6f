"""Statistics of a study: mean and spread over seeds, paired differences, verdicts, Holm.

Comparisons are paired by seed: two losses trained on the same seeds share initialisation and
data order, so their per-seed differences carry less noise than either accuracy.
"""

from collections.abc import Mapping, Sequence
import math
from typing import Any

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
  values = np.asarray(values, dtype=np.float64)
  std = float(values.std(ddof=1)) if values.size > 1 else 0.0
  return float(values.mean()), std


def paired_t_interval(a: Sequence[float], b: Sequence[float],
                      confidence: float = 0.95) -> dict[str, float]:
  """Mean of the paired differences ``a - b``, its two-sided t-interval and p-value.

  Returns:
    ``{'mean', 'std', 'n', 'low', 'high', 't_crit', 'p'}``; ``low``, ``high``, ``t_crit`` and
    ``p`` are NaN for ``n < 2``. ``p`` is the two-sided p-value of "mean difference = 0".
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
            "t_crit": math.nan, "p": math.nan}
  t_crit = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1))
  half = t_crit * std / math.sqrt(n)
  if std > 0:
    p = float(2 * stats.t.sf(abs(mean) / (std / math.sqrt(n)), df=n - 1))
  else:  # identical differences: certain, unless all are zero
    p = 1.0 if mean == 0 else 0.0
  return {"mean": mean, "std": std, "n": n, "low": mean - half, "high": mean + half,
          "t_crit": t_crit, "p": p}


def verdict(interval: Mapping[str, float]) -> str:
  """'win' if the interval lies above 0, 'loss' if below, else 'tie'."""
  if interval["low"] > 0:
    return "win"
  if interval["high"] < 0:
    return "loss"
  return "tie"


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm-adjusted p-values of a family of tests (controls the family-wise error rate).

  Sorted ascending, the k-th smallest p-value (k from 0) of m is multiplied by m - k, capped at
  1, and made non-decreasing; a test is significant at level alpha for the whole family when its
  adjusted p-value is <= alpha.

  Examples:
    >>> holm([0.01, 0.04, 0.03, 0.005])
    [0.03, 0.06, 0.06, 0.02]

  References:
    Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 6 (1979).
  """
  m = len(p_values)
  adjusted = [0.0] * m
  running = 0.0
  for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
    running = max(running, min(1.0, (m - rank) * p_values[index]))
    adjusted[index] = running
  return adjusted


def runs_of(results: Mapping[str, Any], dataset: str, loss: str) -> dict[int, dict]:
  """seed -> run of ``loss`` on ``dataset``."""
  return {r["seed"]: r for r in results["runs"] if r["dataset"] == dataset and r["loss"] == loss}


def compare(results: Mapping[str, Any], dataset: str, loss: str, baseline: str,
            metric: str = "test_accuracy") -> dict[str, Any] | None:
  """Mean/std of ``loss`` and its paired difference to ``baseline`` over their common seeds."""
  runs, base = runs_of(results, dataset, loss), runs_of(results, dataset, baseline)
  values = [runs[s][metric] for s in sorted(runs) if runs[s].get(metric) is not None]
  if not values:
    return None
  mean, std = mean_std(values)
  out = {"mean": mean, "std": std, "n": len(values), "wall": float(np.median(
      [runs[s]["wall_seconds"] for s in runs]))}
  paired = [s for s in sorted(set(runs) & set(base))
            if runs[s].get(metric) is not None and base[s].get(metric) is not None]
  if loss != baseline and len(paired) >= 2:
    out["diff"] = paired_t_interval([runs[s][metric] for s in paired],
                                    [base[s][metric] for s in paired])
    out["verdict"] = verdict(out["diff"])
  return out
