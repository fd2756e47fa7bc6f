"""Tests of the paper-study configs in experiments/configs/.

Every config parses with every loss and passes the trainer's validation; the durations and
schedules it sets give the protocol's values; its ``smoke`` mode trains and evaluates for real,
on the CPU, on tiny datasets written in the real TFDS formats (``tfds_fakes``), one shared
prepared data directory for the whole module.
"""

import importlib
import logging
import os
import re
import sys

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax
import pytest

from cfl_jax.data import SUBSET_NAMES
from cfl_jax.data import get_dataset
from cfl_jax.models import get_model
from cfl_jax.training import recipe
from cfl_jax.training import resolve_config
from cfl_jax.training import train_and_evaluate
from experiments.configs import common
import tfds_fakes

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "configs")
STUDIES = ("cifar10", "cifar100", "cifar_4k", "cifar_lt", "imagenet", "imagenet_lt", "places_lt")


# Arguments a study requires (checked by test_places_lt_fine_tunes_imagenet_weights).
_REQUIRED = {"places_lt": "init_from=/weights/resnet152.safetensors"}


def _get_config(study, arg=None):
  if study in _REQUIRED and "smoke" not in (arg or "") and "init_from" not in (arg or ""):
    arg = ",".join(filter(None, (arg, _REQUIRED[study])))
  return importlib.import_module(f"experiments.configs.{study}").get_config(arg)


def test_every_study_file_is_tested():
  files = {name[:-3] for name in os.listdir(CONFIG_DIR) if name.endswith(".py")}
  # mnist1d (generated data, step-counted recipe) has its own tests below.
  assert files - {"__init__", "common", "digits", "mnist1d"} == set(STUDIES)


@pytest.mark.parametrize("loss", tuple(common.LOSSES))
@pytest.mark.parametrize("study", STUDIES)
def test_each_loss_resolves(study, loss):
  config = resolve_config(_get_config(study, loss))
  assert config.loss.name == common.LOSSES[loss]
  assert config.name.endswith(f"_{loss}") and config.num_train_steps == -1
  assert config.dataset.data_dir is None
  assert resolve_config(_get_config(study, f"{loss},smoke")).name.endswith(f"_{loss}_smoke")


@pytest.mark.parametrize("study", STUDIES)
def test_smoke_keeps_the_input_pipeline_and_training_path(study):
  full, smoke = (resolve_config(_get_config(study, arg)) for arg in ("cfl", "cfl,smoke"))
  drop = lambda dataset: {k: v for k, v in dataset.items() if k != "shuffle_buffer"}
  assert drop(smoke.dataset.to_dict()) == drop(full.dataset.to_dict())
  for key in ("ema_decay", "mixup_alpha"):
    assert smoke[key] == full[key]
  for key in ("name", "learning_rate", "head_learning_rate", "weight_decay", "weight_decay_on",
              "lr_schedule", "min_learning_rate", "lr_decay_epochs"):
    assert smoke.optimizer[key] == full.optimizer[key], key
  assert smoke.loss == full.loss and smoke.batch_size < full.batch_size


@pytest.mark.parametrize("study, protocol", [
    ("cifar10", "timm"), ("cifar_4k", "timm"), ("imagenet", "timm"), ("cifar_lt", "ldam"),
    ("imagenet_lt", "imagenet_lt"), ("places_lt", "places_lt")])
def test_loss_hyperparameters_follow_the_protocol(study, protocol):
  hyper = common.PROTOCOLS[protocol]
  cfl = _get_config(study, "cfl").loss
  assert (cfl.gamma_hc, cfl.gamma_lc, cfl.cyclical_factor, cfl.label_smoothing) == (
      hyper["gamma_hc"], hyper["gamma_lc"], hyper["cyclical_factor"], hyper["label_smoothing"])
  assert cfl.xi_schedule == "paper"
  reference = _get_config(study, "cfl_reference").loss
  assert (reference.gamma_neg, reference.label_smoothing, reference.xi_schedule,
          reference.xi_first_epoch) == (hyper["gamma_neg"], 0.1, "reference",
                                        hyper["xi_first_epoch"])
  assert _get_config(study, "focal").loss.gamma_lc == 2.0
  assert _get_config(study, "ce").loss.label_smoothing == hyper["label_smoothing"]
  asl = _get_config(study, "asl_focal").loss
  assert (asl.name, asl.gamma_lc, asl.gamma_neg, asl.label_smoothing) == (
      "asymmetric_focal", hyper["gamma_lc"], hyper["gamma_neg"], 0.1)


