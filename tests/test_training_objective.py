"""Tests of cfl_jax.training.objective: losses by name and the run's xi schedule."""

import jax
import ml_collections
import numpy as np
import optax
import pytest

import cfl_jax
from cfl_jax.training import LOSS_NAMES, get_loss_fn, resolve_config
from cfl_jax.training import objective

_LOGITS = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32) * 3
_LABELS = np.array([0, 1, 2, 3, 1, 0])
_HYPER = {"gamma_hc": 3.0, "gamma_lc": 1.5, "gamma_neg": 4.0, "label_smoothing": 0.1}


def _loss(name, xi=0.3, **hyper):
  config = resolve_config({"loss": {"name": name, **_HYPER, **hyper}}).loss
  return jax.jit(get_loss_fn(config))(_LOGITS, _LABELS, xi)


@pytest.mark.parametrize("name, expected", [
    ("cross_entropy", lambda: optax.softmax_cross_entropy(
        _LOGITS, optax.smooth_labels(jax.nn.one_hot(_LABELS, 4), 0.1))),
    ("focal", lambda: cfl_jax.focal_loss_with_integer_labels(
        _LOGITS, _LABELS, gamma=1.5, label_smoothing=0.1)),
    ("high_confidence", lambda: cfl_jax.high_confidence_loss_with_integer_labels(
        _LOGITS, _LABELS, gamma=3.0, label_smoothing=0.1)),
    ("cyclical_focal", lambda: cfl_jax.cyclical_focal_loss_with_integer_labels(
        _LOGITS, _LABELS, 0.3, gamma_hc=3.0, gamma_lc=1.5, label_smoothing=0.1)),
    ("cyclical_focal_reference", lambda: cfl_jax.cyclical_focal_loss_with_integer_labels(
        _LOGITS, _LABELS, 0.3, gamma_hc=3.0, gamma_lc=1.5, gamma_neg=4.0, label_smoothing=0.1)),
])
def test_each_loss_by_name_binds_its_hyperparameters(name, expected):
  np.testing.assert_allclose(_loss(name), jax.jit(expected)(), rtol=1e-6)


def test_every_name_is_tested_and_unknown_names_fail():
  assert set(LOSS_NAMES) == {"cross_entropy", "focal", "high_confidence", "cyclical_focal",
                             "cyclical_focal_reference"}
  with pytest.raises(ValueError, match="Unknown loss 'x'"):
    get_loss_fn(ml_collections.ConfigDict({"name": "x"}))


def test_cross_entropy_without_smoothing_is_optax():
  np.testing.assert_allclose(
      _loss("cross_entropy", label_smoothing=0.0),
      optax.softmax_cross_entropy_with_integer_labels(_LOGITS, _LABELS), rtol=1e-6)


def test_only_the_cyclical_losses_read_xi():
  for name in LOSS_NAMES:
    changes = not np.allclose(_loss(name, xi=0.0), _loss(name, xi=1.0))
    assert changes == name.startswith("cyclical"), name


def test_cyclical_focal_limits_through_the_config():
  np.testing.assert_allclose(_loss("cyclical_focal", xi=0.0), _loss("focal"), rtol=1e-6)
  np.testing.assert_allclose(_loss("cyclical_focal", xi=1.0), _loss("high_confidence"), rtol=1e-6)


@pytest.mark.parametrize("loss, expected", [
    ({}, cfl_jax.xi_schedule(70, cyclical_factor=4.0)),
    ({"xi_granularity": "epoch", "cyclical_factor": 2.0},
     cfl_jax.xi_schedule(70, cyclical_factor=2.0, steps_per_epoch=7)),
    ({"xi_schedule": "reference", "cyclical_factor": 2.0, "xi_first_epoch": 1},
     cfl_jax.reference_xi_schedule(10, 7, cyclical_factor=2.0, first_epoch=1)),
])
def test_xi_schedule_from_the_config(loss, expected):
  schedule = objective.xi_schedule(resolve_config({"loss": loss}).loss, total_steps=70,
                                   steps_per_epoch=7)
  for step in range(0, 71, 3):
    assert float(schedule(step)) == pytest.approx(float(expected(step))), step


def test_reference_xi_needs_whole_epochs():
  loss = resolve_config({"loss": {"xi_schedule": "reference"}}).loss
  with pytest.raises(ValueError, match="whole epochs"):
    objective.xi_schedule(loss, total_steps=71, steps_per_epoch=7)
