"""Forward + gradient time of each loss form against its optax baseline.

Softmax forms run against optax cross-entropy (integer labels); sigmoid
(multi-label) forms against ``optax.sigmoid_focal_loss`` (multi-hot labels).
Every candidate of a table runs on the same logits and labels; timings are
interleaved (one call of each function per round, in a rotating order) and the
median over rounds is reported, with the ratio to the table's first row measured
in the same rounds.

    python benchmarks/loss_benchmark.py                    # the CPU shapes
    python benchmarks/loss_benchmark.py --shapes 8192x32768:float32 --rounds 50
    python benchmarks/loss_benchmark.py --shapes --sigmoid_shapes 4096x1000:float32
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import cfl_jax
from record import write_record

DEFAULT_SHAPES = ("4096x1000:float32", "1024x32768:float32", "1024x32768:bfloat16")
DEFAULT_SIGMOID_SHAPES = ("4096x1000:float32",)
POSITIVE_RATE = 0.01  # multi-hot labels: about 10 positives in 1,000 labels

SOFTMAX_FORMS = {
    "cross_entropy (optax)": lambda z, t, xi: optax.softmax_cross_entropy_with_integer_labels(z, t),
    "focal": lambda z, t, xi: cfl_jax.focal_loss_with_integer_labels(z, t, gamma=2.0),
    "high_confidence": lambda z, t, xi: cfl_jax.high_confidence_loss_with_integer_labels(
        z, t, gamma=2.0),
    "cfl paper": lambda z, t, xi: cfl_jax.cyclical_focal_loss_with_integer_labels(
        z, t, xi, gamma_hc=3.0, gamma_lc=2.0),
    "cfl reference (eps 0.1)": lambda z, t, xi: cfl_jax.cyclical_focal_loss_with_integer_labels(
        z, t, xi, gamma_hc=3.0, gamma_lc=2.0, gamma_neg=2.0, label_smoothing=0.1),
    "cfl reference (gneg 1.5)": lambda z, t, xi: cfl_jax.cyclical_focal_loss_with_integer_labels(
        z, t, xi, gamma_hc=3.0, gamma_lc=2.0, gamma_neg=1.5, label_smoothing=0.1),
}

SIGMOID_FORMS = {
    "focal (optax)": lambda z, y, xi: optax.sigmoid_focal_loss(z, y, gamma=2.0),
    "high_confidence": lambda z, y, xi: cfl_jax.sigmoid_high_confidence_loss(z, y, gamma=2.0),
    "cfl paper": lambda z, y, xi: cfl_jax.sigmoid_cyclical_focal_loss(
        z, y, xi, gamma_hc=2.0, gamma_lc=2.0),
    "cfl paper (glc 0.5)": lambda z, y, xi: cfl_jax.sigmoid_cyclical_focal_loss(
        z, y, xi, gamma_hc=2.0, gamma_lc=0.5),
    "cfl asl (gneg 4, clip .05)": lambda z, y, xi: cfl_jax.sigmoid_cyclical_focal_loss(
        z, y, xi, gamma_hc=2.0, gamma_lc=0.0, gamma_neg=4.0, clip=0.05),
}


def value_and_grad_fn(loss):
  """Mean loss and its gradient w.r.t. the logits, jitted; xi is a traced scalar."""
  return jax.jit(jax.value_and_grad(lambda z, t, xi: loss(z, t, xi).mean()))


def parse_shape(text):
  dims, dtype = text.split(":")
  batch, classes = (int(d) for d in dims.split("x"))
  return batch, classes, jnp.dtype(dtype)


def softmax_labels(key, batch, classes):
  return jax.random.randint(key, (batch,), 0, classes)


def multi_hot_labels(key, batch, classes):
  return (jax.random.uniform(key, (batch, classes)) < POSITIVE_RATE).astype(jnp.float32)


def benchmark(forms, make_labels, batch, classes, dtype, rounds):
  key_z, key_t = jax.random.split(jax.random.key(0))
  logits = (3 * jax.random.normal(key_z, (batch, classes))).astype(dtype)
  labels = make_labels(key_t, batch, classes)
  xi = jnp.float32(0.3)
  fns = {name: value_and_grad_fn(loss) for name, loss in forms.items()}
  for fn in fns.values():  # compile and warm up
    jax.block_until_ready(fn(logits, labels, xi))
  times = {name: [] for name in fns}
  names = list(fns)
  for r in range(rounds):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      start = time.perf_counter()
      jax.block_until_ready(fns[name](logits, labels, xi))
      times[name].append(time.perf_counter() - start)
  base = statistics.median(times[names[0]])
  return {name: (statistics.median(t), statistics.median(t) / base)
          for name, t in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", nargs="*", default=list(DEFAULT_SHAPES),
                      help="BATCHxCLASSES:dtype entries for the softmax losses")
  parser.add_argument("--sigmoid_shapes", nargs="*", default=list(DEFAULT_SIGMOID_SHAPES),
                      help="BATCHxLABELS:dtype entries for the sigmoid (multi-label) losses")
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--record", type=pathlib.Path, help="also write the results as JSON here")
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}, {args.rounds} interleaved rounds, median")
  tables = [(text, SOFTMAX_FORMS, softmax_labels, "x CE", "") for text in args.shapes]
  tables += [(text, SIGMOID_FORMS, multi_hot_labels, "x FL", "sigmoid, multi-hot labels, ")
             for text in args.sigmoid_shapes]
  rows = []
  for text, forms, make_labels, ratio_label, kind in tables:
    batch, classes, dtype = parse_shape(text)
    print(f"\n({batch}, {classes}) {dtype.name}   {kind}forward+grad of the mean loss")
    print(f"  {'loss':<26}{'ms':>10}{ratio_label:>8}")
    results = benchmark(forms, make_labels, batch, classes, dtype, args.rounds)
    for name, (seconds, ratio) in results.items():
      print(f"  {name:<26}{seconds * 1e3:>10.2f}{ratio:>8.2f}")
      rows.append({"case": f"{kind}{text}", "loss": name, "ms": seconds * 1e3, "x_ce": ratio})
  if args.record:
    write_record(args.record, title="loss forward + gradient", args={"rounds": args.rounds},
                 rows=rows)


if __name__ == "__main__":
  main()
