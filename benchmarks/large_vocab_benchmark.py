"""Memory and time of the fused large-vocabulary loss against optax cross-entropy on ``h @ w``.

Every candidate computes the value and the gradient (w.r.t. the embeddings and the kernel) of
the mean loss from the same embeddings ``[N, D]``, kernel ``[D, V]`` and labels. Memory is the
compiled temporaries (``jax.jit(...).lower(...).compile().memory_analysis()``: everything but
arguments and outputs); time is the median over interleaved rounds (one call of each candidate per
round, in a rotating order), with the ratio to the unfused optax cross-entropy of the same rounds.

``--mesh DATAxMODEL`` compares the dense paper form with the vocabulary-parallel fused one
(``vocab_axis="model"``) on a (data, model) mesh with Auto axes: tokens on 'data', the kernel's
columns on 'model'; memory is then per device and the ratio is to the dense loss.

    python benchmarks/large_vocab_benchmark.py                     # CPU: 4096 x 512 x 65536 f32
    python benchmarks/large_vocab_benchmark.py --vocab 1000 --rounds 20   # the dense sizes
    python benchmarks/large_vocab_benchmark.py --batch 8192 --dim 4096 --vocab 131072 \\
        --dtype bfloat16 --rounds 10                               # GPU
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/large_vocab_benchmark.py \\
        --batch 1024 --dim 256 --vocab 32768 --rounds 5 --mesh 2x4  # 8 CPU devices
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

import cfl_jax
from record import write_record

MIB = 2**20
PAPER = {"gamma_hc": 3.0, "gamma_lc": 2.0}
PAPER_SMOOTHED = {**PAPER, "label_smoothing": 0.1}
REFERENCE = {"gamma_hc": 3.0, "gamma_lc": 2.0, "gamma_neg": 2.0, "label_smoothing": 0.1}
LM = {**PAPER, "z_loss": 1e-4, "logit_soft_cap": 30.0}  # PaLM's z-loss, Gemma 2's cap


def candidates(chunk_size, vocab_axis=None):
  """``{name: loss(h, w, labels, xi) -> [N]}``; the first is the baseline. With ``vocab_axis``:
  the dense and the vocabulary-parallel fused paper form."""
  def fused(**kw):
    return lambda h, w, t, xi: cfl_jax.linear_cyclical_focal_loss_with_integer_labels(
        h, w, t, xi, chunk_size=chunk_size, vocab_axis=vocab_axis, **kw)

  def dense(**kw):
    return lambda h, w, t, xi: cfl_jax.cyclical_focal_loss_with_integer_labels(h @ w, t, xi, **kw)

  if vocab_axis is not None:
    return {"cfl paper (dense, h @ w)": dense(**PAPER),
            "cfl paper (fused, vocab-parallel)": fused(**PAPER)}
  return {
      "cross_entropy (optax, h @ w)":
          lambda h, w, t, xi: optax.softmax_cross_entropy_with_integer_labels(h @ w, t),
      "cfl paper (dense, h @ w)": dense(**PAPER),
      "cfl paper eps 0.1 (dense, h @ w)": dense(**PAPER_SMOOTHED),
      "cfl reference (dense, h @ w)": dense(**REFERENCE),
      "cfl paper z-loss cap (dense, h @ w)": dense(**LM),
      "cross_entropy (fused, gamma 0)": fused(gamma_hc=0.0, gamma_lc=0.0),
      "cfl paper (fused)": fused(**PAPER),
      "cfl paper eps 0.1 (fused)": fused(**PAPER_SMOOTHED),
      "cfl reference (fused)": fused(**REFERENCE),
      "cfl paper z-loss cap (fused)": fused(**LM),
  }


def value_and_grad_fn(loss):
  return jax.jit(jax.value_and_grad(lambda h, w, t, xi: loss(h, w, t, xi).mean(), argnums=(0, 1)))


def benchmark(batch, dim, vocab, dtype, rounds, chunk_size=None, mesh=None):
  """``{name: {"temp_mib", "seconds", "x_ce"}}``; on ``mesh`` (axes 'data', 'model') if given."""
  with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
    return _benchmark(batch, dim, vocab, dtype, rounds, chunk_size, mesh is not None)


def _benchmark(batch, dim, vocab, dtype, rounds, chunk_size, sharded):
  key_h, key_w, key_t = jax.random.split(jax.random.key(0), 3)
  h = jax.random.normal(key_h, (batch, dim)).astype(dtype)
  w = (jax.random.normal(key_w, (dim, vocab)) / dim**0.5 * 3).astype(dtype)
  labels = jax.random.randint(key_t, (batch,), 0, vocab)
  if sharded:
    h, w, labels = jax.device_put((h, w, labels), (P("data"), P(None, "model"), P("data")))
  xi = jnp.float32(0.3)
  fns, results = {}, {}
  for name, loss in candidates(chunk_size, "model" if sharded else None).items():
    compiled = value_and_grad_fn(loss).lower(h, w, labels, xi).compile()
    fns[name] = compiled
    results[name] = {"temp_mib": compiled.memory_analysis().temp_size_in_bytes / MIB}
    jax.block_until_ready(compiled(h, w, labels, xi))  # warm up
  names = list(fns)
  times = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      start = time.perf_counter()
      jax.block_until_ready(fns[name](h, w, labels, xi))
      times[name].append(time.perf_counter() - start)
  base = statistics.median(times[names[0]])
  for name in names:
    seconds = statistics.median(times[name])
    results[name].update(seconds=seconds, x_ce=seconds / base)
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=4096)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--vocab", type=int, default=65536)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--chunk_size", type=int, default=None, help="default: the loss's choice")
  parser.add_argument("--mesh", help="DATAxMODEL, e.g. 2x4: dense against vocabulary-parallel "
                      "fused on a (data, model) mesh")
  parser.add_argument("--record", type=pathlib.Path, help="also write the results as JSON here")
  args = parser.parse_args()
  device = jax.devices()[0]
  case = f"N={args.batch} D={args.dim} V={args.vocab} {args.dtype}"
  mesh = None
  if args.mesh:
    shape = tuple(int(size) for size in args.mesh.split("x"))
    mesh = jax.make_mesh(shape, ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    case += f" mesh {args.mesh}"
  header = (f"device: {device.device_kind} ({jax.default_backend()}) x {jax.device_count()}, "
            f"jax {jax.__version__}; {case}; value + grad (h, w) of the mean loss; {args.rounds} "
            "interleaved rounds, median" + ("; temporaries per device" if mesh else ""))
  print(header)
  results = benchmark(args.batch, args.dim, args.vocab, jnp.dtype(args.dtype), args.rounds,
                      args.chunk_size, mesh)
  print(f"  {'loss':<34}{'temp MiB':>10}{'ms':>12}{'x base':>8}")
  for name, r in results.items():
    print(f"  {name:<34}{r['temp_mib']:>10.1f}{r['seconds'] * 1e3:>12.1f}{r['x_ce']:>8.2f}")
  if args.record:
    write_record(args.record, title="value + gradient (h, w) of mean(loss(h @ w))",
                 args={k: v for k, v in vars(args).items() if k != "record"},
                 rows=[{"case": case, "loss": name, "temp_mib": r["temp_mib"],
                        "ms": r["seconds"] * 1e3, "x_ce": r["x_ce"]}
                       for name, r in results.items()])


if __name__ == "__main__":
  main()
