"""Opening prepared TFDS datasets without ever downloading.

TensorFlow Datasets is imported on first use, never when ``cfl_jax.data`` is imported.
"""

from typing import Any


def require_prepared(builder: Any, how_to_prepare: str) -> Any:
  """Returns ``builder`` if its data is on disk, else raises an error saying how to prepare it.

  Args:
    builder: a ``tfds.core.DatasetBuilder``.
    how_to_prepare: instructions appended to the error message.

  Raises:
    FileNotFoundError: naming the data_dir searched and the expected version folder.
  """
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"TFDS dataset {builder.name!r} (version {builder.version}) is not prepared under "
        f"data_dir={str(builder.data_dir_root)!r}: expected the folder {builder.data_path}. "
        f"Nothing is downloaded here. {how_to_prepare}")
  return builder


def tfds_builder(name: str, data_dir: str | None) -> Any:
  """The registered TFDS builder ``name`` over prepared data in ``data_dir`` (TFDS default if None).

  Raises:
    FileNotFoundError: if the data is not prepared, with the commands that prepare it.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(name, data_dir=data_dir)
  return require_prepared(builder, (
      f"Prepare it once where the data or internet is available: python -c \"import "
      f"tensorflow_datasets as tfds; tfds.builder('{name}', data_dir={data_dir!r})"
      f".download_and_prepare()\" (for manually downloaded archives pass download_config="
      f"tfds.download.DownloadConfig(manual_dir=DIR)), then copy {builder.data_path} here."))
