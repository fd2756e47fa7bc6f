"""The dataset protocol and the index machinery every dataset shares.

A dataset hands the training loop *host-local* numpy batches. With ``P = jax.process_count()``
processes and a global batch of ``B`` examples, each process receives ``B // P`` of them: global
batch ``k`` is a pure function of ``(seed, k)`` and process ``p`` takes rows
``[p * B // P, (p + 1) * B // P)`` of it. Hence the union of the host-local batches does not depend
on ``P``, and resuming at ``start_step = k`` reproduces an uninterrupted run exactly.

Views: a dataset with ``aug_splits = n > 1`` serves ``n`` views of each training image (timm's
``--aug-splits n``): the host-local batch holds ``n * B // P`` rows ordered ``[view 0 | view 1 |
... | view n-1]``, each block the process's images in the same order, labels repeated. Steps,
epochs and ``global_batch_size`` count images, not rows.

Ordering: epoch ``e = k // steps_per_epoch`` visits the training set in the permutation drawn from
``(seed, e)``; the last ``num_train % B`` examples of each permutation are dropped. Evaluation
visits the eval set once in its stored order, padded with masked-out copies of example 0 up to a
whole number of global batches.
"""

import abc
from collections.abc import Callable, Iterator
import dataclasses
import numbers
from typing import Any, Protocol

import jax
import numpy as np

Batch = dict[str, np.ndarray]

# Independent random streams derived from one user seed.
_PERMUTATION_STREAM = 0
_AUGMENTATION_STREAM = 1
_TF_DATA_EPOCH_STREAM = 2
_TF_DATA_STEP_STREAM = 3


class ImageClassificationData(abc.ABC):
  """What the training loop needs from a dataset.

  Attributes:
    name: the registry name, e.g. ``'digits'``.
    num_classes: number of classes ``C``.
    image_shape: shape of one example in the batches: ``(H, W, C)`` for images, ``(length,
      channels)`` for 1-D signals such as MNIST-1D.
    train_class_counts: ``[C]`` int64, training examples per class (global, all processes).
    num_eval_examples: size of the eval set (before padding).
    aug_splits: views of each image in a training batch (see the module docstring); 1 for
      every dataset but those built with ``aug_splits``. Eval batches hold one view.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, ...]
  train_class_counts: np.ndarray
  num_eval_examples: int
  aug_splits: int = 1

  @property
  def num_train_examples(self) -> int:
    """Size of the (global) training set."""
    return int(self.train_class_counts.sum())

  def steps_per_epoch(self, global_batch_size: int) -> int:
    """Number of whole global batches in one epoch (the remainder is dropped)."""
    steps = self.num_train_examples // global_batch_size
    if steps < 1:
      raise ValueError(
          f"global_batch_size={global_batch_size} exceeds the {self.num_train_examples} training "
          f"examples of {self.name!r}.")
    return steps

  @abc.abstractmethod
  def train_batches(self, *, global_batch_size: int, seed: int, start_step: int = 0,
                    process_index: int | None = None,
                    process_count: int | None = None) -> Iterator[Batch]:
    """Infinite iterator of host-local training batches, starting at batch ``start_step``.

    Args:
      global_batch_size: examples per step over all processes; divisible by ``process_count``.
      seed: non-negative int fixing the epoch permutations and the augmentation; each example
        of a global batch gets its own augmentation draw, whichever process serves it.
      start_step: index of the first batch yielded; resuming there is cheap.
      process_index: this process, default ``jax.process_index()``.
      process_count: number of processes, default ``jax.process_count()``.

    Yields:
      ``{'image': float32 [aug_splits * B_local, *image_shape], 'label': int32
      [aug_splits * B_local]}`` with ``B_local = global_batch_size // process_count``, rows
      ordered ``[view 0 | view 1 | ...]`` of the same ``B_local`` images (module docstring).
    """

  @abc.abstractmethod
  def eval_batches(self, *, global_batch_size: int, process_index: int | None = None,
                   process_count: int | None = None) -> Iterator[Batch]:
    """One pass over the eval set in host-local batches padded to ``B_local`` rows.

    Yields:
      ``{'image': float32 [B_local, *image_shape], 'label': int32 [B_local],
      'mask': bool [B_local]}``;
      ``mask`` is False on padding rows. Every eval example has ``mask`` True exactly once over
      all batches of all processes, and every process yields the same number of batches.
    """

  def validation_data(self) -> "ImageClassificationData | None":
    """The same data evaluated on its validation split (its ``eval_batches`` visit that split),
    or None when there is none to evaluate: the trainer evaluates it beside the eval set to
    select an epoch, as OLTR does (``validation_split`` of ImageNet-LT and Places-LT)."""
    return None


def resolve_process(process_index: int | None = None,
                    process_count: int | None = None) -> tuple[int, int]:
  """``(process_index, process_count)``, each defaulting to jax's, validated."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f"process_index={index} is not in [0, process_count={count}).")
  return index, count


