"""Size, compute and speed of one model: parameters, GMACs per image, forward + backward time.

GMACs are XLA's count of floating-point operations of the compiled evaluation forward pass for one
image, halved (one multiply-accumulate = 2 flops); they include BatchNorm, activations and pooling
besides the convolutions, but XLA counts only the kernel taps that fall inside the image, not those
on zero padding, so the figure is below the usual count (which includes them) by a few percent.
The time is that of one jitted training-mode forward + backward pass (gradient of the mean
cross-entropy with respect to the parameters, BatchNorm statistics updated), median over rounds,
divided by the batch size.

    python benchmarks/model_benchmark.py                                  # TResNet-M, 224 px, CPU
    python benchmarks/model_benchmark.py --model resnet50 --batch_size 64 --dtype bfloat16
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cfl_jax.models import get_model


def gmacs_per_image(model, variables, image_size: int) -> float:
  """Half of XLA's flop count of the compiled evaluation forward pass for one image, in 1e9."""
  images = jnp.zeros((1, image_size, image_size, 3))
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  cost = forward.lower(variables, images).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost  # older jax returns one dict per device
  return cost["flops"] / 2 / 1e9


def forward_backward_seconds(model, variables, image_size: int, batch_size: int, rounds: int):
  """Median seconds of one jitted forward + backward pass over a batch."""
  images = jax.random.uniform(jax.random.key(1), (batch_size, image_size, image_size, 3))
  labels = jnp.arange(batch_size) % model.num_classes

  def loss(params, batch_stats):
    logits, updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, images, train=True,
        mutable=["batch_stats"],
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

  step = jax.jit(jax.grad(loss, has_aux=True))
  jax.block_until_ready(step(variables["params"], variables["batch_stats"]))  # compile
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    jax.block_until_ready(step(variables["params"], variables["batch_stats"]))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="tresnet_m")
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args()

  model = get_model(args.model, num_classes=args.num_classes, dtype=args.dtype)
  images = jnp.zeros((1, args.image_size, args.image_size, 3))
  variables = jax.jit(lambda key: model.init(key, images, train=False))(jax.random.key(0))
  num_params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))
  gmacs = gmacs_per_image(model, variables, args.image_size)
  seconds = forward_backward_seconds(
      model, variables, args.image_size, args.batch_size, args.rounds
  )
  print(f"{args.model} {args.image_size}px {args.dtype} on {jax.devices()[0].device_kind}: "
        f"{num_params:,} parameters, {gmacs:.2f} GMACs/image (XLA cost analysis), "
        f"forward+backward {1e3 * seconds / args.batch_size:.1f} ms/image "
        f"(batch {args.batch_size}, median of {args.rounds} rounds)")


if __name__ == "__main__":
  main()
