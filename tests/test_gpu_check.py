"""benchmarks/gpu_check.sh runs every benchmark and prints one table (checked at --small)."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_small_run_prints_one_table_with_every_benchmark():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--small"], cwd=ROOT, env={
      **env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  table = result.stdout[result.stdout.index("\ngpu_check: "):]
  assert re.match(r"\ngpu_check: cpu \(cpu\), jax \d", table), table[:200]
  rows = [line for line in table.splitlines() if line.startswith("| ")][1:]  # minus the header
  benchmarks = {row.split("|")[1].strip() for row in rows}
  assert benchmarks == {"loss forward + gradient", "whole train step",
                        "value + gradient (h, w) of mean(loss(h @ w))"}, benchmarks
  # softmax, sigmoid, train step, large vocabulary (with z-loss + soft-cap), on a (2, 4) mesh
  assert len(rows) == 6 + 5 + 3 + 10 + 2, rows
  for row in rows:
    ms, ratio = (float(cell) for cell in row.split("|")[4:6])
    assert ms > 0 and ratio > 0, row
  baselines = [row for row in rows if float(row.split("|")[5]) == 1.0]
  assert len(baselines) >= 3, rows  # each benchmark's first row is its own baseline
  fused = [row for row in rows if "(fused" in row]
  assert len(fused) == 6 and all(row.split("|")[6].strip() for row in fused), fused


def test_unknown_argument_is_refused():
  result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--large"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2 and "usage" in result.stderr
