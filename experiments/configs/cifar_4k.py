r"""The paper's 4,000-image CIFAR-10 / CIFAR-100 subsets, balanced and imbalanced.

  python -m experiments.train \
      --config=experiments/configs/cifar_4k.py:c10,sampler6_2,cfl_reference \
      --workdir=runs/cifar_4k_c10_sampler6_2_cfl_reference

Argument (comma-separated tokens, any order):

* dataset: ``c10`` (default) | ``c100``;
* subset: ``balanced`` (default: the first 4,000 training images) | ``sampler6_2`` |
  ``sampler5_3`` | ``sampler5_3_intended`` (CIFAR-10 only). The samplers are the authors' index
  lists (``cfl_jax.data.subset_ids``): ``c10_sampler6_2`` keeps 580, 540, ..., 220 images per
  class; ``c10_sampler5_3`` is the list read as the reference loader read it (near balanced), and
  ``sampler5_3_intended`` the same list minus 1 (490, 470, ..., 310 per class, as written); the
  CIFAR-100 lists run about 60 -> 20 and 50 -> 30 per class;
* the loss: ``cfl`` (default) | ``ce`` | ``focal`` | ``cfl_reference`` | ``asl_focal``;
* ``data_dir=PATH`` (TFDS data directory holding ``cifar10`` / ``cifar100``); ``smoke``.

The data must be the complete TFDS CIFAR (the subsets select by the ``id`` feature). Targets the
paper's 4K tables (balanced and imbalanced 4,000-image CIFAR-10/100, TResNet-M rows). The training
recipe is ``cifar10.py``'s, unchanged: this port's assumption, since the 4K study's recipe was
never published (not in the paper, not with the authors' code; docs/method.md §5 has none).
TResNet-M at 224 px, three views of each image (one crop and flip; a clean view and two with
RandAugment m9 and random erasing 0.6), batch 384 images (10 steps per epoch, 1,152 rows per
step, the loss averaged over all), SGD Nesterov 0.15, 3 warm-up epochs from 0.01, cosine to
1e-6, 1 cool-down epoch, weight decay 5e-4, 201 epochs; CFL gamma_hc=3, gamma_lc=2, f=4, label
smoothing 0.1. Evaluation is on the full balanced test set.
"""

import ml_collections

from experiments.configs import cifar10
from experiments.configs import common

DATASETS = {"c10": "cifar10", "c100": "cifar100"}
SUBSETS = ("balanced", "sampler6_2", "sampler5_3", "sampler5_3_intended")


def subset_name(dataset: str, subset: str) -> str:
  """The ``cfl_jax.data`` subset name of tokens ``dataset`` and ``subset``."""
  if subset == "balanced":
    return "first_4000"
  if dataset == "c100" and subset == "sampler5_3_intended":
    raise ValueError("sampler5_3_intended exists for c10 only (the CIFAR-100 lists are 0-based "
                     "already); use c100,sampler5_3.")
  return f"{dataset}_{subset}"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """A 4K subset study with the dataset, subset and loss named in ``arg``."""
  args = common.parse_arg(arg, choices={"dataset": tuple(DATASETS), "subset": SUBSETS})
  subset = subset_name(args.dataset, args.subset)
  return cifar10.cifar_recipe(args, name=f"cifar_4k_{args.dataset}_{args.subset}",
                              dataset={"name": DATASETS[args.dataset], "subset": subset})
