r"""CIFAR-100, full training set (50,000 images): the paper's balanced CIFAR study.

  python -m experiments.train --config=experiments/configs/cifar100.py:cfl_reference \
      --workdir=runs/cifar100_cfl_reference

Argument (comma-separated): the loss, ``cfl`` (default) | ``ce`` | ``focal`` | ``cfl_reference`` |
``asl_focal``;
``data_dir=PATH`` (TFDS data directory holding ``cifar100``); ``smoke``.

Targets the paper's CIFAR-100 table, TResNet-M rows. Same recipe as ``cifar10.py`` (read its
docstring, including where the port differs): TResNet-M at 224 px, three views of each image
(one crop and flip; a clean view and two with RandAugment m9 and random erasing 0.6), batch 384
images (1,152 rows per step, the loss averaged over all), SGD Nesterov 0.15 with 3 warm-up
epochs from 0.01, cosine to 1e-6 and 1 cool-down epoch (201 in all), weight decay 5e-4 on weights
only; CFL gamma_hc=3, gamma_lc=2, f=4, label smoothing 0.1.
"""

import ml_collections

from experiments.configs import cifar10
from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """CIFAR-100 with the loss named in ``arg`` (see the module docstring)."""
  args = common.parse_arg(arg)
  return cifar10.cifar_recipe(args, name="cifar100", dataset={"name": "cifar100"})