def process_slice(global_batch_size: int, process_index: int | None = None,
                  process_count: int | None = None) -> slice:
  """Rows of a global batch that belong to one process.

  Args:
    global_batch_size: rows in the global batch.
    process_index: default ``jax.process_index()``.
    process_count: default ``jax.process_count()``.

  Returns:
    ``slice(p * b, (p + 1) * b)`` with ``b = global_batch_size // process_count``.

  Raises:
    ValueError: if the batch does not split evenly or the index is out of range.

  Examples:
    >>> process_slice(8, process_index=1, process_count=4)
    slice(2, 4, None)
  """
  index, count = resolve_process(process_index, process_count)
  if global_batch_size < 1 or global_batch_size % count:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple of "
        f"process_count={count}.")
  local = global_batch_size // count
  return slice(index * local, (index + 1) * local)


def check_aug_splits(aug_splits: Any) -> int:
  """``aug_splits`` as an int, or a ValueError unless it is an integer >= 1.

  Examples:
    >>> check_aug_splits(3)
    3
    >>> check_aug_splits(1.5)
    Traceback (most recent call last):
    ...
    ValueError: aug_splits must be an integer >= 1 (views of each training image), got 1.5.
  """
  if isinstance(aug_splits, bool) or not isinstance(aug_splits, numbers.Integral) or (
      aug_splits < 1):
    raise ValueError("aug_splits must be an integer >= 1 (views of each training image), got "
                     f"{aug_splits!r}.")
  return int(aug_splits)


def _check_seed(seed: int) -> int:
  if int(seed) != seed or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
  return int(seed)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order in which epoch ``epoch`` visits the training set: ``[num_examples]`` int64."""
  rng = np.random.default_rng([_PERMUTATION_STREAM, _check_seed(seed), epoch])
  return rng.permutation(num_examples)


def epoch_seed(seed: int, epoch: int) -> int:
  """A 32-bit seed for the shuffling and augmentation of one epoch of a tf.data pipeline."""
  sequence = np.random.SeedSequence([_TF_DATA_EPOCH_STREAM, _check_seed(seed), epoch])
  return int(sequence.generate_state(1)[0])


def step_seed(seed: int, step: int) -> int:
  """A 32-bit seed for the augmentation of global batch ``step`` in a tf.data pipeline."""
  sequence = np.random.SeedSequence([_TF_DATA_STEP_STREAM, _check_seed(seed), step])
  return int(sequence.generate_state(1)[0])


def step_rng(seed: int, step: int) -> np.random.Generator:
  """The augmentation random generator of global batch ``step``."""
  return np.random.default_rng([_AUGMENTATION_STREAM, _check_seed(seed), step])


def train_index_batches(num_examples: int, global_batch_size: int, seed: int,
                        start_step: int = 0) -> Iterator[tuple[int, np.ndarray]]:
  """Yields ``(step, indices [global_batch_size])`` for ``step = start_step, start_step + 1, ...``.

  Each epoch is one permutation from :func:`epoch_permutation` cut into whole batches; starting
  mid-epoch costs one permutation, not a replay.

  Examples:
    >>> batches = train_index_batches(10, 4, seed=0, start_step=3)
    >>> step, indices = next(batches)   # step 3 = second batch of epoch 1
    >>> bool((indices == epoch_permutation(10, 0, 1)[4:8]).all())
    True
  """
  if start_step < 0:
    raise ValueError(f"start_step must be non-negative, got {start_step}.")
  steps_per_epoch = num_examples // global_batch_size
  if steps_per_epoch < 1:
    raise ValueError(
        f"global_batch_size={global_batch_size} exceeds the {num_examples} training examples.")
  step = start_step
  while True:
    epoch, first = divmod(step, steps_per_epoch)
    order = epoch_permutation(num_examples, seed, epoch)
    for position in range(first, steps_per_epoch):
      yield step, order[position * global_batch_size:(position + 1) * global_batch_size]
      step += 1


def eval_index_batches(num_examples: int,
                       global_batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields ``(indices, mask)``, both ``[global_batch_size]``, covering ``range(num_examples)``.

  The last batch is padded with index 0 and ``mask`` False.

  Examples:
    >>> [(i.tolist(), m.tolist()) for i, m in eval_index_batches(3, 2)]
    [([0, 1], [True, True]), ([2, 0], [True, False])]
  """
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size must be positive, got {global_batch_size}.")
  for start in range(0, num_examples, global_batch_size):
    indices = np.arange(start, start + global_batch_size)
    mask = indices < num_examples
    yield np.where(mask, indices, 0), mask


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  """Raises a ValueError naming the first label outside ``[0, num_classes)`` and its index.

  The losses turn such labels into NaN (never a silent number); this check names the bad
  example before training starts. TFDS ``ClassLabel`` features are range-checked by TFDS.
  """
  labels = np.asarray(labels)
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{where} labels must be integers, got dtype {labels.dtype}.")
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    raise ValueError(
        f"{where} label at index {bad[0]} is {labels[bad[0]]}, outside [0, {num_classes}) "
        f"({bad.size} such label(s)).")


