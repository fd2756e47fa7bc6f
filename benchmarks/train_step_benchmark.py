"""Time of a whole jitted train step with cross-entropy against each cyclical focal loss form.

Every loss trains the same model from the same state on the same batch with the same optimizer
(SGD + Nesterov, weight decay); only the objective differs. Timings are interleaved (a block of
steps of each loss per round, in a rotating order); the report gives the median step time and the
median over rounds of the per-round ratio to cross-entropy, which cancels slow drifts of a shared
machine's load.

    python benchmarks/train_step_benchmark.py                      # digits CNN, batch 64
    python benchmarks/train_step_benchmark.py --model resnet20 --batch_size 128
    python benchmarks/train_step_benchmark.py --model resnet18_cifar --dtype bfloat16  # GPU
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import jax
import numpy as np

import cfl_jax
from cfl_jax.models import get_model
from cfl_jax.training import recipe, resolve_config, sharding, train
from record import write_record

# config.loss overrides of each candidate; the first is the baseline.
LOSSES = {
    "cross_entropy": {"name": "cross_entropy"},
    "cyclical_focal (paper)": {"name": "cyclical_focal", "gamma_hc": 3.0, "gamma_lc": 2.0},
    "cyclical_focal_reference (eps 0.1)": {"name": "cyclical_focal_reference", "gamma_hc": 3.0,
                                           "gamma_lc": 2.0, "gamma_neg": 2.0,
                                           "label_smoothing": 0.1},
}
IMAGE_SHAPES = {"digits_cnn": (8, 8, 1)}  # every other model: CIFAR-sized (32, 32, 3)
NUM_CLASSES = 10
TOTAL_STEPS = 10_000  # schedule length; xi moves a little during the benchmark


def train_steps(model_name: str, dtype: str, mesh):
  """``{loss name: (jitted train step, its own fresh state)}``, all from one initialisation."""
  model = get_model(model_name, num_classes=NUM_CLASSES, dtype=dtype)
  optimizer = resolve_config({}).optimizer
  learning_rate = recipe.learning_rate_schedule(optimizer, total_steps=TOTAL_STEPS,
                                               steps_per_epoch=100)
  tx = recipe.build_optimizer(optimizer)  # the train step sets its learning rate
  schedules = {"xi": cfl_jax.xi_schedule(TOTAL_STEPS), "learning_rate": learning_rate}
  shape = IMAGE_SHAPES.get(model_name, (32, 32, 3))
  init = jax.jit(lambda rng: train.create_train_state(model, tx, rng, shape),
                 out_shardings=sharding.replicated(mesh))
  result = {}
  for name, overrides in LOSSES.items():
    loss_fn = recipe.get_loss_fn(resolve_config({"loss": overrides}).loss)
    step = train.jit_train_step(mesh, loss_fn=loss_fn, schedules=schedules)
    result[name] = (step, init(jax.random.key(0)))  # each its own copy: states are donated
  return result, shape


def benchmark(model_name: str, batch_size: int, dtype: str, rounds: int, steps_per_round: int):
  """``{loss name: (median seconds per step, median per-round ratio to the baseline)}``."""
  mesh = sharding.make_data_mesh()
  sharding.check_batch_size("batch_size", batch_size, mesh)
  candidates, shape = train_steps(model_name, dtype, mesh)
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch(
      {"image": rng.random((batch_size, *shape), dtype=np.float32),
       "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)}, mesh)
  step_rng = jax.random.key(1)
  states = {}

  def run(name, count):
    step, state = candidates[name][0], states.get(name, candidates[name][1])
    for _ in range(count):
      state, metrics = step(state, batch, step_rng)
    jax.block_until_ready(metrics["loss"])
    states[name] = state

  for name in candidates:  # compile and warm up
    run(name, 2)
  names = list(candidates)
  times = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      start = time.perf_counter()
      run(name, steps_per_round)
      times[name].append((time.perf_counter() - start) / steps_per_round)
  base = times[names[0]]
  return {name: (statistics.median(t), statistics.median(a / b for a, b in zip(t, base)))
          for name, t in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="digits_cnn")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--steps_per_round", type=int, default=10)
  parser.add_argument("--record", type=pathlib.Path, help="also write the results as JSON here")
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}) x {jax.device_count()}, "
        f"jax {jax.__version__}; {args.model}, batch {args.batch_size}, {args.dtype}; "
        f"{args.rounds} interleaved rounds of {args.steps_per_round} steps, medians")
  results = benchmark(args.model, args.batch_size, args.dtype, args.rounds,
                      args.steps_per_round)
  for name, (seconds, ratio) in results.items():
    print(f"  {name:38s} {seconds * 1e3:9.3f} ms/step   x{ratio:.4f} vs cross_entropy")
  if args.record:
    case = f"{args.model} batch {args.batch_size} {args.dtype}"
    write_record(args.record, title="whole train step",
                 args={k: v for k, v in vars(args).items() if k != "record"},
                 rows=[{"case": case, "loss": name, "ms": seconds * 1e3, "x_ce": ratio}
                       for name, (seconds, ratio) in results.items()])


if __name__ == "__main__":
  main()
