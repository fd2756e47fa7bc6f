"""Streaming a prepared TFDS image dataset (ImageNet scale) through tf.data.

The dataset needs JPEG-encoded ``'image'`` and a ``ClassLabel`` ``'label'`` (``imagenet2012`` and
the OLTR builders of :mod:`cfl_jax.data.oltr`). Images are never decoded in Python: each process
reads its own even share of the records (``tfds.even_splits``), decodes only the crop window in
parallel map calls and prefetches host-local numpy batches.

Order and resumption: process ``p`` of ``P`` owns the same ``n = N // P`` training records in
every epoch; epoch ``e`` reads them with file order and a shuffle buffer seeded from ``(seed, e)``,
and the ``i``-th example of that stream is augmented with the stateless seed
``(epoch_seed(seed, e), p * n + i)``, its position in the epoch's process streams laid end to end:
no two examples of an epoch share an augmentation draw, whichever process reads them. The
host-local batch ``k`` is therefore a pure function of ``(seed, k, p)`` for a given process count
(unlike the in-memory datasets, the global batch depends on ``P``). Starting at ``start_step``
reads and drops the skipped records of the current epoch before decoding: cheap next to training,
not free.
"""

import copy
import functools
import math
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cfl_jax.data import base
from cfl_jax.data import image_ops
from cfl_jax.data import rand_augment as rand_augment_lib


def _keep_tensorflow_off_accelerators() -> None:
  """tf.data only needs the CPU; a full TensorFlow would otherwise claim GPU memory."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow was initialised already; leave it as it is.
    pass


def _read(builder, split, **kwargs) -> tf.data.Dataset:
  """The split's records with the image left encoded."""
  return builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()},
                            **kwargs)


