"""Tests of the OLTR builders (ImageNet-LT, Places-LT) on a temporary folder of images and lists."""

import numpy as np
import pytest

from cfl_jax.data import get_dataset

PIL_Image = pytest.importorskip("PIL.Image")
oltr = pytest.importorskip("cfl_jax.data.oltr")  # Needs tensorflow_datasets.
import tfds_fakes  # pylint: disable=g-import-not-at-top,g-bad-import-order

# (relative path, image format, PIL mode, label): JPEG RGB / grey / CMYK and a PNG.
_TRAIN = [("train/n0/a.JPEG", "JPEG", "RGB", 0), ("train/n0/b.png", "PNG", "RGB", 0),
          ("train/n0/c.JPEG", "JPEG", "CMYK", 0), ("train/n1/d.JPEG", "JPEG", "L", 1),
          ("train/n1/e.JPEG", "JPEG", "RGB", 1), ("train/n2/f.JPEG", "JPEG", "RGB", 2)]
_VAL = [("train/n2/g.JPEG", "JPEG", "RGB", 2), ("train/n1/h.JPEG", "JPEG", "RGB", 1)]
_TEST = [("val/n0/i.JPEG", "JPEG", "RGB", 0), ("val/n1/j.png", "PNG", "RGB", 1),
         ("val/n2/k.JPEG", "JPEG", "RGB", 2)]


def _write_benchmark(root, prefix, splits=(("train", _TRAIN), ("val", _VAL), ("test", _TEST))):
  return tfds_fakes.write_oltr_benchmark(root, prefix, splits)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  oltr.tfds.disable_progress_bar()
  manual_dir = _write_benchmark(tmp_path_factory.mktemp("imagenet_lt"), "ImageNet_LT")
  root = str(tmp_path_factory.mktemp("tfds"))
  oltr.prepare("imagenet_lt", manual_dir=str(manual_dir), data_dir=root)
  return root


def test_counts_splits_and_batches(data_dir):
  data = get_dataset({"name": "imagenet_lt", "data_dir": data_dir, "image_size": 8})
  assert data.num_classes == 1000 and data.image_shape == (8, 8, 3)
  np.testing.assert_array_equal(data.train_class_counts[:4], [3, 2, 1, 0])
  assert data.train_class_counts.shape == (1000,) and data.num_eval_examples == 3
  # PNG and CMYK images were re-encoded, so every image decodes with the fused JPEG ops.
  train = [next(data.train_batches(global_batch_size=6, seed=0, start_step=step))
           for step in range(2)]
  assert sorted(train[0]["label"].tolist()) == [0, 0, 0, 1, 1, 2]
  assert all(np.isfinite(b["image"]).all() for b in train)
  evaluated = list(data.eval_batches(global_batch_size=2))
  labels = np.concatenate([b["label"][b["mask"]] for b in evaluated])
  assert sorted(labels.tolist()) == [0, 1, 2]
  validation = get_dataset({"name": "imagenet_lt", "data_dir": data_dir,
                            "eval_split": "validation"})
  assert validation.num_eval_examples == 2


def test_places_lt_builder(tmp_path):
  oltr.tfds.disable_progress_bar()
  manual_dir = _write_benchmark(tmp_path / "manual", "Places_LT", (
      ("train", _TRAIN[:2]), ("val", _VAL[:1]), ("test", _TEST[:1])))
  oltr.prepare("places_lt", manual_dir=str(manual_dir), data_dir=str(tmp_path / "tfds"))
  data = get_dataset({"name": "places_lt", "data_dir": str(tmp_path / "tfds")})
  assert data.num_classes == 365 and data.image_shape == (224, 224, 3)
  np.testing.assert_array_equal(data.train_class_counts[:2], [2, 0])


def test_missing_list_names_the_layout(tmp_path):
  manual_dir = _write_benchmark(tmp_path, "ImageNet_LT", (("train", _TRAIN[:1]),))
  with pytest.raises(FileNotFoundError, match="Missing list file .*ImageNet_LT_val.txt.*"
                     "ImageNet_LT_train.txt  ImageNet_LT_val.txt  ImageNet_LT_test.txt"):
    oltr.prepare("imagenet_lt", manual_dir=str(manual_dir), data_dir=str(tmp_path / "tfds"))


def test_missing_image_is_named(tmp_path):
  manual_dir = _write_benchmark(tmp_path, "ImageNet_LT")
  (manual_dir / "val/n1/j.png").unlink()
  with pytest.raises(FileNotFoundError, match=r"1 listed images are missing .*val/n1/j.png"):
    oltr.prepare("imagenet_lt", manual_dir=str(manual_dir), data_dir=str(tmp_path / "tfds"))


@pytest.mark.parametrize("line", ["train/a.JPEG", "train/a.JPEG 1000", "train/a.JPEG x"])
def test_malformed_list_line(tmp_path, line):
  (tmp_path / "list.txt").write_text(f"train/ok.JPEG 3\n{line}\n")
  with pytest.raises(ValueError, match=r"list.txt:2: expected 'relative/path label'"):
    oltr.read_list(str(tmp_path / "list.txt"), num_classes=1000)