def _np_asl_single_label(logits, labels, gamma_pos, gamma_neg, eps=0.1):
  """timm's ASLSingleLabel (the authors' --focal_loss asym), transcribed per example in numpy."""
  logits = np.asarray(logits, np.float64)
  log_preds = logits - logits.max(-1, keepdims=True)
  log_preds -= np.log(np.exp(log_preds).sum(-1, keepdims=True))
  targets = np.eye(logits.shape[-1])[labels]
  anti_targets = 1 - targets
  xs_pos = np.exp(log_preds) * targets
  xs_neg = (1 - np.exp(log_preds)) * anti_targets
  weight = (1 - xs_pos - xs_neg) ** (gamma_pos * targets + gamma_neg * anti_targets)
  smoothed = targets * (1 - eps) + eps / logits.shape[-1]
  return -(smoothed * log_preds * weight).sum(-1)


@pytest.mark.parametrize("study", ["cifar10", "imagenet", "imagenet_lt"])
def test_asl_focal_is_the_authors_asym_baseline(study):
  """``asl_focal`` is ASLSingleLabel(gamma_pos=--gamma_pos, gamma_neg=--gamma_neg), eps 0.1."""
  config = resolve_config(_get_config(study, "asl_focal"))
  rng = np.random.default_rng(1)
  logits = (rng.normal(size=(16, 7)) * 3).astype(np.float32)
  labels = rng.integers(0, 7, size=16)
  hyper = common.PROTOCOLS["imagenet_lt" if study == "imagenet_lt" else "timm"]
  expected = _np_asl_single_label(logits, labels, hyper["gamma_lc"], hyper["gamma_neg"])
  ours = jax.jit(recipe.get_loss_fn(config.loss))(logits, labels, 0.7)  # xi is not read
  np.testing.assert_allclose(ours, expected, rtol=2e-5)
  focal = recipe.get_loss_fn(resolve_config(_get_config(study, "focal")).loss)
  assert not np.allclose(focal(logits, labels, 0.7), expected, rtol=1e-2)  # not Lin et al.'s


@pytest.mark.parametrize("study", STUDIES)
def test_each_study_evaluates_every_epoch_as_its_protocol(study):
  """timm validates after every epoch, LDAM tests after every epoch, OLTR validates after every
  epoch (the test metrics of its best validation epoch are what it reports)."""
  config = resolve_config(_get_config(study))
  assert config.eval_every_epochs == 1
  oltr = study in ("imagenet_lt", "places_lt")
  assert config.dataset.get("validation_split") == ("validation" if oltr else None)


def test_cifar_lt_is_the_ldam_protocol():
  config = resolve_config(_get_config("cifar_lt", "c100,ratio=50,ce"))
  assert config.dataset.to_dict() == {"name": "cifar100", "imbalance_ratio": 50.0,
                                      "data_dir": None}
  assert (config.model.name, config.batch_size, config.num_epochs) == ("resnet32", 128, 200)
  assert (config.optimizer.weight_decay, config.optimizer.weight_decay_on,
          config.optimizer.nesterov) == (2e-4, "all", False)
  steps_per_epoch = 10847 // 128  # CIFAR-100-LT at rho=100 has 10,847 images
  lr = recipe.learning_rate_schedule(config.optimizer, total_steps=200 * steps_per_epoch,
                                    steps_per_epoch=steps_per_epoch)
  values = [float(lr(epoch * steps_per_epoch)) for epoch in (0, 5, 159, 160, 180, 199)]
  np.testing.assert_allclose(values, [0.02, 0.1, 0.1, 0.01, 0.001, 0.001], rtol=1e-5)


