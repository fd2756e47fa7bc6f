"""Tests of the MNIST-1D dataset: the published split, the pool profiles and the batches."""

import random

import numpy as np
import pytest

from cfl_jax.data import get_dataset
from cfl_jax.data import mnist1d


@pytest.fixture
def package_standard_split():
  """The published split straight from the package (its defaults), global RNG states kept."""
  from mnist1d.data import get_dataset_args  # pylint: disable=g-import-not-at-top
  from mnist1d.data import make_dataset  # pylint: disable=g-import-not-at-top

  numpy_state, python_state = np.random.get_state(), random.getstate()
  generated = make_dataset(get_dataset_args())
  np.random.set_state(numpy_state)
  random.setstate(python_state)
  return generated


def _rows(signals):
  return {row.tobytes() for row in np.asarray(signals, np.float32).reshape(len(signals), -1)}


def test_standard_profile_is_the_packages_published_split(package_standard_split):
  data = get_dataset({"name": "mnist1d"})
  assert (data.name, data.num_classes, data.image_shape) == ("mnist1d", 10, (40, 1))
  assert data.num_train_examples == 4000 and data.num_eval_examples == 1000
  for ours, labels, theirs, their_labels in (
      (data.train_images, data.train_labels, package_standard_split["x"],
       package_standard_split["y"]),
      (data.eval_images, data.eval_labels, package_standard_split["x_test"],
       package_standard_split["y_test"])):
    np.testing.assert_array_equal(ours[..., 0], theirs.astype(np.float32))
    np.testing.assert_array_equal(labels, their_labels)
  np.testing.assert_array_equal(data.train_class_counts,
                                np.bincount(package_standard_split["y"], minlength=10))


def _long_tail(rho):  # docs/method.md §5, n_max = 400
  return [int(400 * (1 / rho)**(i / 9)) for i in range(10)]


@pytest.mark.parametrize("config, counts", [
    ({"profile": "balanced"}, [400] * 10),
    ({"profile": "balanced", "max_count": 600}, [600] * 10),
    ({"profile": "linear_580_220"}, list(range(580, 219, -40))),
    ({"profile": "linear_490_310"}, list(range(490, 309, -20))),
    ({"profile": "long_tail", "imbalance_ratio": 10}, _long_tail(10)),
    ({"profile": "long_tail", "imbalance_ratio": 50}, _long_tail(50)),
    ({"profile": "long_tail", "imbalance_ratio": 100.0}, _long_tail(100)),
    ({"profile": "long_tail", "imbalance_ratio": 10, "max_count": 200}, [200, 154, 119, 92, 71,
                                                                         55, 43, 33, 25, 20]),
])
def test_pool_profile_class_counts(config, counts):
  data = get_dataset({"name": "mnist1d", **config})
  np.testing.assert_array_equal(data.train_class_counts, counts)
  np.testing.assert_array_equal(np.bincount(data.train_labels, minlength=10), counts)


def test_pool_profiles_keep_the_first_pool_signals_and_the_standard_test_set():
  standard = mnist1d.mnist1d()
  pool = mnist1d.mnist1d(profile="balanced", max_count=mnist1d.POOL_PER_CLASS)
  long_tailed = mnist1d.mnist1d(profile="long_tail", imbalance_ratio=100)
  for data in (pool, long_tailed):
    np.testing.assert_array_equal(data.eval_images, standard.eval_images)
    np.testing.assert_array_equal(data.eval_labels, standard.eval_labels)
  for label, count in enumerate(long_tailed.train_class_counts):
    np.testing.assert_array_equal(long_tailed.train_images[long_tailed.train_labels == label],
                                  pool.train_images[pool.train_labels == label][:count])


def test_the_pool_is_disjoint_from_the_standard_split():
  standard = mnist1d.mnist1d()
  pool = mnist1d.mnist1d(profile="balanced", max_count=mnist1d.POOL_PER_CLASS)
  assert pool.num_train_examples == 6000 and len(_rows(pool.train_images)) == 6000
  assert _rows(pool.train_images).isdisjoint(_rows(standard.eval_images))
  assert _rows(pool.train_images).isdisjoint(_rows(standard.train_images))


