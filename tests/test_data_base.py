"""Tests of the shared index machinery, the in-memory dataset and the numpy augmentation."""

import numpy as np
import pytest

from cfl_jax.data import augment
from cfl_jax.data import base


def _tiny_dataset(num_train=23, num_eval=11, with_augment=True):
  rng = np.random.default_rng(0)
  return base.ArrayDataset(
      name="tiny", num_classes=3,
      train_images=rng.integers(0, 256, (num_train, 6, 6, 1), dtype=np.uint8),
      train_labels=np.arange(num_train) % 3,
      eval_images=rng.integers(0, 256, (num_eval, 6, 6, 1), dtype=np.uint8),
      eval_labels=np.arange(num_eval) % 3,
      normalize=lambda images: images.astype(np.float32) / 255.0,
      augment=augment.RandomCropFlip(padding=2) if with_augment else None)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_process_slice_splits_the_global_batch():
  slices = [base.process_slice(12, process_index=p, process_count=3) for p in range(3)]
  assert slices == [slice(0, 4), slice(4, 8), slice(8, 12)]


@pytest.mark.parametrize("kwargs, message", [
    ({"global_batch_size": 10, "process_index": 0, "process_count": 4}, "multiple"),
    ({"global_batch_size": 8, "process_index": 4, "process_count": 4}, "process_index"),
])
def test_process_slice_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    base.process_slice(**kwargs)


def test_train_index_batches_are_epoch_permutations_without_remainder():
  batches = _take(base.train_index_batches(10, 3, seed=1), 6)
  assert [step for step, _ in batches] == list(range(6))
  for epoch in range(2):
    seen = np.concatenate([indices for _, indices in batches[3 * epoch:3 * epoch + 3]])
    np.testing.assert_array_equal(seen, base.epoch_permutation(10, 1, epoch)[:9])
    assert len(set(seen.tolist())) == 9


def test_train_index_batches_resume_equals_continuation():
  continued = _take(base.train_index_batches(10, 3, seed=5), 8)[5:]
  resumed = _take(base.train_index_batches(10, 3, seed=5, start_step=5), 3)
  for (step_a, a), (step_b, b) in zip(continued, resumed):
    assert step_a == step_b
    np.testing.assert_array_equal(a, b)


def test_seeds_and_epochs_give_different_orders():
  orders = {tuple(base.epoch_permutation(50, seed, epoch)) for seed in (0, 1) for epoch in (0, 1)}
  assert len(orders) == 4


@pytest.mark.parametrize("seed", [-1, 1.5])
def test_bad_seed(seed):
  with pytest.raises(ValueError, match="seed"):
    base.epoch_permutation(5, seed, 0)


def test_eval_index_batches_cover_each_example_once():
  batches = list(base.eval_index_batches(10, 4))
  assert len(batches) == 3
  indices = np.concatenate([i[m] for i, m in batches])
  np.testing.assert_array_equal(indices, np.arange(10))
  assert all(len(i) == len(m) == 4 for i, m in batches)


def test_array_dataset_batches_have_the_contract_types():
  data = _tiny_dataset()
  batch = next(data.train_batches(global_batch_size=4, seed=0, process_index=0, process_count=2))
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (2, 6, 6, 1)
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (2,)
  eval_batch = next(data.eval_batches(global_batch_size=4, process_index=1, process_count=2))
  assert eval_batch["mask"].dtype == bool and eval_batch["image"].shape == (2, 6, 6, 1)
  assert data.num_train_examples == 23 and data.steps_per_epoch(4) == 5
  np.testing.assert_array_equal(data.train_class_counts, [8, 8, 7])


def test_process_union_equals_single_process_batch():
  data = _tiny_dataset()
  single = _take(data.train_batches(global_batch_size=8, seed=3, start_step=2, process_count=1,
                                    process_index=0), 4)
  shards = [_take(data.train_batches(global_batch_size=8, seed=3, start_step=2, process_count=4,
                                     process_index=p), 4) for p in range(4)]
  for step, whole in enumerate(single):
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([s[step][key] for s in shards]), whole[key])


def test_array_dataset_resume_and_determinism():
  data = _tiny_dataset()
  kwargs = dict(global_batch_size=4, process_index=0, process_count=1)
  continued = _take(data.train_batches(seed=7, **kwargs), 9)[6:]
  resumed = _take(data.train_batches(seed=7, start_step=6, **kwargs), 3)
  other_seed = next(data.train_batches(seed=8, start_step=6, **kwargs))
  for a, b in zip(continued, resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.array_equal(other_seed["image"], resumed[0]["image"])


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_batches_cover_every_example_once(process_count):
  data = _tiny_dataset()
  labels, images = [], []
  per_process = []
  for p in range(process_count):
    batches = list(data.eval_batches(global_batch_size=8, process_index=p,
                                     process_count=process_count))
    per_process.append(len(batches))
    labels += [b["label"][b["mask"]] for b in batches]
    images += [b["image"][b["mask"]] for b in batches]
  assert len(set(per_process)) == 1
  images = np.concatenate(images)
  order = np.lexsort(images.reshape(len(images), -1).T)
  expected = data.normalize(data.eval_images)
  np.testing.assert_array_equal(images[order],
                                expected[np.lexsort(expected.reshape(len(expected), -1).T)])
  assert len(np.concatenate(labels)) == data.num_eval_examples


def test_random_crop_flip_matches_pad_crop_flip():
  images = np.arange(2 * 5 * 5 * 1, dtype=np.uint8).reshape(2, 5, 5, 1)
  params = {"offset": np.array([[0, 4], [2, 1]]), "flip": np.array([False, True])}
  out = augment.RandomCropFlip(padding=2)(images, params)
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  np.testing.assert_array_equal(out[0], padded[0, 0:5, 4:9])
  np.testing.assert_array_equal(out[1], padded[1, 2:7, 1:6][:, ::-1])


def test_random_crop_flip_zero_offset_identity():
  images = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
  params = {"offset": np.full((3, 2), 2), "flip": np.zeros(3, bool)}
  np.testing.assert_array_equal(augment.RandomCropFlip(padding=2)(images, params), images)


@pytest.mark.parametrize("bad", [-1, 3])
def test_labels_outside_the_classes_are_refused_on_the_host(bad):
  labels = np.arange(11) % 3
  labels[7] = bad
  with pytest.raises(ValueError, match=rf"tiny eval label at index 7 is {bad}, outside \[0, 3\)"):
    base.ArrayDataset(
        name="tiny", num_classes=3, train_images=np.zeros((4, 2, 2, 1), np.uint8),
        train_labels=np.arange(4) % 3, eval_images=np.zeros((11, 2, 2, 1), np.uint8),
        eval_labels=labels, normalize=lambda images: images.astype(np.float32))