def _lr_at_epochs(config, num_examples, epochs):
  steps_per_epoch = num_examples // config.batch_size
  lr = recipe.learning_rate_schedule(config.optimizer,
                                     total_steps=config.num_epochs * steps_per_epoch,
                                     steps_per_epoch=steps_per_epoch)
  return [float(lr(round(epoch * steps_per_epoch))) for epoch in epochs]


@pytest.mark.parametrize("study, arg", [("cifar10", None), ("cifar100", None),
                                        ("cifar_4k", "c100,sampler6_2")])
def test_cifar_studies_are_the_timm_tresnet_recipe(study, arg):
  """docs/method.md §5: TResNet-M at 224, batch 384, SGD Nesterov 0.9, lr 0.15 cosine, 3 warm-up
  epochs from 0.01, 200 + 1 cool-down epochs, wd 5e-4 not on biases/norms, RandAugment m9,
  erasing 0.6, three views per image (--aug-splits 3); the schedules count images, so 130
  steps per epoch."""
  config = resolve_config(_get_config(study, arg))
  assert (config.model.name, config.model.init_from, config.batch_size,
          config.num_epochs) == ("tresnet_m", "", 384, 201)
  assert {key: config.dataset[key] for key in ("image_size", "rand_augment", "random_erasing",
                                               "aug_splits")} == {
      "image_size": 224, "rand_augment": 9, "random_erasing": 0.6, "aug_splits": 3}
  opt = config.optimizer
  assert (opt.name, opt.momentum, opt.nesterov, opt.weight_decay, opt.weight_decay_on,
          opt.head_learning_rate) == ("sgd", 0.9, True, 5e-4, "kernels", 0.0)
  assert (config.ema_decay, config.mixup_alpha) == (0.0, 0.0)
  # 50,000 / 384 = 130 steps per epoch: warm-up over epochs 0-3, cosine over 3-200, floor after.
  values = _lr_at_epochs(config, 50_000, (0, 1.5, 3, 3 + 197 / 2, 200, 200.5))
  np.testing.assert_allclose(values, [0.01, 0.08, 0.15, (0.15 + 1e-6) / 2, 1e-6, 1e-6],
                             rtol=1e-3)


def test_imagenet_is_the_timm_recipe_with_ema_and_mixup():
  config = resolve_config(_get_config("imagenet", "cfl"))
  assert (config.model.name, config.batch_size, config.num_epochs) == ("tresnet_m", 1536, 201)
  assert (config.dataset.rand_augment, config.dataset.random_erasing) == (9, 0.4)
  assert (config.optimizer.learning_rate, config.optimizer.weight_decay,
          config.optimizer.nesterov) == (0.6, 2e-5, True)
  assert (config.ema_decay, config.mixup_alpha) == (0.9998, 0.2)
  # The authors' command: --warmup-lr 0.02 over 3 epochs; --min-lr left at their default 1e-6.
  values = _lr_at_epochs(config, 1_281_167, (0, 1.5, 3, 200, 200.5))
  np.testing.assert_allclose(values, [0.02, 0.31, 0.6, 1e-6, 1e-6], rtol=1e-3)


def test_places_lt_fine_tunes_imagenet_weights():
  with pytest.raises(ValueError, match=r"init_from=PATH.*resnet152-394f9c45\.pth"):
    importlib.import_module("experiments.configs.places_lt").get_config("cfl")
  config = resolve_config(_get_config("places_lt", "ce,init_from=/w/r152.safetensors"))
  assert (config.model.name, config.model.init_from) == ("resnet152", "/w/r152.safetensors")
  opt = config.optimizer
  assert (opt.learning_rate, opt.head_learning_rate, opt.weight_decay_on) == (0.001, 0.1, "all")
  assert (config.model.feature_dim, config.dataset.color_jitter) == (512, 0.4)
  assert (config.num_epochs, config.batch_size, opt.lr_decay_epochs) == (30, 128, (10, 20))
  steps_per_epoch = 62_500 // 128
  lr = recipe.learning_rate_schedule(opt, total_steps=30 * steps_per_epoch,
                                     steps_per_epoch=steps_per_epoch)
  np.testing.assert_allclose([float(lr(e * steps_per_epoch)) for e in (0, 9, 10, 20, 29)],
                             [1e-3, 1e-3, 1e-4, 1e-5, 1e-5], rtol=1e-5)