class TfdsImageData(base.ImageClassificationData):
  """An :class:`~cfl_jax.data.base.ImageClassificationData` over a prepared TFDS builder.

  Training: random-resized crop and flip, then optionally colour jitter (OLTR's) and RandAugment
  (:mod:`~cfl_jax.data.rand_augment`), standardisation, then optionally random erasing (timm's
  order); evaluation: centre crop; see :mod:`~cfl_jax.data.image_ops`.

  Args:
    builder: a prepared ``tfds.core.DatasetBuilder``.
    name: registry name reported as ``self.name``.
    image_size: side of the square model inputs.
    train_split, eval_split: TFDS split names.
    validation_split: a TFDS split other than ``eval_split`` for :meth:`validation_data`, or
      None (or ``''``) for none.
    train_class_counts: ``[C]`` counts if known; else counted from the training labels on first
      access (a full pass over the records without image decoding).
    shuffle_buffer: examples in each process's shuffle buffer.
    rand_augment: timm RandAugment magnitude (9 for ``rand-m9``); None: off.
    random_erasing: random erasing probability; 0: off.
    color_jitter: brightness, contrast and saturation jitter (:func:`image_ops.color_jitter`,
      0.4 for OLTR's training transform); 0: off.
  """

  def __init__(self, builder: Any, *, name: str, image_size: int, train_split: str = "train",
               eval_split: str = "validation", train_class_counts: np.ndarray | None = None,
               shuffle_buffer: int = 16_384, rand_augment: int | None = None,
               random_erasing: float = 0.0, validation_split: str | None = None,
               color_jitter: float = 0.0):
    _keep_tensorflow_off_accelerators()
    splits = builder.info.splits
    validation_split = validation_split or None
    for split in (train_split, eval_split, validation_split):
      if split is not None and split not in splits:
        raise ValueError(f"{builder.name!r} has no split {split!r}; it has {', '.join(splits)}.")
    if validation_split in (train_split, eval_split):
      raise ValueError(f"validation_split={validation_split!r} must differ from the train and "
                       f"eval splits ({train_split!r}, {eval_split!r}).")
    self.name = name
    self.num_classes = builder.info.features["label"].num_classes
    self.image_shape = (image_size, image_size, 3)
    self.num_eval_examples = splits[eval_split].num_examples
    self._num_train_examples = splits[train_split].num_examples
    self._builder = builder
    self._train_split = train_split
    self._eval_split = eval_split
    self._validation_split = validation_split
    self._shuffle_buffer = shuffle_buffer
    self._rand_augment = (rand_augment_lib.RandAugment(magnitude=rand_augment)
                          if rand_augment is not None else None)
    self._erase = image_ops.RandomErasing(random_erasing)
    if not 0 <= color_jitter < 1:
      raise ValueError(f"color_jitter must be in [0, 1), got {color_jitter}.")
    self._color_jitter = color_jitter
    if train_class_counts is not None:
      self.train_class_counts = np.asarray(train_class_counts, dtype=np.int64)

  @property
  def num_train_examples(self) -> int:
    return self._num_train_examples

  @functools.cached_property
  def train_class_counts(self) -> np.ndarray:  # type: ignore[override]
    labels = self._builder.as_dataset(split=self._train_split,
                                      decoders=tfds.decode.PartialDecoding({"label": True}))
    counts = np.zeros(self.num_classes, dtype=np.int64)
    for batch in labels.map(lambda example: example["label"]).batch(65_536).as_numpy_iterator():
      counts += np.bincount(batch, minlength=self.num_classes)
    return counts

  def validation_data(self) -> "TfdsImageData | None":
    if self._validation_split is None:
      return None
    validation = copy.copy(self)  # shares the builder (and the counted train_class_counts)
    validation._eval_split, validation._validation_split = self._validation_split, None
    validation.num_eval_examples = self._builder.info.splits[self._validation_split].num_examples
    return validation

  def _train_epoch(self, epoch: int, seed: int, first_step: int, local_batch: int,
                   process_index: int, process_count: int) -> tf.data.Dataset:
    epoch_seed = base.epoch_seed(seed, epoch)
    options = tf.data.Options()
    options.deterministic = True
    split = tfds.even_splits(self._train_split, n=process_count, drop_remainder=True)
    records = _read(self._builder, split[process_index], shuffle_files=True,
                    read_config=tfds.ReadConfig(shuffle_seed=epoch_seed, options=options))
    skipped = first_step * local_batch
    records = records.shuffle(self._shuffle_buffer, seed=epoch_seed).skip(skipped)
    first_position = process_index * (self.num_train_examples // process_count) + skipped

    def preprocess(position, example):
      seed_pair = tf.stack([tf.constant(epoch_seed, tf.int64), position])
      image = image_ops.random_resized_crop_flip(example["image"], seed_pair, self.image_shape[0])
      if self._color_jitter:
        jitter_seed = tf.random.experimental.stateless_fold_in(seed_pair, 2)
        image = image_ops.color_jitter(image, jitter_seed, self._color_jitter)
      if self._rand_augment is not None:
        image = self._rand_augment(image, tf.random.experimental.stateless_fold_in(seed_pair, 1))
      erase_seed = tf.random.experimental.stateless_fold_in(seed_pair, 3)
      return {"image": self._erase(image_ops.standardize(image), erase_seed),
              "label": tf.cast(example["label"], tf.int32)}

    examples = records.enumerate(start=first_position).map(
        preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return examples.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

  def train_batches(self, *, global_batch_size, seed, start_step=0, process_index=None,
                    process_count=None):
    process_index, process_count = base.resolve_process(process_index, process_count)
    rows = base.process_slice(global_batch_size, process_index, process_count)
    if start_step < 0:
      raise ValueError(f"start_step must be non-negative, got {start_step}.")
    steps_per_epoch = self.steps_per_epoch(global_batch_size)
    epoch, first_step = divmod(start_step, steps_per_epoch)
    while True:
      epoch_batches = self._train_epoch(epoch, seed, first_step, rows.stop - rows.start,
                                        process_index, process_count)
      yield from epoch_batches.take(steps_per_epoch - first_step).as_numpy_iterator()
      epoch, first_step = epoch + 1, 0

  def eval_batches(self, *, global_batch_size, process_index=None, process_count=None):
    process_index, process_count = base.resolve_process(process_index, process_count)
    rows = base.process_slice(global_batch_size, process_index, process_count)
    local_batch = rows.stop - rows.start
    # Every process yields as many batches as the largest share needs.
    num_batches = math.ceil(math.ceil(self.num_eval_examples / process_count) / local_batch)
    split = tfds.even_splits(self._eval_split, n=process_count)[process_index]
    size = self.image_shape[0]
    examples = _read(self._builder, split, shuffle_files=False).map(
        lambda example: {"image": image_ops.standardize(image_ops.center_crop(example["image"],
                                                                               size)),
                         "label": tf.cast(example["label"], tf.int32),
                         "mask": tf.constant(True)},
        num_parallel_calls=tf.data.AUTOTUNE)
    padding = tf.data.Dataset.from_tensors({"image": tf.zeros(self.image_shape),
                                            "label": tf.constant(0, tf.int32),
                                            "mask": tf.constant(False)}).repeat()
    batches = examples.concatenate(padding).take(num_batches * local_batch).batch(local_batch)
    yield from batches.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
