r"""MNIST-1D: the published baselines, then the losses on the paper's imbalance profiles.

  python -m experiments.train --config=experiments/configs/mnist1d.py:ce --workdir=/tmp/mnist1d_ce

``:ce`` alone is the published CNN baseline: the standard 4,000 / 1,000 split, the ``mnist1d_cnn``
model, cross-entropy and the published training recipe (``cfl_jax/models/mnist1d.py``): Adam at a
constant learning rate of 1e-2 without weight decay (``adamw`` with ``weight_decay=0``; betas
0.9 / 0.999 and epsilon 1e-8 as PyTorch's), batch 100, 6,000 steps (150 epochs), the final
model's test accuracy. Published: CNN 94 %, MLP 68 %, logistic regression 32 %. What differs
from the published code: batches come from a fresh permutation every epoch
(``cfl_jax.data.base``), where the published loop walks the stored order without reshuffling;
the random streams (initialisation, order) are JAX's, so single runs differ by seed noise; the
test set is also evaluated every 25 epochs (1,000 steps, as the published loop prints).

Argument (comma-separated tokens, any order):

* the loss: ``cfl`` (default) | ``ce`` | ``focal`` | ``cfl_reference`` | ``asl_focal``, with the
  author's untuned defaults (``common.PROTOCOLS['guidance']``: gamma_hc=2, focal gamma 2, f=4, no
  smoothing; ``cfl_reference`` and ``asl_focal`` also gamma_neg=2 and their hard-wired smoothing
  0.1);
* ``model=cnn`` (default) | ``mlp`` | ``logistic``: the published baselines;
* ``profile=standard`` (default) | ``balanced`` | ``linear_580_220`` | ``linear_490_310`` |
  ``long_tail`` with ``ratio=RHO`` (10, 50 or 100): the training set (``cfl_jax.data.mnist1d``;
  the test set is always the standard 1,000 signals);
* ``ls=EPS``: label smoothing of ``ce``, ``focal`` or ``cfl`` (e.g. ``ce,ls=0.1``);
* ``gamma_hc=G``: the high-confidence exponent of ``cfl`` or ``cfl_reference`` (e.g. 3);
* ``smoke``: a few steps at batch 16 (the model is kept: all three are tiny).

Every profile trains for the same 6,000 steps (the published recipe counts steps), so the smaller
long-tail sets see more epochs. For example, the paper's 4K profile with CFL at gamma_hc=3:

  python -m experiments.train \
      --config=experiments/configs/mnist1d.py:cfl,profile=linear_580_220,gamma_hc=3 \
      --workdir=runs/mnist1d_linear_580_220_cnn_cfl_ghc3
"""

import ml_collections

from experiments.configs import common

MODELS = ("cnn", "mlp", "logistic")
PROFILES = ("standard", "balanced", "linear_580_220", "linear_490_310", "long_tail")
SMOOTHED_LOSSES = ("ce", "focal", "cfl")  # cfl_reference smooths by 0.1 by construction
CYCLICAL_LOSSES = ("cfl", "cfl_reference")


def _run_name(args) -> str:
  profile = f"lt{args.ratio:g}" if args.profile == "long_tail" else args.profile
  return f"mnist1d_{profile}_{args.model}"


def _check(args) -> None:
  if (args.profile == "long_tail") != (args.ratio is not None):
    raise ValueError(f"ratio=RHO goes with profile=long_tail and only with it; got "
                     f"profile={args.profile}, ratio={args.ratio}.")
  if args.ls is not None and args.loss not in SMOOTHED_LOSSES:
    raise ValueError(f"ls= applies to {', '.join(SMOOTHED_LOSSES)}; {args.loss} smooths by "
                     f"{common.REFERENCE_LABEL_SMOOTHING} by construction.")
  if args.gamma_hc is not None and args.loss not in CYCLICAL_LOSSES:
    raise ValueError(f"gamma_hc= applies to {', '.join(CYCLICAL_LOSSES)}, not {args.loss}.")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The MNIST-1D run with the loss, model, profile and loss options named in ``arg``."""
  args = common.parse_arg(arg, values={
      "model": (common.one_of(*MODELS), "cnn"),
      "profile": (common.one_of(*PROFILES), "standard"),
      "ratio": (float, None),
      "ls": (float, None),
      "gamma_hc": (float, None),
  }, data_dir=False)
  _check(args)
  # Ratio 1 (no imbalance) outside long_tail: the key exists, so a command line can set it.
  dataset = {"name": "mnist1d", "profile": args.profile,
             "imbalance_ratio": 1.0 if args.ratio is None else args.ratio}
  config = common.base_config(args, name=_run_name(args), dataset=dataset,
                              model=f"mnist1d_{args.model}", dtype="float32",
                              protocol="guidance")
  if args.ls is not None:
    config.loss.label_smoothing = args.ls
    config.name += f"_ls{args.ls:g}"
  if args.gamma_hc is not None:
    config.loss.gamma_hc = args.gamma_hc
    config.name += f"_ghc{args.gamma_hc:g}"

  config.update(num_train_steps=6000, batch_size=100, eval_batch_size=1000)
  config.init_key = "rbg_v0"  # as its recorded runs (experiments/results/mnist1d) were made
  config.optimizer.update(name="adamw", learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-8,
                          weight_decay=0.0, lr_schedule="constant", warmup_epochs=0.0)
  config.update(log_every_steps=100, eval_every_epochs=25, checkpoint_every_steps=0,
                max_to_keep=1)
  config = common.finish(config, args)
  config.model.name = f"mnist1d_{args.model}"  # not smoke mode's image CNN
  return config