def test_places_lt_feature_layer_trains_with_the_backbone():
  """OLTR's use_fc layer (2,048 -> 512 + ReLU) sits before the 512 -> 365 classifier, in the
  backbone's parameter group: one SGD step moves it at the backbone's 0.001, the classifier at
  0.1."""
  config = resolve_config(_get_config("places_lt", "cfl_reference"))
  model = get_model(config.model.name, num_classes=365, feature_dim=config.model.feature_dim)
  images = jnp.zeros((1, 64, 64, 3))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))["params"]
  assert params["features"]["kernel"].shape == (2048, 512)
  assert params["head"]["dense"]["kernel"].shape == (512, 365)
  groups = recipe.parameter_groups(params)
  assert groups["features"] == {"kernel": "backbone", "bias": "backbone"}
  assert groups["head"]["dense"] == {"kernel": "head", "bias": "head"}
  tree = {module: jax.tree.map(lambda leaf: jnp.zeros(leaf.shape), params[module])
          for module in ("stem_conv", "features", "head")}
  tx = recipe.build_optimizer(config.optimizer)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, tree), tx.init(tree), tree)
  steps = {module: np.unique(np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(update)]))
           for module, update in updates.items()}
  np.testing.assert_allclose(steps["features"], [-1e-3], rtol=1e-6)
  np.testing.assert_allclose(steps["stem_conv"], [-1e-3], rtol=1e-6)
  np.testing.assert_allclose(steps["head"], [-0.1], rtol=1e-6)


