r"""The embedded default: long-tailed digits (imbalance ratio 10), a small CNN, CFL (paper form).

Offline (scikit-learn's bundled 8x8 digits) and about ten seconds on a 2-core CPU, compilation
included. The main job of the repository:

  python -m experiments.train

is this config with workdir ./runs/digits_lt10_cfl; explicitly, and shortened:

  python -m experiments.train --config=experiments/configs/digits.py \
      --config.num_epochs=2 --workdir=/tmp/digits

The recipe itself lives in one place, :func:`cfl_jax.training.config.default_config` (every key,
its meaning and its digits value); this file is the runner's handle on it, and pins the
initialisation the digits study's recorded runs (``experiments/results/digits``) were made with,
so that their commands reproduce them.
"""

import ml_collections

from cfl_jax.training import default_config


def get_config() -> ml_collections.ConfigDict:
  """The digits long-tail CFL experiment (the training schema's defaults, init_key 'rbg_v0')."""
  config = default_config()
  config.init_key = "rbg_v0"  # as its recorded runs (experiments/results/digits) were made
  return config
