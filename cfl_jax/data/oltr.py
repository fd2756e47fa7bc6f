"""TFDS builders of the OLTR long-tailed benchmarks ImageNet-LT and Places-LT.

Each benchmark is three list files, one ``relative/path label`` line per image, over the images of
ImageNet-2012 or Places365. Prepare once, then stream with ``get_dataset``::

  manual_dir/
    ImageNet_LT_train.txt  ImageNet_LT_val.txt  ImageNet_LT_test.txt   (or Places_LT_*.txt)
    train/n01440764/n01440764_10026.JPEG ...   <- every path of the lists, relative to manual_dir
    val/n01440764/ILSVRC2012_val_00000293.JPEG ...

  python -c "from cfl_jax.data import oltr; oltr.prepare('imagenet_lt', manual_dir=M, data_dir=D)"

The splits are ``train``, ``validation`` (the ``_val`` list) and ``test``. Images that are not RGB
or grey JPEGs (PNG, CMYK) are re-encoded as JPEG, so the streaming pipeline can decode and crop
in one op. The training class counts are stored in the dataset's metadata.

References:
  Liu et al., Large-Scale Long-Tailed Recognition in an Open World, CVPR 2019
  (https://arxiv.org/abs/1904.05160), https://github.com/zhmiao/OpenLongTailRecognition-OLTR.
"""

import io

from etils import epath
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from cfl_jax import store

_SPLIT_LISTS = {"train": "train", "validation": "val", "test": "test"}


def _jpeg_bytes(path: str) -> bytes:
  """The file's bytes if it is an RGB or grey JPEG, else the image re-encoded as an RGB JPEG."""
  data = epath.Path(path).read_bytes()
  with PIL.Image.open(io.BytesIO(data)) as image:
    if image.format == "JPEG" and image.mode in ("RGB", "L"):
      return data
    output = io.BytesIO()
    image.convert("RGB").save(output, format="JPEG", quality=95)
    return output.getvalue()


def read_list(path: str, num_classes: int) -> list[tuple[str, int]]:
  """``[(relative_path, label)]`` from an OLTR list file (a local path or ``gs://...``).

  Raises:
    ValueError: for a malformed line or a label outside ``[0, num_classes)``.
  """
  entries = []
  for number, line in enumerate(epath.Path(path).read_text().splitlines(), start=1):
    if not line.strip():
      continue
    parts = line.rsplit(maxsplit=1)
    if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= num_classes:
      raise ValueError(f"{path}:{number}: expected 'relative/path label' with a label in "
                       f"[0, {num_classes}), got {line.strip()!r}.")
    entries.append((parts[0].lstrip("/"), int(parts[1])))
  return entries


class _OltrBuilder(tfds.core.GeneratorBasedBuilder,  # type: ignore[call-arg]
                   skip_registration=True):
  """Shared builder; subclasses set ``LIST_PREFIX`` and ``NUM_CLASSES``."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  LIST_PREFIX: str
  NUM_CLASSES: int

  @classmethod
  def layout(cls) -> str:
    lists = "  ".join(f"{cls.LIST_PREFIX}_{suffix}.txt" for suffix in _SPLIT_LISTS.values())
    return (f"manual_dir must hold the OLTR lists {lists} and every image path they name, "
            "relative to manual_dir (e.g. manual_dir/train/n01440764/n01440764_10026.JPEG).")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.LIST_PREFIX} from the OLTR list files.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zhmiao/OpenLongTailRecognition-OLTR",
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    root = epath.Path(dl_manager.manual_dir)
    splits = {}
    for split, suffix in _SPLIT_LISTS.items():
      list_path = root / f"{self.LIST_PREFIX}_{suffix}.txt"
      if not list_path.is_file():
        raise FileNotFoundError(f"Missing list file {list_path}. {self.layout()}")
      splits[split] = read_list(list_path, self.NUM_CLASSES)
    present = store.relative_files(root)
    missing = [path for entries in splits.values() for path, _ in entries if path not in present]
    if missing:
      raise FileNotFoundError(
          f"{len(missing)} listed images are missing under {root}, e.g. {missing[:3]}. "
          f"{self.layout()}")
    counts = np.bincount([label for _, label in splits["train"]], minlength=self.NUM_CLASSES)
    self.info.metadata["train_class_counts"] = counts.tolist()
    return {split: self._generate_examples(root, entries) for split, entries in splits.items()}

  def _generate_examples(self, root, entries):
    for path, label in entries:
      yield path, {"image": _jpeg_bytes(root / path), "label": label,
                   "file_name": path}


class ImagenetLtOltr(_OltrBuilder):
  """ImageNet-LT: 115,846 training images of 1,000 classes (1,280 to 5), 50,000 test images."""

  LIST_PREFIX = "ImageNet_LT"
  NUM_CLASSES = 1000
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Extract ImageNet-2012 train/ and val/ (val sorted into class folders, as OLTR expects) "
      "next to the ImageNet_LT_*.txt lists of the OLTR repository.")


class PlacesLtOltr(_OltrBuilder):
  """Places-LT: 62,500 training images of 365 classes (4,980 to 5), 36,500 test images."""

  LIST_PREFIX = "Places_LT"
  NUM_CLASSES = 365
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place the Places365-Standard images next to the Places_LT_*.txt lists of the OLTR "
      "repository, so that the listed relative paths resolve.")


BUILDERS = {"imagenet_lt": ImagenetLtOltr, "places_lt": PlacesLtOltr}


def prepare(name: str, *, manual_dir: str, data_dir: str | None = None) -> None:
  """Writes the TFDS dataset of benchmark ``name`` (``'imagenet_lt'`` or ``'places_lt'``).

  Args:
    name: key of ``BUILDERS``.
    manual_dir: folder with the list files and the images (see the module docstring).
    data_dir: TFDS data directory to write to; None for the TFDS default.

  Raises:
    FileNotFoundError: naming the expected layout when lists or images are missing.
  """
  if name not in BUILDERS:
    raise ValueError(f"Unknown OLTR benchmark {name!r}; known: {', '.join(BUILDERS)}.")
  BUILDERS[name](data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir,
                                                   try_download_gcs=False))
