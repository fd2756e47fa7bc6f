"""Tests of the training config: defaults, overrides, and every refusal before any compute."""

import os

import ml_collections
import pytest

from cfl_jax.training import ConfigError, default_config, resolve_config, train_and_evaluate
from experiments.configs import digits


def test_the_defaults_are_the_embedded_digits_experiment():
  assert resolve_config({}).to_dict() == default_config().to_dict()
  # The runner's default pins the initialisation its recorded study was made with.
  assert resolve_config(digits.get_config()).to_dict() == {**default_config().to_dict(),
                                                           "init_key": "rbg_v0"}
  assert default_config().loss.name == "cyclical_focal"
  assert default_config().dataset.to_dict() == {"name": "digits", "profile": "long_tail",
                                                "imbalance_ratio": 10.0}


def test_partial_configs_keep_defaults_and_coerce_ints_to_floats():
  config = resolve_config({"loss": {"name": "focal", "gamma_lc": 3}, "num_epochs": 2})
  assert config.loss.gamma_lc == 3.0 and isinstance(config.loss.gamma_lc, float)
  assert config.loss.gamma_hc == 2.0 and config.num_epochs == 2
  assert config.dataset.name == "digits"


def test_dataset_block_is_replaced_whole():
  config = resolve_config({"dataset": {"name": "digits", "profile": "balanced"}})
  assert config.dataset.to_dict() == {"name": "digits", "profile": "balanced"}


def test_config_dicts_are_accepted():
  config = ml_collections.ConfigDict({"loss": {"cyclical_factor": 2.0}})
  assert resolve_config(config).loss.cyclical_factor == 2.0


@pytest.mark.parametrize("override, message", [
    ({"learning_rate": 0.1}, "unknown key 'learning_rate'"),
    ({"loss": {"gama_hc": 1.0}}, "unknown key 'loss.gama_hc' \\(did you mean 'loss.gamma_hc'"),
    ({"loss": {"cyclical_factor": 0.5}}, "loss.cyclical_factor must be >= 1.0, got 0.5"),
    ({"loss": {"gamma_hc": -1.0}}, "loss.gamma_hc must be >= 0.0"),
    ({"loss": {"gamma_lc": -0.5}}, "loss.gamma_lc must be >= 0.0"),
    ({"loss": {"gamma_neg": -2.0}}, "loss.gamma_neg must be >= 0.0"),
    ({"loss": {"name": "cfl"}}, "loss.name must be one of cross_entropy, focal"),
    ({"loss": {"label_smoothing": 1.0}}, "loss.label_smoothing must be in \\[0, 1\\)"),
    ({"loss": {"xi_granularity": "batch"}}, "loss.xi_granularity must be one of step, epoch"),
    ({"loss": {"xi_schedule": "smith"}}, "loss.xi_schedule must be one of paper, reference"),
    ({"loss": {"xi_first_epoch": 1}}, "xi_first_epoch applies to loss.xi_schedule='reference'"),
    ({"loss": {"gamma_hc": "2"}}, "loss.gamma_hc must be like 2.0, got '2'"),
    ({"num_epochs": 0}, "num_epochs must be >= 1"),
    ({"num_epochs": 2.5}, "num_epochs must be like 60, got 2.5"),
    ({"num_train_steps": 0}, "num_train_steps must be -1"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"name": "a/b"}, "name must be a non-empty file name"),
    ({"model": {"dtype": "float16"}}, "model.dtype must be one of float32, bfloat16"),
    ({"optimizer": {"name": "lamb"}}, "optimizer.name must be one of sgd, adamw"),
    ({"optimizer": {"learning_rate": 0.0}}, "optimizer.learning_rate must be > 0"),
    ({"optimizer": {"momentum": 1.0}}, "optimizer.momentum must be in \\[0, 1\\)"),
    ({"optimizer": {"weight_decay": -1e-4}}, "optimizer.weight_decay must be >= 0.0"),
    ({"optimizer": {"lr_schedule": "linear"}}, "optimizer.lr_schedule must be one of cosine"),
    ({"optimizer": {"lr_decay_epochs": (20, 10)}}, "lr_decay_epochs must be increasing"),
    # A decay the schedule would apply at the warm-up's end instead of at its epoch, or never.
    ({"optimizer": {"lr_schedule": "step", "lr_decay_epochs": (1, 30), "warmup_epochs": 2.0}},
     r"lr_decay_epochs \(1, 30\) must not fall inside the 2 warm-up epochs"),
    ({"optimizer": {"lr_decay_epochs": (30,)}},
     "lr_decay_epochs apply to optimizer.lr_schedule='step' only"),
    ({"optimizer": {"lr_decay_factor": 2.0}}, "lr_decay_factor must be in \\(0, 1\\]"),
    ({"cyclical": {"temperature": {"min": 0.0}}}, "cyclical.temperature.min must be > 0"),
    ({"cyclical": {"grad_clip": {"max": -1.0}}}, "cyclical.grad_clip.max must be > 0"),
    ({"cyclical": {"weight_decay": {"min": -1.0}}}, "cyclical.weight_decay.min must be >= 0.0"),
    ({"cyclical": {"weight_decay": 1e-4}}, "cyclical.weight_decay must be a mapping"),
    ({"cyclical": {"dropout": {"enabled": True}}}, "unknown key 'cyclical.dropout'"),
    ({"many_shot_min": 20, "few_shot_max": 20}, "many_shot_min \\(20\\) must exceed few_shot_max"),
    ({"log_every_steps": 0}, "log_every_steps must be >= 1"),
    ({"max_to_keep": 0}, "max_to_keep must be >= 1"),
    ({"eval_every_epochs": -1}, "eval_every_epochs must be >= 0"),
    ({"dataset": {"profile": "balanced"}}, "dataset must be like"),
])
def test_each_bad_value_is_refused_with_a_clear_message(override, message):
  with pytest.raises(ConfigError, match=message):
    resolve_config(override)


def test_all_problems_are_reported_together():
  with pytest.raises(ConfigError) as error:
    resolve_config({"loss": {"cyclical_factor": 0.5, "gamma_hc": -1.0}, "batch_size": 0})
  assert str(error.value).count("\n  - ") == 3


@pytest.mark.parametrize("override, error, message", [
    ({"loss": {"cyclical_factor": 0.5}}, ConfigError, "cyclical_factor"),
    ({"dataset": {"name": "mnist"}}, ValueError, "Unknown dataset 'mnist'"),
    ({"dataset": {"name": "digits", "ratio": 10.0}}, ValueError, "Unknown keyword"),
    ({"model": {"name": "vgg"}}, ValueError, "Unknown model 'vgg'"),
    ({"batch_size": 12}, ValueError, "batch_size=12 must be divisible by the 8 devices"),
    ({"eval_batch_size": 100}, ValueError, "eval_batch_size=100 must be divisible"),
    ({"batch_size": 4096}, ValueError, "exceeds the 503 training examples"),
    ({"num_train_steps": 10, "loss": {"xi_granularity": "epoch"}}, ValueError,
     "multiple of steps_per_epoch"),
    ({"num_train_steps": 10, "optimizer": {"warmup_epochs": 5.0}}, ValueError, "warm-up"),
])
def test_train_and_evaluate_refuses_before_any_compute(tmp_path, override, error, message):
  workdir = os.path.join(tmp_path, "run")
  with pytest.raises(error, match=message):
    train_and_evaluate(override, workdir)
  assert not os.path.exists(workdir)  # nothing written, nothing trained
