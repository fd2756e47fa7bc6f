r"""The embedded default: long-tailed digits (imbalance ratio 10), a small CNN, CFL (paper form).

Offline (scikit-learn's bundled 8x8 digits) and about a minute on a 2-core CPU, compilation
included. The main job of the repository:

  python -m experiments.train

is this config with workdir ./runs/digits_lt10_cfl; explicitly, and shortened:

  python -m experiments.train --config=experiments/configs/digits.py \
      --config.num_epochs=2 --workdir=/tmp/digits

Other studies import this file's ``get_config`` and override what differs; every key is listed,
with its meaning, in ``cfl_jax/training/config.py``.
"""

import ml_collections

from cfl_jax.training import default_config


def get_config() -> ml_collections.ConfigDict:
  """The digits long-tail CFL experiment."""
  config = default_config()
  config.name = "digits_lt10_cfl"
  config.seed = 0
  config.num_epochs = 60
  config.batch_size = 64
  config.eval_batch_size = 512  # the 500 test images in one padded batch

  config.dataset = ml_collections.ConfigDict(
      {"name": "digits", "profile": "long_tail", "imbalance_ratio": 10.0})
  config.model = ml_collections.ConfigDict({"name": "digits_cnn", "dtype": "float32"})

  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 5e-4
  config.optimizer.lr_schedule = "cosine"

  config.loss.name = "cyclical_focal"
  config.loss.gamma_hc = 2.0
  config.loss.gamma_lc = 2.0
  config.loss.cyclical_factor = 4.0
  config.loss.xi_granularity = "step"

  # Digits classes hold 12 to 124 training images: the OLTR thresholds (100 / 20) give one
  # many-shot, six medium-shot and three few-shot classes.
  config.many_shot_min = 100
  config.few_shot_max = 20
  config.log_every_steps = 20
  config.eval_every_epochs = 10
  config.checkpoint_every_steps = 140
  config.max_to_keep = 2
  return config
