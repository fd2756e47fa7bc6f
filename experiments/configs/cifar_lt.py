r"""CIFAR-10-LT / CIFAR-100-LT under the LDAM protocol (Cao et al., 2019), for comparison with
long-tail methods.

  python -m experiments.train --config=experiments/configs/cifar_lt.py:c10,ratio=100,cfl \
      --workdir=runs/cifar_lt_c10_r100_cfl

Argument (comma-separated tokens, any order):

* dataset: ``c10`` (default) | ``c100``;
* ``ratio=RHO``: imbalance ratio n_max / n_min, 100 by default (the papers use 10, 50, 100);
* the loss: ``cfl`` (default) | ``ce`` | ``focal`` | ``cfl_reference`` | ``asl_focal``;
* ``data_dir=PATH`` (TFDS data directory holding ``cifar10`` / ``cifar100``); ``smoke``.

Training set: the first n_i = int(n_max * (1/rho)^(i/(C-1))) images of class i in the original
order (head class first; 12,406 images for CIFAR-10 at rho=100, 10,847 for CIFAR-100); test set:
the balanced 10,000 test images. Targets the paper's CIFAR-LT comparison with long-tail methods
(ResNet-32 rows, rho = 10 / 50 / 100). LDAM's recipe: ResNet-32 (float32), random crop (pad 4) +
flip, batch 128, SGD momentum 0.9 (no Nesterov) at 0.1, weight decay 2e-4 on every parameter (as
LDAM's PyTorch optimizer), 200 epochs with a linear warm-up over the first 5 (from 0.02, LDAM's
first-epoch rate; LDAM steps it per epoch, here per step), learning rate x0.1 at epochs 160 and
180. The test set is evaluated after every epoch, as LDAM does; LDAM reports the best top-1
over epochs (``best_test_accuracy``, ``best_epoch`` in ``summary.json``, beside the final model's).

Losses: the long-tail hyper-parameters of the authors' reference runs, gamma_hc=2, gamma_lc
(gamma_pos)=0, f=2; ``cfl_reference`` adds gamma_neg=4 and smoothing 0.1 with the reference xi
counted from epoch 0 (``common.PROTOCOLS['ldam']``). ``ce`` / ``focal`` are unsmoothed.

Published top-1 error, ResNet-32 (docs/method.md §5): CE on CIFAR-10-LT 29.6 (rho=100), 13.6
(rho=10); LDAM-DRW 22.97 / 11.84.
"""

import ml_collections

from experiments.configs import common

DATASETS = {"c10": "cifar10", "c100": "cifar100"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """A CIFAR-LT study with the dataset, ratio and loss named in ``arg``."""
  args = common.parse_arg(arg, choices={"dataset": tuple(DATASETS)},
                          values={"ratio": (float, 100.0)})
  dataset = {"name": DATASETS[args.dataset], "imbalance_ratio": args.ratio}
  config = common.base_config(args, name=f"cifar_lt_{args.dataset}_r{args.ratio:g}",
                              dataset=dataset, model="resnet32", dtype="float32",
                              protocol="ldam")
  config.update(num_epochs=200, batch_size=128, eval_batch_size=1000)
  config.optimizer.update(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=False,
                          weight_decay=2e-4, weight_decay_on="all", warmup_epochs=5.0,
                          warmup_init_learning_rate=0.02,
                          lr_schedule="step", lr_decay_epochs=(160, 180), lr_decay_factor=0.1)
  config.update(log_every_steps=100, eval_every_epochs=1, checkpoint_every_steps=2000)
  return common.finish(config, args)
