"""CIFAR-10 / CIFAR-100 from prepared TFDS data, held in host memory as uint8 numpy arrays.

Training sets (``train`` split, put in original order by the ``id`` feature ``'train_%05d'``):

* full: all 50,000 images;
* ``subset=NAME``: a 4,000-image subset of the paper, see :mod:`cfl_jax.data.cifar_subsets`;
* ``imbalance_ratio=RHO``: CIFAR-LT (LDAM protocol), the first ``n_c`` images of class ``c`` with
  ``n_c`` from :func:`~cfl_jax.data.long_tail.long_tail_counts` (head class 0, ``n_max`` = the
  largest class, 5,000 / 500).

The eval set is always the balanced ``test`` split. All images are standardised per channel with
the training-set statistics. At the native 32 px the arrays are served as they are and training
batches get random crop (pad 4) and horizontal flip. With ``image_size`` (e.g. 224, the paper's
TResNet-M recipe), ``rand_augment`` or ``random_erasing`` the images are resized and augmented
per batch in tf.data instead (:mod:`cfl_jax.data.array_stream`), optionally as ``aug_splits``
views of each image (a clean one and augmented ones sharing its crop, timm's ``--aug-splits``).

Examples::

  data = get_dataset({'name': 'cifar10', 'imbalance_ratio': 100, 'data_dir': '/data/tfds'})
  data.train_class_counts  # [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
"""

import functools

import numpy as np

from cfl_jax.data import augment as augment_lib
from cfl_jax.data import base
from cfl_jax.data import cifar_subsets
from cfl_jax.data import long_tail
from cfl_jax.data import tfds_io