def test_imagenet_lt_reference_xi_is_the_long_tail_path():
  config = resolve_config(_get_config("imagenet_lt", "cfl_reference"))
  assert (config.model.name, config.num_epochs, config.batch_size) == ("resnet10", 30, 128)
  # The authors' ImageNet-LT stage-1 config: OLTR's colour jitter, no use_fc layer.
  assert (config.model.feature_dim, config.dataset.color_jitter) == (0, 0.4)
  assert (config.optimizer.learning_rate, config.optimizer.weight_decay,
          config.optimizer.weight_decay_on) == (0.1, 5e-4, "all")
  np.testing.assert_allclose(_lr_at_epochs(config, 115_846, (0, 9, 10, 19, 20, 29)),
                             [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5)
  steps_per_epoch = 115846 // 128
  xi = recipe.xi_schedule(config.loss, total_steps=30 * steps_per_epoch,
                             steps_per_epoch=steps_per_epoch)
  # f=4, as the authors' ImageNet_LT/stage_1_cfl.py: 1 - 4e/29 until 4e >= 30, then climbing
  # past 1 in the last epoch.
  values = [float(xi(epoch * steps_per_epoch)) for epoch in (0, 6, 7, 29)]  # epochs 1, 7, 8, 30
  np.testing.assert_allclose(values, [1 - 4 / 29, 1 - 28 / 29, (32 / 29 - 1) / 3,
                                      (120 / 29 - 1) / 3], atol=5e-5)


@pytest.mark.parametrize("study, config_file_values", [
    ("imagenet_lt", (2.0, 0.0, 4.0, 4.0)), ("places_lt", (2.0, 1.0, 4.0, 2.0))])
def test_oltr_studies_offer_main_py_defaults(study, config_file_values):
  """``config_file``: the released stage_1_cfl.py's gamma_hc, gamma_pos, gamma_neg, f;
  ``as_run_without_flags``: OLTR main.py's command-line defaults (2, 0, 4, 2), which overwrite
  them; everything else the same."""
  def settings(arg):
    loss = resolve_config(_get_config(study, arg)).loss
    return loss.gamma_hc, loss.gamma_lc, loss.gamma_neg, loss.cyclical_factor

  assert settings("cfl_reference") == settings("cfl_reference,config_file") == config_file_values
  assert settings("cfl_reference,as_run_without_flags") == (2.0, 0.0, 4.0, 2.0)
  assert settings("asl_focal,as_run_without_flags")[1:3] == (0.0, 4.0)
  default = _get_config(study, "cfl_reference").to_dict()
  as_run = _get_config(study, "cfl_reference,as_run_without_flags").to_dict()
  assert as_run.pop("name") == f"{study}_as_run_without_flags_cfl_reference"
  assert default.pop("name") == f"{study}_cfl_reference"
  assert {key: value for key, value in as_run.items() if key != "loss"} == {
      key: value for key, value in default.items() if key != "loss"}
  assert (as_run["loss"]["xi_first_epoch"], as_run["loss"]["label_smoothing"]) == (1, 0.1)
  assert _get_config(study, "as_run_without_flags,smoke").loss.cyclical_factor == 2.0


def test_cifar_4k_subsets():
  names = {(dataset, subset): _get_config("cifar_4k", f"{dataset},{subset}").dataset.subset
           for dataset in ("c10", "c100") for subset in ("balanced", "sampler6_2", "sampler5_3")}
  names["c10", "intended"] = _get_config("cifar_4k", "sampler5_3_intended").dataset.subset
  assert set(names.values()) == set(SUBSET_NAMES)
  dataset = _get_config("cifar_4k").dataset.to_dict()
  assert {key: dataset[key] for key in ("name", "subset", "data_dir")} == {
      "name": "cifar10", "subset": "first_4000", "data_dir": None}
  with pytest.raises(ValueError, match="c10 only"):
    _get_config("cifar_4k", "c100,sampler5_3_intended")


@pytest.mark.parametrize("study, arg, message", [
    ("cifar10", "c10", r"Unknown token 'c10'.*valid tokens: cfl \| ce \| focal \| cfl_reference "
     r"\| asl_focal, smoke, data_dir=<str>"),
    ("cifar_lt", "c10,rho=10", r"Unknown token 'rho=10'.*c10 \| c100, .*ratio=<float>"),
    ("cifar_4k", "sampler6_2,sampler5_3", "sets 'subset' twice"),
    ("imagenet_lt", "ce,focal", "sets 'loss' twice"),
    ("places_lt", "config_file,as_run_without_flags", "sets 'loss_settings' twice"),
    ("cifar10", "as_run_without_flags", "Unknown token 'as_run_without_flags'"),
    ("cifar_lt", "ratio=high", "Bad value in 'ratio=high'"),
    ("places_lt", "smoke=1", "Unknown token 'smoke=1'"),
])
def test_bad_arguments(study, arg, message):
  with pytest.raises(ValueError, match=message):
    _get_config(study, arg)


def test_command_line_argument_and_override(monkeypatch):
  argv = ["prog", f"--config={os.path.join(CONFIG_DIR, 'cifar_lt.py')}:c10,ratio=10,ce,data_dir=/a",
          "--config.dataset.data_dir=/tfds", "--config.loss.gamma_lc=1.0"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True)
  values(argv)
  assert values.config.name == "cifar_lt_c10_r10_ce"
  assert values.config.dataset.data_dir == "/tfds" and values.config.loss.gamma_lc == 1.0


# Smoke runs on tiny data in the real formats.

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("PIL")
  from cfl_jax.data import oltr  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("tfds")
  # CIFAR-10 covers the balanced 4K subset (the first 4,000 ids).
  tfds_fakes.prepare_cifar(root, "cifar10", train_size=4000, test_size=32)
  tfds_fakes.prepare_cifar(root, "cifar100", train_size=200, test_size=32)
  tfds_fakes.prepare_imagenet2012(root, tmp_path_factory.mktemp("ilsvrc2012"),
                                  synsets=("n01440764", "n01443537"), per_class=8, num_val=4)
  for name, prefix in (("imagenet_lt", "ImageNet_LT"), ("places_lt", "Places_LT")):
    entries = {split: [(f"{split}/{k}.JPEG", "JPEG", "RGB", k % 3) for k in range(size)]
               for split, size in (("train", 32), ("val", 4), ("test", 8))}
    manual_dir = tfds_fakes.write_oltr_benchmark(tmp_path_factory.mktemp(prefix), prefix,
                                                 entries.items())
    oltr.prepare(name, manual_dir=str(manual_dir), data_dir=str(root))
  return str(root)


@pytest.mark.parametrize("study, arg, steps", [
    ("cifar10", "smoke", 2),
    ("cifar_4k", "c10,balanced,asl_focal,smoke", 2),  # the authors' asym baseline
    ("cifar100", "focal,smoke", 2),
    ("cifar_lt", "c10,ratio=10,smoke", 2),
    ("imagenet", "ce,smoke", 2),
    ("imagenet_lt", "cfl_reference,smoke", 4),  # two whole epochs of 32 images at batch 16
    ("places_lt", "smoke", 2),
])
def test_smoke_trains_and_evaluates(module_compilation_cache, data_dir, tmp_path, caplog, study,
                                    arg, steps):
  """The recipe's data pipeline at its input size, augmentation, views, EMA and mixup, tiny
  model; the balanced-CIFAR recipes train on three views of each image."""
  del module_compilation_cache  # used for its effect
  config = _get_config(study, f"{arg},data_dir={data_dir}")
  # The OLTR smokes keep OLTR's colour jitter, Places-LT's its 512-wide feature layer too.
  oltr = study in ("imagenet_lt", "places_lt")
  assert config.dataset.get("color_jitter", 0.0) == (0.4 if oltr else 0.0)
  assert config.model.feature_dim == (512 if study == "places_lt" else 0)
  with caplog.at_level(logging.INFO, logger="absl"):
    summary = train_and_evaluate(config, str(tmp_path))
  views = 3 if study in ("cifar10", "cifar100", "cifar_4k") else 1
  # What the trainer logs of the first step's sharded batch, read from its arrays.
  rows = re.search(r"Each step trains on (\d+) rows .*images \((\d+), ", caplog.text)
  assert rows and int(rows[1]) == int(rows[2]) == views * config.batch_size == views * 16
  assert summary["train_steps"] == steps and not summary["preempted"]
  assert 0.0 <= summary["test_accuracy"] <= 1.0 and np.isfinite(summary["loss"])
  assert ("ema_test_accuracy" in summary) == (config.ema_decay > 0)
  assert summary["best_test_accuracy"] == summary["test_accuracy"]  # one evaluation
  assert ("best_ema_test_accuracy" in summary) == (config.ema_decay > 0)
  if study in ("imagenet_lt", "places_lt"):  # the validation list, 4 images
    assert summary["test_accuracy_at_best_validation"] == summary["test_accuracy"]
    assert summary["best_validation_accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)
  else:
    assert "validation_accuracy" not in summary
  assert os.path.isfile(os.path.join(tmp_path, "summary.json"))


# MNIST-1D: generated on the machine, so its smoke run needs no prepared data.

@pytest.mark.parametrize("loss", tuple(common.LOSSES))
def test_mnist1d_each_loss_resolves(loss):
  config = resolve_config(_get_config("mnist1d", loss))
  assert config.name == f"mnist1d_standard_cnn_{loss}" and config.loss.name == common.LOSSES[loss]
  assert config.dataset.to_dict() == {"name": "mnist1d", "profile": "standard",  # no data_dir
                                      "imbalance_ratio": 1.0}
  smoke = resolve_config(_get_config("mnist1d", f"{loss},model=logistic,smoke"))
  assert smoke.name.endswith(f"_{loss}_smoke") and smoke.model.name == "mnist1d_logistic"


def test_mnist1d_ce_is_the_published_cnn_recipe():
  config = resolve_config(_get_config("mnist1d", "ce"))
  assert (config.model.name, config.dataset.profile, config.batch_size,
          config.num_train_steps) == ("mnist1d_cnn", "standard", 100, 6000)
  assert (config.loss.name, config.loss.label_smoothing) == ("cross_entropy", 0.0)
  lr = recipe.learning_rate_schedule(config.optimizer, total_steps=6000, steps_per_epoch=40)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 3000, 5999)], 1e-2, rtol=1e-6)
  # The optimizer is plain Adam (PyTorch's defaults, no weight decay) at that rate.
  ours = recipe.build_optimizer(config.optimizer)  # its constant learning rate: 1e-2
  adam = optax.adam(1e-2, b1=0.9, b2=0.999, eps=1e-8)
  params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}
  state_ours, state_adam = ours.init(params), adam.init(params)
  for step in range(3):
    grads = jax.tree.map(lambda p, s=step: jnp.full_like(p, 0.5 - s) * p, params)
    update_ours, state_ours = ours.update(grads, state_ours, params)
    update_adam, state_adam = adam.update(grads, state_adam, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), update_ours,
                 update_adam)


