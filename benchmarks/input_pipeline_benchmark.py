"""Host input-pipeline throughput in images per second, with the pipelines the configs use.

* ``cifar``: the 224-px CIFAR recipe (``cfl_jax.data.array_stream``): RandAugment m9 at 32 px,
  random-resized crop to 224, flip, standardisation, random erasing 0.6, from uint8 arrays;
  ``--aug_splits 3`` serves each image as the configs do, a clean view (crop and flip) and two
  augmented ones, and the rate counts images and rows (views) apart.
* ``imagenet``: the ImageNet training transform (``cfl_jax.data.image_ops``): JPEG decode of the
  crop window, resize to 224, flip, standardisation; ``--augment`` adds RandAugment m9 and random
  erasing 0.4 as the ImageNet config does. The JPEGs are 500 x 375 (the ImageNet median is about
  that) of smooth colour gradients plus noise, quality 90.

Pin the process to the cores you want to count, e.g. one core:

    taskset -c 0 python benchmarks/input_pipeline_benchmark.py --pipeline cifar [--aug_splits 3]
    taskset -c 0 python benchmarks/input_pipeline_benchmark.py --pipeline imagenet [--augment]
"""

import argparse
import io
import os
import time

import numpy as np
import PIL.Image
import tensorflow as tf

from cfl_jax.data import image_ops
from cfl_jax.data import rand_augment
from cfl_jax.data.array_stream import StreamedArrayDataset


def cifar_batches(batch_size: int, aug_splits: int = 1):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8)
  data = StreamedArrayDataset(
      name="cifar", num_classes=10, train_images=images, train_labels=np.arange(4096) % 10,
      eval_images=images[:10], eval_labels=np.arange(10), image_size=224, mean=(0.5,) * 3,
      std=(0.25,) * 3, rand_augment=9, random_erasing=0.6, aug_splits=aug_splits)
  return data.train_batches(global_batch_size=batch_size, seed=0)


def _jpegs(count: int) -> list[bytes]:
  rng = np.random.default_rng(0)
  rows, cols = np.mgrid[0:375, 0:500]
  files = []
  for k in range(count):
    base = np.stack([rows * (k % 7 + 1), cols * (k % 5 + 1), rows + cols], axis=-1) % 256
    image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    output = io.BytesIO()
    PIL.Image.fromarray(image).save(output, format="JPEG", quality=90)
    files.append(output.getvalue())
  return files


def imagenet_batches(batch_size: int, augment: bool):
  randaug = rand_augment.RandAugment(magnitude=9) if augment else None
  erase = image_ops.RandomErasing(0.4 if augment else 0.0)

  def preprocess(position, encoded):
    seed = tf.stack([tf.constant(0, tf.int64), position])
    image = image_ops.random_resized_crop_flip(encoded, seed, 224)
    if randaug is not None:
      image = randaug(image, tf.random.experimental.stateless_fold_in(seed, 1))
    return erase(image_ops.standardize(image), tf.random.experimental.stateless_fold_in(seed, 3))

  files = tf.data.Dataset.from_tensor_slices(_jpegs(64)).repeat()
  images = files.enumerate().map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  return images.batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pipeline", choices=("cifar", "imagenet"), default="cifar")
  parser.add_argument("--augment", action="store_true", help="imagenet: RandAugment + erasing")
  parser.add_argument("--aug_splits", type=int, default=1, help="cifar: views per image")
  parser.add_argument("--batch_size", type=int, default=64, help="images per batch")
  parser.add_argument("--batches", type=int, default=10, help="timed batches (after 2 warm-up)")
  args = parser.parse_args()
  views = args.aug_splits if args.pipeline == "cifar" else 1
  batches = (cifar_batches(args.batch_size, views) if args.pipeline == "cifar"
             else imagenet_batches(args.batch_size, args.augment))
  for _ in range(2):
    next(batches)
  start = time.perf_counter()
  for _ in range(args.batches):
    next(batches)
  rate = args.batches * args.batch_size / (time.perf_counter() - start)
  cores = len(os.sched_getaffinity(0))
  label = f"{args.pipeline}{' + augment' if args.augment else ''}"
  if views > 1:
    label += f", {views} views per image ({rate * views / cores:.0f} rows/s per core)"
  print(f"{label}: {rate:.0f} images/s on {cores} core(s), {rate / cores:.0f} per core")


if __name__ == "__main__":
  main()