_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
# Per-channel mean and standard deviation of the training images in [0, 1].
_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _standardize(images: np.ndarray, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> np.ndarray:
  return (images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(
      std, np.float32)


def _load_split(builder, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(indices [N], images uint8 [N, 32, 32, 3], labels [N]) sorted by the ``id`` feature."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  indices = np.array([int(example_id.rsplit(b"_", 1)[1]) for example_id in arrays["id"]])
  order = np.argsort(indices)
  return indices[order], arrays["image"][order], arrays["label"][order].astype(np.int64)


def _select_training(name: str, indices: np.ndarray, labels: np.ndarray, subset: str | None,
                     imbalance_ratio: float | None, long_tail_profile: str) -> np.ndarray:
  """Positions (into the id-sorted training arrays) of the training set asked for."""
  if subset is not None:
    wanted = cifar_subsets.subset_ids(subset)
    positions = np.minimum(np.searchsorted(indices, wanted), len(indices) - 1)
    missing = wanted[indices[positions] != wanted]
    if missing.size:
      raise ValueError(
          f"The {name} training split lacks {missing.size} ids of subset {subset!r} "
          f"(e.g. train_{missing[0]:05d}); is it the complete TFDS dataset?")
    return positions
  if imbalance_ratio is not None:
    num_classes = _NUM_CLASSES[name]
    max_count = int(np.bincount(labels, minlength=num_classes).max())
    counts = long_tail.long_tail_counts(num_classes, max_count, imbalance_ratio, long_tail_profile)
    return long_tail.first_per_class(labels, counts)
  return np.arange(len(indices))


def cifar(name: str, *, data_dir: str | None = None, subset: str | None = None,
          imbalance_ratio: float | None = None, long_tail_profile: str = "exponential",
          augment: bool = True, image_size: int = 32, rand_augment: int | None = None,
          random_erasing: float = 0.0, aug_splits: int = 1) -> base.ImageClassificationData:
  """CIFAR-10 or CIFAR-100 with one of the training sets of the module docstring.

  Args:
    name: ``'cifar10'`` or ``'cifar100'`` (the TFDS names).
    data_dir: TFDS data directory holding the prepared dataset; None for the TFDS default.
    subset: a name from ``cifar_subsets.SUBSET_NAMES`` for the 4,000-image subsets.
    imbalance_ratio: ``n_max / n_min`` for CIFAR-LT (10, 50 or 100 in the papers).
    long_tail_profile: ``'exponential'`` or ``'step'`` (CIFAR-LT only).
    augment: random crop (pad 4) and flip on training batches (32-px arrays only).
    image_size: side of the model inputs; other than 32, batches are streamed (see above).
    rand_augment: timm RandAugment magnitude (9 for ``rand-m9``); None: off.
    random_erasing: random erasing probability; 0: off.
    aug_splits: views of each training image (timm's ``--aug-splits``, with ``--resplit``): 1,
      one augmented view; ``n > 1``, a clean view (crop and flip) and ``n - 1`` augmented ones,
      all with one crop and flip, in rows ``[view 0 | view 1 | ...]`` (see
      :mod:`cfl_jax.data.array_stream`); needs ``rand_augment`` or ``random_erasing``.

  Returns:
    An :class:`~cfl_jax.data.base.ArrayDataset` with ``image_shape == (32, 32, 3)``, or, when
    resizing or augmenting beyond crop and flip, a
    :class:`~cfl_jax.data.array_stream.StreamedArrayDataset` of ``image_size`` px.

  Raises:
    FileNotFoundError: if the TFDS data is not in ``data_dir`` (nothing is downloaded).
    ValueError: for an unknown subset, a subset of the other dataset, both subset and
      imbalance_ratio, augment=False with streamed batches, or an ``aug_splits`` that is not an
      integer >= 1 or is > 1 without augmentation to tell the views apart.
  """
  if name not in _NUM_CLASSES:
    raise ValueError(f"Unknown CIFAR dataset {name!r}; known: {', '.join(_NUM_CLASSES)}.")
  # Check the arguments before the slow load.
  if subset is not None and imbalance_ratio is not None:
    raise ValueError("Give either subset (4K subsets) or imbalance_ratio (CIFAR-LT), not both.")
  if subset is not None:
    cifar_subsets.check_subset_dataset(subset, name)
  if imbalance_ratio is not None:
    long_tail.long_tail_counts(_NUM_CLASSES[name], 1, imbalance_ratio, long_tail_profile)
  elif long_tail_profile != "exponential":
    raise ValueError("long_tail_profile applies to CIFAR-LT only: set imbalance_ratio too.")
  augmented = rand_augment is not None or random_erasing > 0
  streamed = image_size != 32 or augmented
  if streamed and not augment:
    raise ValueError("augment=False applies to 32-px batches without rand_augment or "
                     "random_erasing; streamed batches are always cropped and flipped.")
  if base.check_aug_splits(aug_splits) > 1 and not augmented:
    raise ValueError(f"aug_splits={aug_splits} needs rand_augment or random_erasing: without "
                     "them every view would be the clean one.")
  builder = tfds_io.tfds_builder(name, data_dir)
  indices, images, labels = _load_split(builder, "train")
  keep = _select_training(name, indices, labels, subset, imbalance_ratio, long_tail_profile)
  _, test_images, test_labels = _load_split(builder, "test")
  mean, std = _MEAN_STD[name]
  if streamed:
    # Imported here: the 32-px path needs no TensorFlow beyond TFDS loading.
    from cfl_jax.data import array_stream  # pylint: disable=g-import-not-at-top

    return array_stream.StreamedArrayDataset(
        name=name, num_classes=_NUM_CLASSES[name], train_images=images[keep],
        train_labels=labels[keep], eval_images=test_images, eval_labels=test_labels,
        image_size=image_size, mean=mean, std=std, rand_augment=rand_augment,
        random_erasing=random_erasing, aug_splits=aug_splits)
  return base.ArrayDataset(
      name=name, num_classes=_NUM_CLASSES[name], train_images=images[keep],
      train_labels=labels[keep], eval_images=test_images, eval_labels=test_labels,
      normalize=functools.partial(_standardize, mean=mean, std=std),
      augment=augment_lib.RandomCropFlip(padding=4) if augment else None)


cifar10 = functools.partial(cifar, "cifar10")
cifar100 = functools.partial(cifar, "cifar100")