def test_mnist1d_profiles_models_and_loss_options():
  config = resolve_config(_get_config("mnist1d", "cfl,profile=long_tail,ratio=50,model=mlp"))
  assert config.name == "mnist1d_lt50_mlp_cfl" and config.model.name == "mnist1d_mlp"
  assert config.dataset.to_dict() == {"name": "mnist1d", "profile": "long_tail",
                                      "imbalance_ratio": 50.0}
  hyper = common.PROTOCOLS["guidance"]
  assert (config.loss.gamma_hc, config.loss.gamma_lc, config.loss.cyclical_factor,
          config.loss.label_smoothing) == (hyper["gamma_hc"], hyper["gamma_lc"],
                                           hyper["cyclical_factor"], 0.0)
  smoothed = resolve_config(_get_config("mnist1d", "cfl,ls=0.1,gamma_hc=3,profile=linear_580_220"))
  assert smoothed.name == "mnist1d_linear_580_220_cnn_cfl_ls0.1_ghc3"
  assert (smoothed.loss.label_smoothing, smoothed.loss.gamma_hc) == (0.1, 3.0)
  reference = resolve_config(_get_config("mnist1d", "cfl_reference"))
  assert (reference.loss.label_smoothing, reference.loss.xi_schedule) == (0.1, "reference")


