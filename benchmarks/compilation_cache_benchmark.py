"""Wall time of a relaunch with and without the persistent compilation cache (whole command).

Runs the CIFAR-10 recipe's smoke (two steps at 224 px, one evaluation, one checkpoint) with
TResNet-M on tiny CIFAR-format data, each run a fresh ``python -m experiments.train`` process in a
workdir holding no checkpoint: once to fill the workdir's cache (``config.compilation_cache=
'auto'``), then in alternating rounds with ``--config.compilation_cache=off`` in a fresh workdir
(what every relaunch did before the cache) and in the first workdir with everything but its warm
cache removed (a relaunch on a new VM whose workdir is the bucket). The report gives the median
wall time of each and the median over rounds of the per-round ratio warm / off, which cancels
slow drifts of a shared machine's load; and the same for the processes' CPU time (user +
system), which others' load on a shared machine moves far less.

The smoke trains at batch 4 by default (``--batch_size``), so that its steps are short and
compilation dominates, as on a pod. ``--store gcs`` puts the workdirs (so the cache) in a bucket
on the GCS emulator of the tests (``tests/gcs_emulator.py``), the runs given only the emulator's
variables, as a user of one sets them; the data stay local.

    python benchmarks/compilation_cache_benchmark.py --rounds 2 \
        --record benchmarks/records/compilation_cache_cpu.json
    python benchmarks/compilation_cache_benchmark.py --rounds 2 --store gcs \
        --record benchmarks/records/compilation_cache_cpu_gcs.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from etils import epath
from record import write_record

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import tfds_fakes  # pylint: disable=g-import-not-at-top,wrong-import-position

CACHE = "compilation_cache"  # the 'auto' cache's place in the workdir
# JAX settings of the calling environment that would replace the run's own cache choice.
JAX_CACHE_VARIABLES = ("JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE",
                       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")
# What JAX logs of each program with JAX_LOG_COMPILES (wall seconds): the phases a relaunch pays
# for its programs with or without the cache ("compilation" is the cache's load on a hit).
PHASES = {"tracing": "Finished tracing", "lowering": "Finished jaxpr to MLIR module conversion",
          "compilation": "Finished XLA compilation"}


def _children_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def launch(data_dir: pathlib.Path, workdir: epath.Path, model: str, batch_size: int,
           *flags: str) -> tuple[float, float, dict[str, float]]:
  """(wall, CPU) seconds of one smoke run as a fresh process, and the seconds JAX logged for each
  of :data:`PHASES` of its programs with their count and cache hits (raises with its output if
  it fails)."""
  command = [sys.executable, "-m", "experiments.train",
             f"--config=experiments/configs/cifar10.py:smoke,data_dir={data_dir}",
             f"--config.model.name={model}", f"--config.batch_size={batch_size}",
             f"--config.eval_batch_size={batch_size}", f"--workdir={workdir}", *flags]
  environment = {key: value for key, value in os.environ.items()
                 if key not in JAX_CACHE_VARIABLES}
  environment.update(PYTHONPATH=str(REPO), JAX_LOG_COMPILES="1")
  start, cpu_start = time.perf_counter(), _children_cpu_seconds()
  done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True,
                        check=False)
  seconds, cpu = time.perf_counter() - start, _children_cpu_seconds() - cpu_start
  if done.returncode:
    raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
  phases = {name: sum(float(seconds) for seconds in re.findall(
      re.escape(text) + r" .* in ([0-9.e-]+) sec", done.stderr)) for name, text in PHASES.items()}
  phases["programs"] = done.stderr.count(PHASES["compilation"])
  phases["cache_hits"] = done.stderr.count("Persistent compilation cache hit")
  return seconds, cpu, phases


def benchmark(data_dir: pathlib.Path, root: epath.Path, model: str, batch_size: int,
              rounds: int) -> dict:
  """(wall, CPU) seconds of the first launch and of each round's uncached and warm relaunch, with
  the workdirs under ``root``; the cache's entries and size."""
  tfds_fakes.prepare_cifar(data_dir, "cifar10", train_size=16, test_size=16)
  workdir = root / "first"
  first = launch(data_dir, workdir, model, batch_size)
  entries = list((workdir / CACHE).iterdir())
  times: dict[str, list[tuple[float, float, dict[str, float]]]] = {"off": [], "warm": []}
  for r in range(rounds):
    for kind in ("off", "warm") if r % 2 == 0 else ("warm", "off"):
      if kind == "warm":
        for path in workdir.iterdir():
          if path.name != CACHE:
            path.rmtree() if path.is_dir() else path.unlink()
        times[kind].append(launch(data_dir, workdir, model, batch_size))
      else:
        times[kind].append(launch(data_dir, root / f"off_{r}", model, batch_size,
                                  "--config.compilation_cache=off"))
      wall, cpu, phases = times[kind][-1]
      print(f"  round {r}: {kind:4s} {wall:7.1f} s wall, {cpu:7.1f} s CPU; "
            + ", ".join(f"{name} {value:.1f}" for name, value in phases.items()), flush=True)
  return {"first": first, **times, "entries": len(entries),
          "cache_mib": sum(e.stat().length for e in entries) / 2**20}