def test_generation_is_deterministic_and_keeps_the_callers_random_state():
  np.random.seed(7)
  random.seed(7)
  expected = (np.random.rand(), random.random())
  np.random.seed(7)
  random.seed(7)
  first = mnist1d.generate.__wrapped__(3, 200)  # uncached: really generates
  assert (np.random.rand(), random.random()) == expected
  second = mnist1d.generate.__wrapped__(3, 200)
  other_seed = mnist1d.generate.__wrapped__(4, 200)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[0], other_seed[0])
  assert first[0].shape == (160, 40, 1) and first[0].dtype == np.float32
  np.testing.assert_array_equal(np.bincount(np.concatenate([first[1], first[3]])), [20] * 10)


def test_batches_have_the_protocol_shapes_and_are_deterministic():
  data = mnist1d.mnist1d(profile="linear_580_220")
  first = next(data.train_batches(global_batch_size=100, seed=1, start_step=45))
  again = next(data.train_batches(global_batch_size=100, seed=1, start_step=45))
  other = next(data.train_batches(global_batch_size=100, seed=2, start_step=45))
  np.testing.assert_array_equal(first["image"], again["image"])
  assert not np.array_equal(first["image"], other["image"])
  assert first["image"].shape == (100, 40, 1) and first["image"].dtype == np.float32
  assert first["label"].shape == (100,) and first["label"].dtype == np.int32
  local = next(data.train_batches(global_batch_size=100, seed=1, start_step=45, process_index=1,
                                  process_count=4))
  np.testing.assert_array_equal(local["image"], first["image"][25:50])

  batches = list(data.eval_batches(global_batch_size=384))
  assert len(batches) == 3 and all(b["image"].shape == (384, 40, 1) for b in batches)
  assert sum(int(b["mask"].sum()) for b in batches) == 1000
  np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in batches]),
                                data.eval_labels)


@pytest.mark.parametrize("config, message", [
    ({"profile": "lt100"}, "Unknown mnist1d profile 'lt100'; known: standard, balanced"),
    ({"profile": "long_tail"}, "needs imbalance_ratio"),
    ({"profile": "balanced", "imbalance_ratio": 10}, "'long_tail' mnist1d profile only"),
    ({"profile": "standard", "imbalance_ratio": 10}, "'long_tail' mnist1d profile only"),
    ({"profile": "linear_580_220", "max_count": 300}, "max_count applies to"),
    ({"profile": "standard", "max_count": 300}, "max_count applies to"),
    ({"profile": "balanced", "max_count": 601}, r"integer in \[1, 600\]"),
    ({"profile": "balanced", "max_count": 2.5}, r"integer in \[1, 600\]"),
    ({"profile": "long_tail", "imbalance_ratio": 0.5}, "must be >= 1"),
    ({"ratio": 10}, "Unknown keyword.*ratio.*for dataset 'mnist1d'"),
])
def test_bad_arguments(config, message):
  with pytest.raises(ValueError, match=message):
    get_dataset({"name": "mnist1d", **config})


def test_a_ratio_of_one_selects_a_profile_without_ratio():
  data = get_dataset({"name": "mnist1d", "profile": "balanced", "imbalance_ratio": 1.0})
  np.testing.assert_array_equal(data.train_class_counts, [400] * 10)


def test_generations_are_the_recorded_arrays():
  """Both generations the profiles use carry the sha256 recorded with the MNIST-1D study."""
  for (seed, num_samples), expected in mnist1d.FINGERPRINTS.items():
    assert mnist1d.fingerprint(mnist1d.generate(seed, num_samples)) == expected


def test_other_generated_signals_are_an_error_naming_the_cause(monkeypatch):
  """One signal one float32 ulp off (what another machine's arithmetic could do) stops the run."""
  from mnist1d import data  # pylint: disable=g-import-not-at-top
  make_dataset = data.make_dataset

  def nudged(args):
    generated = make_dataset(args)
    generated["x"][0, 0] = np.nextafter(np.float32(generated["x"][0, 0]), np.float32(np.inf))
    return generated

  monkeypatch.setattr(data, "make_dataset", nudged)
  with pytest.raises(RuntimeError, match=r"seed=42, num_samples=5000 has sha256 [0-9a-f]{64}, "
                                         r"not the recorded b09ad3e2.*\(mnist1d 0\.0\.2"):
    mnist1d.generate.__wrapped__(mnist1d.STANDARD_SEED, mnist1d.STANDARD_NUM_SAMPLES)
