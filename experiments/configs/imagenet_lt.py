r"""ImageNet-LT (OLTR benchmark, Liu et al. 2019): the paper's long-tailed ImageNet study.

  python -m experiments.train --config=experiments/configs/imagenet_lt.py:cfl_reference \
      --workdir=runs/imagenet_lt_cfl_reference

Argument (comma-separated): the loss, ``cfl`` (default) | ``ce`` | ``focal`` | ``cfl_reference`` |
``asl_focal``; the loss settings, ``config_file`` (default) | ``as_run_without_flags``;
``data_dir=PATH`` (TFDS data directory holding the prepared ``imagenet_lt``); ``smoke``.

Targets the paper's ImageNet-LT table (overall, many-, medium- and few-shot top-1 of ResNet-10).
115,846 training images over 1,000 classes (1,280 down to 5 per class), evaluated on the balanced
50,000-image test list with overall, many-shot (>= 100 training images), medium-shot (21-99) and
few-shot (<= 20) top-1. OLTR's plain-model recipe (its stage 1, as the authors'
``ImageNet_LT/stage_1_cfl.py``), as in the paper: ResNet-10 from scratch at 224 px
(random-resized crop, flip and colour jitter 0.4 of brightness, contrast and saturation, as OLTR's
training transform; centre crop at eval), float32, batch 128, SGD momentum 0.9 at 0.1, weight
decay 5e-4 on every parameter (as OLTR's PyTorch optimizer), 30 epochs, learning rate x0.1 every
10 epochs; the pooled 512 features feed the classifier directly (``use_fc`` off in the authors'
ImageNet-LT config). Only stage 1 is implemented, not the authors' stage-2 configs (OLTR's
meta-embedding classifier and memory). After every epoch the 20,000-image validation list (20 per
class) and the test list are evaluated; OLTR reports the test metrics of the epoch with the best
validation top-1 (``test_accuracy_at_best_validation``, ``many_shot_accuracy_at_best_validation``,
... in ``summary.json``, beside the final model's and the best test top-1).

Losses: ``config_file`` takes the hyper-parameters of the authors' ``ImageNet_LT/stage_1_cfl.py``:
gamma_hc=2, gamma_lc (gamma_pos)=0, f=4 (``common.PROTOCOLS['imagenet_lt']``; Places-LT's config
differs). ``as_run_without_flags`` takes what the authors' OLTR ``main.py`` trained with when
started without loss flags: it overwrites the config file's loss settings with its command-line
defaults, gamma_hc=2, gamma_pos=0, gamma_neg=4, f=2 (``common.PROTOCOLS['oltr_main_defaults']``,
the same for Places-LT; docs/studies.md says which one the published numbers most likely used):

  python -m experiments.train \
      --config=experiments/configs/imagenet_lt.py:cfl_reference,as_run_without_flags \
      --workdir=runs/imagenet_lt_as_run_without_flags_cfl_reference

``cfl_reference`` reproduces their code exactly: gamma_neg=4, label smoothing 0.1 and the
long-tail path's xi, counted from epoch 1 with E=30 (past 1 in the last epoch: the one schedule
allowed past 1, because that code did it). ``cfl`` is
the paper form with the paper's xi (1 -> 0 -> 1 over the run); ``ce`` and ``focal`` (gamma 2)
are unsmoothed, as OLTR's baselines.
"""

import types

import ml_collections

from experiments.configs import common

# OLTR's training transform: ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0).
OLTR_COLOR_JITTER = 0.4
# The loss-settings tokens of both OLTR studies: the released config file's values (the protocol
# named after the dataset) or OLTR main.py's command-line defaults, which overwrite them.
LOSS_SETTINGS = ("config_file", "as_run_without_flags")


def parse_arg(arg: str | None, **values) -> types.SimpleNamespace:
  """``common.parse_arg`` with the loss-settings group (:data:`LOSS_SETTINGS`)."""
  return common.parse_arg(arg, choices={"loss_settings": LOSS_SETTINGS}, values=values)


def oltr_recipe(args: types.SimpleNamespace, *, name: str, dataset: str,
                model: str) -> ml_collections.ConfigDict:
  """The OLTR recipe of the module docstring for ``dataset``, before smoke shrinking (places_lt
  adjusts it)."""
  protocol = dataset
  if args.loss_settings == "as_run_without_flags":
    name, protocol = f"{name}_as_run_without_flags", "oltr_main_defaults"
  data = {"name": dataset, "image_size": 224, "eval_split": "test",
          "validation_split": "validation", "shuffle_buffer": 16_384,
          "color_jitter": OLTR_COLOR_JITTER}
  config = common.base_config(args, name=name, dataset=data, model=model, dtype="float32",
                              protocol=protocol)
  config.update(num_epochs=30, batch_size=128, eval_batch_size=500)
  config.optimizer.update(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=False,
                          weight_decay=5e-4, weight_decay_on="all", lr_schedule="step",
                          lr_decay_epochs=(10, 20),
                          lr_decay_factor=0.1, warmup_epochs=0.0)
  config.update(log_every_steps=100, eval_every_epochs=1, checkpoint_every_steps=2000,
                many_shot_min=100, few_shot_max=20)
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """ImageNet-LT with the loss named in ``arg`` (see the module docstring)."""
  args = parse_arg(arg)
  return common.finish(oltr_recipe(args, name="imagenet_lt", dataset="imagenet_lt",
                                   model="resnet10"), args)