def test_unprepared_benchmark_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"oltr.prepare\('places_lt'.*Places_LT_train.txt"):
    get_dataset({"name": "places_lt", "data_dir": str(tmp_path)})


def test_unknown_eval_split(data_dir):
  with pytest.raises(ValueError, match="no split 'val'; it has"):
    get_dataset({"name": "imagenet_lt", "data_dir": data_dir, "eval_split": "val"})


def test_validation_data_evaluates_the_validation_list(data_dir):
  """OLTR selects its epoch on the validation list: ``validation_data()`` evaluates it."""
  assert get_dataset({"name": "imagenet_lt", "data_dir": data_dir}).validation_data() is None
  data = get_dataset({"name": "imagenet_lt", "data_dir": data_dir, "image_size": 8,
                      "validation_split": "validation"})
  validation = data.validation_data()
  assert (data.num_eval_examples, validation.num_eval_examples) == (3, 2)
  assert validation.validation_data() is None
  np.testing.assert_array_equal(validation.train_class_counts, data.train_class_counts)
  labels = np.concatenate([b["label"][b["mask"]]
                           for b in validation.eval_batches(global_batch_size=2)])
  assert sorted(labels.tolist()) == [1, 2]  # _VAL's labels
  tested = np.concatenate([b["label"][b["mask"]] for b in data.eval_batches(global_batch_size=2)])
  assert sorted(tested.tolist()) == [0, 1, 2]  # the test list, unchanged


@pytest.mark.parametrize("split, message", [
    ("val", "no split 'val'; it has"),
    ("test", "validation_split='test' must differ from the train and eval splits")])
def test_bad_validation_split(data_dir, split, message):
  with pytest.raises(ValueError, match=message):
    get_dataset({"name": "imagenet_lt", "data_dir": data_dir, "validation_split": split})


def test_color_jitter_draws_torchvision_ranges():
  """ColorJitter(0.4, 0.4, 0.4, 0): brightness scales by U(0.6, 1.4) (alone on a grey image,
  where contrast and saturation change nothing); contrast and saturation move a colour image;
  the output stays in [0, 255] and is a function of the seed."""
  tf = pytest.importorskip("tensorflow")
  image_ops = pytest.importorskip("cfl_jax.data.image_ops")

  def jitter(image, count, strength=0.4):
    seeds = tf.stack([tf.range(count, dtype=tf.int64), tf.zeros(count, tf.int64)], axis=1)
    return np.stack([image_ops.color_jitter(tf.constant(image), seed, strength).numpy()
                     for seed in seeds])

  grey = np.full((4, 4, 3), 100.0, np.float32)
  ratios = jitter(grey, 64)[:, 0, 0, 0] / 100.0
  assert 0.6 <= ratios.min() < 0.7 and 1.3 < ratios.max() <= 1.4
  colour = np.random.default_rng(0).uniform(0, 255, (8, 8, 3)).astype(np.float32)
  jittered = jitter(colour, 16)
  assert jittered.min() >= 0 and jittered.max() <= 255
  np.testing.assert_array_equal(jittered, jitter(colour, 16))
  # Beyond brightness: the images are not scaled copies of the input.
  scale = (jittered * colour).sum(axis=(1, 2, 3)) / (colour * colour).sum()
  assert np.abs(jittered - scale[:, None, None, None] * colour).max() > 5
  np.testing.assert_array_equal(jitter(colour, 2, strength=0.0)[0], colour)
  with pytest.raises(ValueError, match=r"strength must be in \[0, 1\)"):
    image_ops.color_jitter(tf.constant(colour), tf.constant([0, 0], tf.int64), 1.0)


def test_color_jitter_changes_training_images_only(tmp_path):
  oltr.tfds.disable_progress_bar()
  manual_dir = _write_benchmark(tmp_path / "manual", "ImageNet_LT")
  rng = np.random.default_rng(0)
  for path, image_format, mode, _ in _TRAIN + _VAL + _TEST:  # noise, not the fakes' black
    width, height = PIL_Image.open(manual_dir / path).size
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    PIL_Image.fromarray(noise).convert(mode).save(manual_dir / path, format=image_format)
  data_dir = str(tmp_path / "tfds")
  oltr.prepare("imagenet_lt", manual_dir=str(manual_dir), data_dir=data_dir)
  plain, jittered = (get_dataset({"name": "imagenet_lt", "data_dir": data_dir, "image_size": 8,
                                  "color_jitter": strength}) for strength in (0.0, 0.4))
  batches = [next(data.train_batches(global_batch_size=6, seed=0)) for data in (plain, jittered)]
  np.testing.assert_array_equal(batches[0]["label"], batches[1]["label"])  # same order and crops
  changed = np.abs(batches[0]["image"] - batches[1]["image"]).max(axis=(1, 2, 3))
  assert (changed > 0.05).all()  # every image jittered (standardised units)
  for plain_batch, jittered_batch in zip(plain.eval_batches(global_batch_size=2),
                                         jittered.eval_batches(global_batch_size=2)):
    np.testing.assert_array_equal(plain_batch["image"], jittered_batch["image"])
  with pytest.raises(ValueError, match=r"color_jitter must be in \[0, 1\)"):
    get_dataset({"name": "imagenet_lt", "data_dir": data_dir, "color_jitter": 1.5})