def cpu_name() -> str:
  """The CPU model (Linux), for the record."""
  with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
    names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
  return f"{names[0]} ({os.cpu_count()} cores)" if names else "unknown"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="tresnet_m")
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--store", choices=("local", "gcs"), default="local",
                      help="where the workdirs are: a local directory or a bucket on the emulator")
  parser.add_argument("--record", type=pathlib.Path, help="also write the results as JSON here")
  args = parser.parse_args()
  print(f"{cpu_name()}; CIFAR-10 smoke with {args.model} at batch {args.batch_size}, "
        f"{args.rounds} alternating rounds, {args.store} workdirs")
  load_before = os.getloadavg()[1]
  with tempfile.TemporaryDirectory() as root, contextlib.ExitStack() as stack:
    data_dir, workdirs = pathlib.Path(root) / "tfds", epath.Path(root) / "runs"
    if args.store == "gcs":
      import gcs_emulator  # pylint: disable=g-import-not-at-top (needs the test extra)
      from cfl_jax import store  # pylint: disable=g-import-not-at-top
      stack.enter_context(gcs_emulator.serving("cfl-jax-benchmark",
                                               pathlib.Path(root) / "emulator.log"))
      store.use_runner_clients()  # this process lists the bucket as the runs write it
      workdirs = epath.Path("gs://cfl-jax-benchmark/runs")
    data_dir.mkdir()
    result = benchmark(data_dir, workdirs, args.model, args.batch_size, args.rounds)
  load = (load_before, os.getloadavg()[1])
  rows = []
  for measure, index in (("wall", 0), ("CPU", 1)):
    off, warm = ([t[index] for t in result[kind]] for kind in ("off", "warm"))
    ratio = statistics.median(w / o for w, o in zip(warm, off))
    print(f"  {measure}: first launch {result['first'][index]:.1f} s, without cache "
          f"{statistics.median(off):.1f} s, warm cache {statistics.median(warm):.1f} s, "
          f"x{ratio:.2f}")
    case = f"{measure} time"
    rows += [{"case": case, "relaunch": "compilation_cache=off",
              "ms": statistics.median(off) * 1e3, "x_ce": 1.0},
             {"case": case, "relaunch": "warm cache in the workdir",
              "ms": statistics.median(warm) * 1e3, "x_ce": ratio}]
  phases = {kind: {name: statistics.median(t[2][name] for t in result[kind])
                   for name in result[kind][0][2]} for kind in ("off", "warm")}
  for kind in ("off", "warm"):
    print(f"  {kind} (medians, wall s): " + ", ".join(f"{name} {value:.1f}"
                                                     for name, value in phases[kind].items()))
  print(f"  the cache: {result['entries']} entries, {result['cache_mib']:.1f} MiB; the machine's "
        f"5-minute load average {load[0]:.1f} before, {load[1]:.1f} after")
  if args.record:
    write_record(args.record, title=f"relaunch of the cifar10 smoke with {args.model}"
                 + (" (workdir in a bucket on the GCS emulator)" if args.store == "gcs" else ""),
                 label="relaunch",
                 args={**{k: v for k, v in vars(args).items() if k != "record"},
                       "cpu": cpu_name(), "cache_entries": result["entries"],
                       "cache_mib": round(result["cache_mib"], 2),
                       "load_average_5min": [round(x, 2) for x in load],
                       "seconds": {k: [t[:2] for t in result[k]] if k != "first"
                                   else result[k][:2] for k in ("first", "off", "warm")},
                       "jax_phases_wall_seconds": phases},
                 rows=rows)


if __name__ == "__main__":
  main()
