"""Small in-memory images served large: crops resized per batch in tf.data, with augmentation.

CIFAR upsampled to 224 px (the paper's TResNet-M recipe) would take 50,000 x 224 x 224 x 3 floats
(30 GB) as an array, so :class:`StreamedArrayDataset` keeps the uint8 32-px arrays and makes each
batch on the fly: RandAugment at the stored size (49 times fewer pixels than at 224; timm applies
it after the resize), an Inception-style random-resized crop to ``image_size`` with a flip (timm's
training transform), per-channel standardisation, then random erasing of the standardised image
(timm's order). Evaluation takes the central 87.5 % and resizes it (timm's "resize to size /
0.875, centre crop").

Order and processes follow :mod:`cfl_jax.data.base` exactly as :class:`~cfl_jax.data.base.
ArrayDataset` does: global batch ``k`` holds the examples of ``train_index_batches`` and row ``r``
of it is augmented with the stateless seed ``(step_seed(seed, k), r)``, so a batch is a pure
function of ``(seed, k)`` and the union of the process-local batches does not depend on the
process count.

Views (``aug_splits = n > 1``, timm's ``--aug-splits n --resplit``): each image is served ``n``
times, all cut by the crop and flip of its seed. View 0 is the clean view (crop and flip only, no
RandAugment and no erasing); views ``1 ... n-1`` get RandAugment and erasing with their own
draws, view 1 the very draws that ``n = 1`` gives the image's single view. Rows are ordered
``[view 0 | view 1 | ...]`` as timm's collate orders them, labels repeated.
"""

import numpy as np
import tensorflow as tf

from cfl_jax.data import base
from cfl_jax.data import image_ops
from cfl_jax.data import rand_augment as rand_augment_lib


class StreamedArrayDataset(base.ImageClassificationData):
  """uint8 ``[N, h, w, 3]`` arrays served as float32 ``[B, size, size, 3]`` batches.

  Args:
    name: registry name.
    num_classes: number of classes.
    train_images, train_labels, eval_images, eval_labels: uint8 images and integer labels.
    image_size: side of the square model inputs.
    mean, std: per-channel statistics of the images in [0, 1].
    rand_augment: timm RandAugment magnitude (9 for ``rand-m9``); None: off.
    random_erasing: random erasing probability; 0: off.
    aug_splits: views of each training image (module docstring); 1: one augmented view.
  """

  def __init__(self, *, name: str, num_classes: int, train_images: np.ndarray,
               train_labels: np.ndarray, eval_images: np.ndarray, eval_labels: np.ndarray,
               image_size: int, mean, std, rand_augment: int | None = None,
               random_erasing: float = 0.0, aug_splits: int = 1):
    for split, labels in (("train", train_labels), ("eval", eval_labels)):
      base.check_labels(labels, num_classes, f"{name} {split}")
    self.name, self.num_classes = name, num_classes
    self.image_shape = (image_size, image_size, 3)
    self.train_class_counts = np.bincount(train_labels, minlength=num_classes).astype(np.int64)
    self.num_eval_examples = len(eval_labels)
    self.aug_splits = base.check_aug_splits(aug_splits)
    self._train = (train_images, np.asarray(train_labels, np.int32))
    self._eval = (eval_images, np.asarray(eval_labels, np.int32))
    self._stats = (mean, std)
    self._rand_augment = (rand_augment_lib.RandAugment(magnitude=rand_augment)
                          if rand_augment is not None else None)
    self._erase = image_ops.RandomErasing(random_erasing)
    self._eval_transform = tf.function(self._eval_images)

  def _train_view(self, image, seed, view):
    """View ``view`` of one training image with stateless ``seed``, standardised."""
    image = tf.cast(image, tf.float32)
    split = tf.random.experimental.stateless_split
    crop_seed = split(seed, 3)[1]  # one crop and flip for every view of the image

    def crop(source):
      cropped = image_ops.random_resized_crop_flip(source, crop_seed, self.image_shape[0])
      return image_ops.standardize(cropped, *self._stats)

    def augmented():
      # View 1 draws from the image's seed itself, as the single view of aug_splits = 1 does.
      view_seed = tf.where(view <= 1, seed, tf.random.experimental.stateless_fold_in(seed, view))
      ra_seed, _, erase_seed = tf.unstack(split(view_seed, 3))
      source = image if self._rand_augment is None else self._rand_augment(image, ra_seed)
      return self._erase(crop(source), erase_seed)

    if self.aug_splits == 1:
      return augmented()
    return tf.cond(view == 0, lambda: crop(image), augmented)

  def train_batches(self, *, global_batch_size, seed, start_step=0, process_index=None,
                    process_count=None):
    rows = base.process_slice(global_batch_size, process_index, process_count)
    local = rows.stop - rows.start
    images, labels = self._train
    splits = self.aug_splits
    views = np.repeat(np.arange(splits), local)  # rows [view 0 | view 1 | ...]

    def steps():
      for step, indices in base.train_index_batches(len(labels), global_batch_size, seed,
                                                    start_step):
        seeds = np.stack([np.full(local, base.step_seed(seed, step)),
                          np.arange(rows.start, rows.stop)], axis=1)
        chosen = np.tile(indices[rows], splits)
        yield images[chosen], labels[chosen], np.tile(seeds, (splits, 1)), views

    size = splits * local
    signature = (tf.TensorSpec((size, *images.shape[1:]), tf.uint8),
                 tf.TensorSpec((size,), tf.int32), tf.TensorSpec((size, 2), tf.int64),
                 tf.TensorSpec((size,), tf.int64))
    examples = tf.data.Dataset.from_generator(steps, output_signature=signature).unbatch()

    def example(image, label, image_seed, view):
      return {"image": self._train_view(image, image_seed, view), "label": label}

    batches = examples.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    yield from batches.batch(size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

  def _eval_images(self, images):
    resized = tf.map_fn(lambda image: image_ops.center_crop(image, self.image_shape[0]), images,
                        fn_output_signature=tf.float32)
    return image_ops.standardize(resized, *self._stats)

  def eval_batches(self, *, global_batch_size, process_index=None, process_count=None):
    rows = base.process_slice(global_batch_size, process_index, process_count)
    images, labels = self._eval
    for indices, mask in base.eval_index_batches(self.num_eval_examples, global_batch_size):
      local = indices[rows]
      yield {"image": self._eval_transform(images[local]).numpy(), "label": labels[local],
             "mask": mask[rows]}
