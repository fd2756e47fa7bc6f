"""ImageNet-2012, ImageNet-LT and Places-LT as streamed TFDS datasets.

* ``imagenet2012``: the TFDS ``imagenet2012`` dataset, prepared by the user from the ILSVRC-2012
  archives (``tfds build imagenet2012 --manual_dir=DIR``); evaluated on ``validation``.
* ``imagenet_lt`` / ``places_lt``: this package's OLTR builders (:mod:`cfl_jax.data.oltr`);
  evaluated on ``test`` by default (the published numbers), or ``validation``; with
  ``validation_split='validation'`` the validation split is evaluated too, to select an epoch.

Examples::

  data = get_dataset({'name': 'imagenet_lt', 'data_dir': '/data/tfds'})
  batch = next(data.train_batches(global_batch_size=128, seed=0))   # image [128, 224, 224, 3]
"""

import functools

from cfl_jax.data import oltr
from cfl_jax.data import tfds_io
from cfl_jax.data import tfds_stream


def imagenet2012(*, data_dir: str | None = None, image_size: int = 224,
                 shuffle_buffer: int = 16_384, rand_augment: int | None = None,
                 random_erasing: float = 0.0) -> tfds_stream.TfdsImageData:
  """ImageNet-2012 (1,000 classes), random-resized crop at train, centre crop at eval.

  Args:
    data_dir: TFDS data directory holding the prepared ``imagenet2012``; None for the default.
    image_size: side of the square model inputs.
    shuffle_buffer: examples in each process's shuffle buffer.
    rand_augment: timm RandAugment magnitude (9 for ``rand-m9``); None: off.
    random_erasing: random erasing probability; 0: off.

  Returns:
    A :class:`~cfl_jax.data.tfds_stream.TfdsImageData`. Its ``train_class_counts`` are counted
    from the labels on first access (a pass over the records without image decoding).

  Raises:
    FileNotFoundError: if the data is not prepared in ``data_dir`` (nothing is downloaded).
  """
  builder = tfds_io.tfds_builder("imagenet2012", data_dir)
  return tfds_stream.TfdsImageData(builder, name="imagenet2012", image_size=image_size,
                                   eval_split="validation", shuffle_buffer=shuffle_buffer,
                                   rand_augment=rand_augment, random_erasing=random_erasing)


def oltr_benchmark(name: str, *, data_dir: str | None = None, image_size: int = 224,
                   eval_split: str = "test", validation_split: str | None = None,
                   shuffle_buffer: int = 16_384,
                   color_jitter: float = 0.0) -> tfds_stream.TfdsImageData:
  """ImageNet-LT (``'imagenet_lt'``) or Places-LT (``'places_lt'``) from its prepared OLTR builder.

  Args:
    name: ``'imagenet_lt'`` or ``'places_lt'``.
    data_dir: TFDS data directory holding the prepared dataset; None for the default.
    image_size: side of the square model inputs.
    eval_split: ``'test'`` or ``'validation'``.
    validation_split: ``'validation'`` to evaluate that split too at every evaluation, so that
      the trainer reports the test metrics of the epoch with the best validation accuracy
      (OLTR's model selection); None or ``''``: no validation split.
    shuffle_buffer: examples in each process's shuffle buffer.
    color_jitter: brightness, contrast and saturation jitter of the training images (OLTR's
      transform: 0.4); 0: off.

  Returns:
    A :class:`~cfl_jax.data.tfds_stream.TfdsImageData` whose ``train_class_counts`` come from the
    training list.

  Raises:
    FileNotFoundError: if the data is not prepared, with the command that prepares it.
    ValueError: for an unknown ``eval_split`` or ``validation_split``, or the two equal.
  """
  builder_class = oltr.BUILDERS[name]
  builder = tfds_io.require_prepared(builder_class(data_dir=data_dir), (
      f"Prepare it from the OLTR lists and the images: python -c \"from cfl_jax.data import oltr; "
      f"oltr.prepare('{name}', manual_dir=DIR, data_dir={data_dir!r})\". {builder_class.layout()}"))
  return tfds_stream.TfdsImageData(
      builder, name=name, image_size=image_size, eval_split=eval_split,
      validation_split=validation_split,
      train_class_counts=builder.info.metadata["train_class_counts"],
      shuffle_buffer=shuffle_buffer, color_jitter=color_jitter)


imagenet_lt = functools.partial(oltr_benchmark, "imagenet_lt")
places_lt = functools.partial(oltr_benchmark, "places_lt")
