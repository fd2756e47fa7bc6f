"""Tiny datasets written in the real on-disk formats, for tests (never downloads anything).

* CIFAR-10 / CIFAR-100: CIFAR binary files prepared by the real TFDS builders' own example
  generator and features, so ``tfds.builder('cifar10', data_dir=...)`` reads them as it reads the
  real data. Image ``i`` stores its original training index in pixel (0, 0) (channel 0: i % 256,
  channel 1: i // 256) and its label is ``i % num_classes``; the other pixels are black, or with
  ``textured=True`` gradients across (red) and down (green) over a colour of the image's own
  (blue), so that crops and flips show.
* ImageNet-2012: the two archives the real ``imagenet2012`` builder reads from its manual_dir (a
  train tar of per-synset tars, a val tar) of small uniform-colour JPEGs, prepared by that builder.
* ImageNet-LT / Places-LT: OLTR list files over a folder of images, for ``cfl_jax.data.oltr``.
"""

import io
import os
import tarfile

import numpy as np


def _download_config(tfds, **kwargs):
  return tfds.download.DownloadConfig(
      try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP, **kwargs)


def write_cifar_binary(path, indices, num_label_bytes, num_classes, textured=False):
  """CIFAR binary format: per image, label byte(s) then 3 x 32 x 32 uint8 (CHW)."""
  images = np.zeros((len(indices), 3, 32, 32), np.uint8)
  if textured:
    rows, cols = np.mgrid[0:32, 0:32]
    images[:, 0], images[:, 1] = 8 * cols, 8 * rows
    images[:, 2] = (37 * indices % 256)[:, None, None]
  images[:, 0, 0, 0] = indices % 256
  images[:, 1, 0, 0] = indices // 256
  labels = [indices % 20] * (num_label_bytes - 1) + [indices % num_classes]  # (coarse,) fine
  records = np.concatenate([np.stack(labels, 1).astype(np.uint8), images.reshape(len(indices), -1)],
                           axis=1)
  records.tofile(path)


def offline_cifar_builder(real_builder, tfds_name, files):
  """The real builder class reading local CIFAR binary files ``{split: path}``, not the URL."""

  class OfflineCifar(real_builder, skip_registration=True):
    name = tfds_name

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(f"{split}_", [path]) for split, path in files.items()}

  return OfflineCifar


def prepare_cifar(data_dir, name, *, train_size, test_size, textured=False):
  """Prepares a CIFAR of ``train_size`` / ``test_size`` images as TFDS ``name`` in ``data_dir``
  (``textured``: see the module docstring)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()
  real_builder = {"cifar10": tfds.image_classification.Cifar10,
                  "cifar100": tfds.image_classification.Cifar100}[name]
  files = {}
  for split, size in (("train", train_size), ("test", test_size)):
    files[split] = os.path.join(data_dir, f"{name}_{split}.bin")
    write_cifar_binary(files[split], np.arange(size), 1 if name == "cifar10" else 2,
                       int(name[5:]), textured)
  offline_cifar_builder(real_builder, name, files)(data_dir=str(data_dir)).download_and_prepare(
      download_config=_download_config(tfds))


def jpeg(red, width, height):
  """A uniform (red, 100, 200) JPEG."""
  import PIL.Image  # pylint: disable=g-import-not-at-top

  output = io.BytesIO()
  PIL.Image.new("RGB", (width, height), (red, 100, 200)).save(output, format="JPEG", quality=95)
  return output.getvalue()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def prepare_imagenet2012(data_dir, manual_dir, *, synsets, per_class, num_val):
  """Writes ILSVRC-2012 archives in ``manual_dir`` and prepares them with the real builder.

  Training image ``k`` of class ``label`` (the synset's position) has red value
  ``40 * label + 10 * k``; validation image ``k`` has ``20 * k``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as train:
    for label, synset in enumerate(synsets):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as images:
        for k in range(per_class):
          _add(images, f"{synset}_{k}.JPEG", jpeg(40 * label + 10 * k, 30 + 5 * k, 24))
      _add(train, f"{synset}.tar", inner.getvalue())
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as val:
    for k in range(num_val):
      _add(val, f"ILSVRC2012_val_{k + 1:08d}.JPEG", jpeg(20 * k, 28, 36))
  tfds.builder("imagenet2012", data_dir=str(data_dir)).download_and_prepare(
      download_config=_download_config(tfds, manual_dir=str(manual_dir)))


def write_oltr_benchmark(root, prefix, splits):
  """OLTR list files ``<prefix>_<suffix>.txt`` and their images under the pathlib folder ``root``.

  Args:
    root: the manual_dir (a ``pathlib.Path``).
    prefix: ``'ImageNet_LT'`` or ``'Places_LT'``.
    splits: ``[(suffix, [(relative path, image format, PIL mode, label), ...]), ...]``.

  Returns:
    ``root``.
  """
  import PIL.Image  # pylint: disable=g-import-not-at-top

  for suffix, entries in splits:
    lines = []
    for path, image_format, mode, label in entries:
      (root / path).parent.mkdir(parents=True, exist_ok=True)
      PIL.Image.new(mode, (20 + label, 16)).save(root / path, format=image_format)
      lines.append(f"{path} {label}\n")
    (root / f"{prefix}_{suffix}.txt").write_text("".join(lines))
  return root
