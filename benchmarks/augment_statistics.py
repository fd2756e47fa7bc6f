"""Pixel statistics of one CIFAR training batch under the random-erasing fills and RandAugment
orders that docs/studies.md compares.

The batch is the 224-px CIFAR-10 recipe's (RandAugment m9, random-resized crop and flip,
standardisation with the CIFAR-10 statistics, random erasing 0.6; one view per image), made by
:class:`cfl_jax.data.array_stream.StreamedArrayDataset` from the textured 32-px images the tests'
fake CIFAR holds (``tests/tfds_fakes.py``: red and green ramps, a flat blue per image), or from
real CIFAR-10 with ``--data_dir``. Printed per variant, in standardised units, over the whole
batch and over the erased boxes alone: the mean, the standard deviation and the fraction of
"black" values (at or below the standardised value of pixel 0 of their channel):

* ``no erasing``: RandAugment, crop, flip, standardisation;
* ``erasing, N(0, 1) after standardising``: this port, as timm erases its normalised batch;
* ``erasing, clip(255 N(0, 1)) before standardising``: the port before (Keras's fill);
* ``erasing, N(0, 1) on [0, 1] inputs``: timm feeding TResNet (mean 0, std 1), the same noise
  read in this port's standardised units;
* ``RandAugment before / after the resize``: no erasing, the same draws of ops, magnitudes and
  crops applied at 32 px before the resize (this port) and at 224 px after it (timm's order).

    python benchmarks/augment_statistics.py [--data_dir /data/tfds] [--batch_size 64]
"""

import argparse

import numpy as np
import tensorflow as tf

from cfl_jax.data import image_ops
from cfl_jax.data import rand_augment
from cfl_jax.data.array_stream import StreamedArrayDataset

MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)  # CIFAR-10's, as cfl_jax.data.cifar
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


def textured_images(count: int) -> np.ndarray:
  """The tests' fake CIFAR images (``tfds_fakes.write_cifar_binary(textured=True)``)."""
  rows, cols = np.mgrid[0:32, 0:32]
  images = np.zeros((count, 32, 32, 3), np.uint8)
  images[..., 0], images[..., 1] = 8 * cols, 8 * rows
  images[..., 2] = (37 * np.arange(count) % 256)[:, None, None]
  return images


def cifar_images(data_dir: str, count: int) -> np.ndarray:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  train = tfds.load("cifar10", split=f"train[:{count}]", data_dir=data_dir, batch_size=-1)
  return tfds.as_numpy(train)["image"]


def first_batch(images: np.ndarray, random_erasing: float) -> np.ndarray:
  data = StreamedArrayDataset(
      name="cifar10", num_classes=10, train_images=images, train_labels=np.arange(len(images)) % 10,
      eval_images=images[:1], eval_labels=np.zeros(1, int), image_size=224, mean=MEAN, std=STD,
      rand_augment=9, random_erasing=random_erasing)
  return next(data.train_batches(global_batch_size=len(images), seed=0))["image"]


def rand_augment_batch(images: np.ndarray, after_resize: bool) -> np.ndarray:
  """RandAugment m9 before or after the crop and resize, with the same seeds either way."""
  augment = rand_augment.RandAugment(magnitude=9)
  out = []
  for index, image in enumerate(images):
    crop_seed, augment_seed = tf.constant([0, index], tf.int64), tf.constant([1, index], tf.int64)
    image = tf.cast(image, tf.float32)
    if after_resize:
      image = augment(image_ops.random_resized_crop_flip(image, crop_seed, 224), augment_seed)
    else:
      image = image_ops.random_resized_crop_flip(augment(image, augment_seed), crop_seed, 224)
    out.append(image_ops.standardize(image, MEAN, STD).numpy())
  return np.stack(out)


def _statistics(values: np.ndarray, black: np.ndarray) -> str:
  if not values.size:
    return f"{'-':>7s} {'-':>7s} {'-':>7s}"
  return f"{values.mean():7.3f} {values.std():7.3f} {(values <= black).mean():7.3f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", help="TFDS data directory holding cifar10 (else textured)")
  parser.add_argument("--batch_size", type=int, default=64)
  args = parser.parse_args()
  images = (cifar_images(args.data_dir, args.batch_size) if args.data_dir
            else textured_images(args.batch_size))
  clean, erased = first_batch(images, 0.0), first_batch(images, 0.6)
  box = erased != clean  # the same seeds draw the same crops; erasing changes only its boxes
  noise = erased  # N(0, 1) inside the boxes
  variants = (  # (name, batch, whether it was erased)
      ("no erasing", clean, False),
      ("erasing, N(0, 1) after standardising", erased, True),
      ("erasing, clip(255 N(0, 1)) before standardising",
       np.where(box, (np.clip(noise, 0, 1) - MEAN) / STD, clean), True),
      ("erasing, N(0, 1) on [0, 1] inputs", np.where(box, (noise - MEAN) / STD, clean), True),
      ("RandAugment before the resize (this port)", rand_augment_batch(images, False), False),
      ("RandAugment after the resize (timm)", rand_augment_batch(images, True), False),
  )
  black = np.broadcast_to(-MEAN / STD + 1e-4, clean.shape)
  print(f"{len(images)} images at 224 px ({'CIFAR-10' if args.data_dir else 'textured fake'}); "
        f"erased fraction {box.mean():.3f}")
  print(f"{'':48s} {'whole batch':>23s} {'erased boxes':>23s}")
  print(f"{'variant':48s}" + f" {'mean':>7s} {'sd':>7s} {'black':>7s}" * 2)
  for name, batch, was_erased in variants:
    inside = box if was_erased else np.zeros_like(box)
    print(f"{name:48s} {_statistics(batch, black)} {_statistics(batch[inside], black[inside])}")


if __name__ == "__main__":
  main()
