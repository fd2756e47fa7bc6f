r"""Places-LT (OLTR benchmark, Liu et al. 2019): the paper's long-tailed scene study.

  python -m experiments.train --config=experiments/configs/places_lt.py:cfl_reference \
      --workdir=runs/places_lt_cfl_reference

Argument (comma-separated): the loss, ``cfl`` (default) | ``ce`` | ``focal`` | ``cfl_reference``;
``data_dir=PATH`` (TFDS data directory holding the prepared ``places_lt``); ``smoke``.

62,500 training images over 365 classes (4,980 down to 5 per class), evaluated on the balanced
36,500-image test list (overall, many-, medium- and few-shot top-1). ``imagenet_lt.py``'s recipe
and losses (read its docstring) on ResNet-152: 30 epochs, batch 128, SGD momentum 0.9, weight
decay 5e-4, learning rate x0.1 every 10 epochs.

Not the paper's setup: the paper fine-tunes ResNet-152 from ImageNet weights with learning rate
0.001 on the backbone and 0.1 on the classifier. Loading pretrained weights and per-group
learning rates do not exist in the trainer, so this config trains from scratch with 0.1 on every
parameter; expect far lower accuracy than the published numbers.
"""

import ml_collections

from experiments.configs import common
from experiments.configs import imagenet_lt


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Places-LT with the loss named in ``arg`` (see the module docstring)."""
  return imagenet_lt.oltr_recipe(common.parse_arg(arg), name="places_lt", dataset="places_lt",
                                 model="resnet152")