@pytest.mark.parametrize("arg, message", [
    ("profile=lt10", r"'lt10' is not one of standard, balanced, linear_580_220"),
    ("model=gru", r"'gru' is not one of cnn, mlp, logistic"),
    ("profile=long_tail", "ratio=RHO goes with profile=long_tail"),
    ("profile=balanced,ratio=10", "ratio=RHO goes with profile=long_tail"),
    ("cfl_reference,ls=0.2", "smooths by 0.1 by construction"),
    ("focal,gamma_hc=3", "gamma_hc= applies to cfl, cfl_reference, not focal"),
    ("data_dir=/tfds", r"Unknown token 'data_dir=/tfds'.*model=<cnn\|mlp\|logistic>"),
])
def test_mnist1d_bad_arguments(arg, message):
  with pytest.raises(ValueError, match=message):
    _get_config("mnist1d", arg)


def test_mnist1d_smoke_trains_and_evaluates(module_compilation_cache, tmp_path):
  del module_compilation_cache  # used for its effect
  summary = train_and_evaluate(_get_config("mnist1d", "ce,smoke"), str(tmp_path))
  assert summary["train_steps"] == 2 and summary["train_class_counts"] == np.bincount(
      get_dataset({"name": "mnist1d"}).train_labels).tolist()
  assert 0.0 <= summary["test_accuracy"] <= 1.0 and np.isfinite(summary["loss"])