class Augmentation(Protocol):
  """A random image transformation applied to host-local slices of a global batch.

  ``sample`` draws the parameters of a whole global batch (arrays with a leading batch axis) so
  that each process can slice its rows and the result does not depend on the process count.
  """

  def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    ...

  def __call__(self, images: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    ...


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset(ImageClassificationData):
  """A dataset held in host memory as numpy arrays (digits, CIFAR, MNIST-1D).

  Attributes:
    name: registry name.
    num_classes: number of classes.
    train_images: ``[N, *image_shape]`` training examples in stored form (e.g. uint8 images
      ``[N, H, W, C]``).
    train_labels: ``[N]`` integer labels.
    eval_images: ``[M, *image_shape]`` eval examples, same form.
    eval_labels: ``[M]`` integer labels.
    normalize: maps a stored image batch to float32 model inputs.
    augment: optional training augmentation, applied before ``normalize``.
  """

  name: str
  num_classes: int
  train_images: np.ndarray
  train_labels: np.ndarray
  eval_images: np.ndarray
  eval_labels: np.ndarray
  normalize: Callable[[np.ndarray], np.ndarray]
  augment: Augmentation | None = None

  def __post_init__(self):
    for split in ("train", "eval"):
      images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
      if images.ndim < 2 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{split} images must be [N, *image_shape] with labels [N], got {images.shape} and "
            f"{labels.shape}.")
      check_labels(labels, self.num_classes, f"{self.name} {split}")

  # Read-only views of the arrays, where the interface declares plain attributes.
  @property
  def image_shape(self) -> tuple[int, ...]:  # type: ignore[override]
    return tuple(self.train_images.shape[1:])

  @property
  def train_class_counts(self) -> np.ndarray:  # type: ignore[override]
    return np.bincount(self.train_labels, minlength=self.num_classes).astype(np.int64)

  @property
  def num_eval_examples(self) -> int:  # type: ignore[override]
    return len(self.eval_labels)

  def train_batches(self, *, global_batch_size, seed, start_step=0, process_index=None,
                    process_count=None):
    rows = process_slice(global_batch_size, process_index, process_count)
    for step, indices in train_index_batches(len(self.train_labels), global_batch_size, seed,
                                             start_step):
      local = indices[rows]
      images = self.train_images[local]
      if self.augment is not None:
        params = self.augment.sample(step_rng(seed, step), global_batch_size)
        images = self.augment(images, {key: value[rows] for key, value in params.items()})
      yield {"image": self.normalize(images), "label": self.train_labels[local].astype(np.int32)}

  def eval_batches(self, *, global_batch_size, process_index=None, process_count=None):
    rows = process_slice(global_batch_size, process_index, process_count)
    for indices, mask in eval_index_batches(self.num_eval_examples, global_batch_size):
      local = indices[rows]
      yield {"image": self.normalize(self.eval_images[local]),
             "label": self.eval_labels[local].astype(np.int32),
             "mask": mask[rows]}
