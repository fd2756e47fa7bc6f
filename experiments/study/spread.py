"""How far a recorded run moves when only the order of its float work changes.

A rerun on the machine that recorded a run repeats it bit for bit; another machine compiles XLA's
CPU kernels for its own instruction set and splits work over its own threads, which reorders
float sums and moves the result (issue 24: an AVX-512 EPYC moved a 3,000-step MNIST-1D test loss
by 0.86 %). :func:`measure` reruns a recorded command under XLA settings that change only that
order (:data:`SETTINGS`) and records how far test accuracy and loss move; the reproduction tests
allow :data:`SAFETY_FACTOR` times that (:func:`tolerances`):

  python -m experiments.study --study=mnist1d --measure_spread=long_tail_100/cross_entropy/0

writes ``experiments/results/mnist1d/spread.json``, which REPORT.md quotes (:func:`report_lines`).
"""

from collections.abc import Mapping
import datetime
from typing import Any

from experiments.study import provenance
from experiments.study import run

SAFETY_FACTOR = 2.0
RECORD_FILE = "spread.json"  # in the study's results directory
_DEVICES = "--xla_force_host_platform_device_count="
# XLA_FLAGS of each rerun: the device count wins over the command's --cpu_devices.
SETTINGS = {
    "as recorded (1 device)": f"{_DEVICES}1",
    "2 devices": f"{_DEVICES}2",
    "4 devices": f"{_DEVICES}4",
    "Eigen single-threaded": f"{_DEVICES}1 --xla_cpu_multi_thread_eigen=false "
                             "intra_op_parallelism_threads=1",
    "kernels for AVX (no AVX2, no FMA)": f"{_DEVICES}1 --xla_cpu_max_isa=AVX",
}


def spread(recorded: Mapping[str, Any], reruns: list[Mapping[str, Any]]) -> dict[str, float]:
  """The largest move of any rerun from the record: accuracy in points, loss in percent.

  Examples:
    >>> reruns = [{"test_accuracy": 0.503, "test_loss": 2.01},
    ...           {"test_accuracy": 0.5, "test_loss": 1.99}]
    >>> spread({"test_accuracy": 0.5, "test_loss": 2.0}, reruns)
    {'accuracy_pp': 0.3, 'loss_percent': 0.5}
  """
  return {
      "accuracy_pp": round(max(100 * abs(r["test_accuracy"] - recorded["test_accuracy"])
                               for r in reruns), 6),
      "loss_percent": round(max(100 * abs(r["test_loss"] / recorded["test_loss"] - 1)
                                for r in reruns), 6)}


def tolerances(record: Mapping[str, Any]) -> dict[str, float]:
  """What a reproduction test allows: :data:`SAFETY_FACTOR` times the measured spread."""
  return {key: SAFETY_FACTOR * value for key, value in record["spread"].items()}


def measure(entry: Mapping[str, Any], *, command: str, root: str, timeout: float = 600,
            extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
  """Reruns ``entry``'s command once per :data:`SETTINGS` and returns the record.

  ``command`` is the one that measured (it goes into the record); ``root`` (the reproduce root
  its workdir lies in) and ``extra_env`` as for :func:`run.reproduce`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  reruns = []
  for setting, xla_flags in SETTINGS.items():
    check = run.reproduce(entry, root=root, timeout=timeout,
                          extra_env={**(extra_env or {}), "XLA_FLAGS": xla_flags})
    reruns.append({"setting": setting, "xla_flags": xla_flags,
                   "test_accuracy": check["reproduced_test_accuracy"],
                   "test_loss": check["reproduced_test_loss"],
                   "wall_seconds": round(check["wall_seconds"], 1)})
  recorded = {key: entry[key] for key in ("test_accuracy", "test_loss")}
  return {"run_id": entry["run_id"], "command": command, "cpu": provenance.cpu(),
          "jax_version": jax.__version__,
          "date": datetime.date.today().isoformat(), "recorded": recorded,
          "reruns": reruns, "spread": spread(recorded, reruns),
          "safety_factor": SAFETY_FACTOR}


def report_lines(record: Mapping[str, Any]) -> list[str]:
  """REPORT.md's section on the measured spread."""
  spread_, allowed, recorded = record["spread"], tolerances(record), record["recorded"]
  lines = [
      "## Reproduction on another machine", "",
      f"A rerun on another x86-64 machine agrees within {spread_['accuracy_pp']:.2f} points of "
      f"test accuracy and {spread_['loss_percent']:.2f} % of test loss. That is the largest move "
      f"of the recorded `{record['run_id']}` (test accuracy "
      f"{100 * recorded['test_accuracy']:.1f} %, test loss {recorded['test_loss']:.4f}) rerun "
      f"from its command on {record['cpu']} (JAX {record['jax_version']}, {record['date']}), "
      "as recorded and under XLA settings that only reorder its float work: the device count, "
      "Eigen's threads and the instruction set of the compiled kernels. Measured by", "",
      f"    {record['command']}", "",
      f"The reproduction tests (`tests/test_study_reproduction.py`) allow {SAFETY_FACTOR:g} "
      f"times the spread: {allowed['accuracy_pp']:.2f} points of accuracy, "
      f"{allowed['loss_percent']:.2f} % of loss. Reruns on one machine are bit-identical "
      "(above); the data is not a source of the spread (MNIST-1D's generated arrays are "
      "checked against their recorded sha256, digits is a file).", "",
      "| XLA setting | test acc % | test loss | XLA_FLAGS |", "|---|---|---|---|"]
  for r in record["reruns"]:
    lines.append(f"| {r['setting']} | {100 * r['test_accuracy']:.1f} | {r['test_loss']:.4f} | "
                 f"`{r['xla_flags']}` |")
  return lines + [""]
